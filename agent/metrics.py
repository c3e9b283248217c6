"""Prometheus exposition of agents: `infermesh_gpu_*`, `infermesh_node_*`, `infermesh_model_*`
and the agent's own counters, with the seed's label schema (node, gpu_uuid, mig_profile, zone,
model, revision, quant, runtime).

Values are read from each agent's last report when scraped, so nothing is updated per reading.
One collector can cover one agent (its own `/metrics`) or every agent of a fleet (one
aggregated `/metrics`): `agent_registry(lambda: agents)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infermesh.agent.report import CONDITION_TYPES, NodeReport

GPU_LABELS = ["node", "gpu_uuid", "mig_profile", "zone"]
NODE_LABELS = ["node", "zone"]
MODEL_LABELS = ["node", "zone", "model", "revision", "quant", "runtime"]


@dataclass
class AgentStats:
    """Counters of what one agent did, for its /metrics and for benchmarks (etcd writes/s)."""

    writes: int = 0
    write_failures: int = 0
    writes_by_reason: dict[str, int] = field(default_factory=dict)
    scrapes: int = 0
    scrape_failures: int = 0
    quarantines: int = 0  # auto-quarantine requests the API accepted

    def wrote(self, reason: str) -> None:
        self.writes += 1
        self.writes_by_reason[reason] = self.writes_by_reason.get(reason, 0) + 1


class Observed(Protocol):
    """What the collector reads of an agent."""

    @property
    def name(self) -> str: ...

    @property
    def report(self) -> NodeReport | None: ...

    @property
    def stats(self) -> AgentStats: ...


def model_labels(model_id: str) -> tuple[str, str]:
    """(model, revision) of a served model id: `chat-70b@q4_k_m` -> (`chat-70b`, `q4_k_m`)."""
    model, _, revision = model_id.partition("@")
    return model, revision


class AgentCollector(Collector):
    def __init__(self, agents: Callable[[], Iterable[Observed]]) -> None:
        self._agents = agents

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        util = gauge("infermesh_gpu_utilization_ratio", "GPU busy share, 0..1.", GPU_LABELS)
        mem_used = gauge("infermesh_gpu_memory_used_bytes", "VRAM in use.", GPU_LABELS)
        mem_total = gauge("infermesh_gpu_memory_total_bytes", "VRAM.", GPU_LABELS)
        temp = gauge("infermesh_gpu_temperature_celsius", "GPU temperature.", GPU_LABELS)
        power = gauge("infermesh_gpu_power_watts", "GPU power draw.", GPU_LABELS)
        ecc = CounterMetricFamily(
            "infermesh_gpu_ecc_volatile_errors",
            "Volatile ECC errors since the driver loaded, by type (sbe corrected, dbe not).",
            labels=[*GPU_LABELS, "type"],
        )
        ready = gauge("infermesh_node_ready", "1 when the node is Ready.", NODE_LABELS)
        in_flight = gauge(
            "infermesh_node_in_flight_requests", "Requests running or waiting.", NODE_LABELS
        )
        condition = gauge(
            "infermesh_node_condition",
            "1 when the condition is True.",
            [*NODE_LABELS, "condition"],
        )
        running = gauge("infermesh_model_requests_running", "Requests in the batch.", MODEL_LABELS)
        waiting = gauge("infermesh_model_requests_waiting", "Requests queued.", MODEL_LABELS)
        kv = gauge("infermesh_model_kv_cache_usage_ratio", "KV-cache blocks in use.", MODEL_LABELS)
        tokens = gauge(
            "infermesh_model_tokens_per_second",
            "Tokens per second over the last seconds.",
            [*MODEL_LABELS, "direction"],
        )
        writes = CounterMetricFamily(
            "infermesh_agent_status_writes", "Node reports written to etcd.", labels=["node"]
        )
        scrape_failures = CounterMetricFamily(
            "infermesh_agent_runtime_scrape_failures",
            "Failed scrapes of the runtime's /metrics.",
            labels=["node"],
        )

        for agent in self._agents():
            stats = agent.stats
            writes.add_metric([agent.name], stats.writes)
            scrape_failures.add_metric([agent.name], stats.scrape_failures)
            report = agent.report
            if report is None:
                continue
            zone = report.facts.zone or ""
            node = [agent.name, zone]
            for g in report.gpus:
                labels = [agent.name, g.uuid, g.migProfile or "", zone]
                util.add_metric(labels, g.utilPct / 100)
                mem_used.add_metric(labels, g.memUsedMiB * 1024 * 1024)
                mem_total.add_metric(labels, g.memTotalMiB * 1024 * 1024)
                temp.add_metric(labels, g.tempC)
                power.add_metric(labels, g.powerW)
                ecc.add_metric([*labels, "sbe"], g.eccVolatileSbe)
                ecc.add_metric([*labels, "dbe"], g.eccVolatileDbe)
            ready.add_metric(node, 1 if report.is_true("Ready") else 0)
            in_flight.add_metric(node, report.inFlight)
            for type_ in CONDITION_TYPES:
                condition.add_metric([*node, type_], 1 if report.is_true(type_) else 0)
            rt = report.runtime
            if rt is None or not rt.healthy or not rt.models:
                continue
            # One runtime serves one model in practice; a second one shares its numbers.
            model, revision = model_labels(rt.models[0])
            labels = [*node, model, revision, "", rt.kind]
            running.add_metric(labels, rt.running)
            waiting.add_metric(labels, rt.waiting)
            if rt.kvCacheUsage is not None:
                kv.add_metric(labels, rt.kvCacheUsage)
            if rt.promptTokensPerS is not None:
                tokens.add_metric([*labels, "prompt"], rt.promptTokensPerS)
            if rt.generationTokensPerS is not None:
                tokens.add_metric([*labels, "generation"], rt.generationTokensPerS)

        yield from (util, mem_used, mem_total, temp, power, ecc, ready, in_flight, condition)
        yield from (running, waiting, kv, tokens, writes, scrape_failures)


def agent_registry(agents: Callable[[], Iterable[Observed]]) -> CollectorRegistry:
    """A registry of its own (many agents share a process) exposing `agents`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agents))
    return registry
