"""The node agent (meshd): registers its node, reports GPU and runtime telemetry, and guards the
node (cordon, drain, quarantine; auto-quarantine rules).

An `Agent` is one node. It takes a connected `EtcdStore` and an `AsyncMeshClient` (for the
mutations it asks of the API), so a fleet can run hundreds in one event loop sharing both, and
one `SpecFeed` and one `LeaseKeeper` if it likes; each agent keeps its own keep-alive connection
to its runtime. `run_agent` is the single-agent process around it.

Each scrape interval it scrapes the runtime and reads the GPUs; on every scrape and on every
change of its Node object, Policies or NodeClass (watched, so it reacts within a scrape) it
recomputes the conditions, evaluates the quarantine rules and writes its `NodeReport` when the
deadband says so: one put of compact JSON, bound to its lease, no transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from pydantic import TypeAdapter, ValidationError

import infermesh
from infermesh.agent.conditions import (
    Deadband,
    NodeIdentity,
    RuleFiring,
    RuleState,
    RuntimeErrors,
    evaluate_rules,
    node_conditions,
    quarantine_reason,
    quarantine_rules,
    write_due,
)
from infermesh.agent.feed import SpecFeed
from infermesh.agent.gpu import (
    GpuLoad,
    GpuSource,
    GpuSourceKind,
    SimulatedGpus,
    open_nvml,
    profile_for,
)
from infermesh.agent.http import MetricsServer
from infermesh.agent.lease import LeaseKeeper
from infermesh.agent.metrics import AgentStats, agent_registry
from infermesh.agent.report import (
    AgentInfo,
    Facts,
    GpuReading,
    NodeReport,
    RuntimeKind,
)
from infermesh.agent.runtime_adapter import RuntimeScraper, RuntimeState
from infermesh.client import AsyncMeshClient
from infermesh.errors import MeshError
from infermesh.model import EnvironmentKind, Name, Node, NodeClass
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout

log = logging.getLogger(__name__)

QUARANTINE_RETRY_S = 2.0

Hardware = tuple[str | None, int, float | None]  # GPU name, count, VRAM GB per GPU
_NAME: TypeAdapter[str] = TypeAdapter(Name)


@dataclass(frozen=True)
class FactOverrides:
    """Facts given on the command line; None leaves the NodeClass's (or NVML's) value."""

    gpu: str | None = None
    gpu_count: int | None = None
    vram_gb: float | None = None
    mig: bool | None = None
    nvlink: bool | None = None
    environment: EnvironmentKind | None = None
    provider: str | None = None
    region: str | None = None
    zone: str | None = None
    domain: str | None = None
    link_classes: tuple[str, ...] | None = None
    spot: bool | None = None
    residency: str | None = None
    price_per_gpu_hour: float | None = None


# FactOverrides field -> Facts field
_FACT_NAMES = {
    "gpu": "gpu",
    "gpu_count": "gpuCount",
    "vram_gb": "vramGB",
    "mig": "mig",
    "nvlink": "nvlink",
    "environment": "environment",
    "provider": "provider",
    "region": "region",
    "zone": "zone",
    "domain": "domain",
    "link_classes": "linkClasses",
    "spot": "spot",
    "residency": "residency",
    "price_per_gpu_hour": "pricePerGpuHour",
}


@dataclass(frozen=True)
class AgentConfig:
    node: str
    project: str = "default"
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)  # used by run_agent only
    etcd_prefix: str = "/infermesh"
    api_url: str | None = None  # auto-quarantine goes through the API; None: rules only log
    api_token: str | None = None
    node_class: str | None = None  # default: the Node object's spec.nodeClassRef
    facts: FactOverrides = field(default_factory=FactOverrides)
    runtime_url: str | None = None  # None: no runtime to watch (Ready follows quarantine only)
    runtime_kind: RuntimeKind = "vllm"
    gpu_source: GpuSourceKind = "auto"
    lease_ttl_s: int = 5
    scrape_interval_s: float = 1.0
    scrape_timeout_s: float = 2.0
    deadband: Deadband = field(default_factory=Deadband)
    http_host: str = "127.0.0.1"
    http_port: int | None = 0  # 0: any free port; None: no HTTP server of its own

    def __post_init__(self) -> None:
        for what, value in (("node", self.node), ("project", self.project)):
            try:
                _NAME.validate_python(value)
            except ValidationError as exc:
                raise ValueError(f"{what}: {exc.errors()[0]['msg']}") from None
        if self.lease_ttl_s < 1 or self.scrape_interval_s <= 0:
            raise ValueError("lease_ttl_s must be at least 1 and scrape_interval_s positive")


def node_facts(
    node_class: NodeClass | None,
    node: Node | None,
    detected: Hardware | None,
    overrides: FactOverrides,
    class_name: str | None,
) -> Facts:
    """The node's facts: its NodeClass, then the Node object's domain/region/zone, then what
    NVML found (GPU count and VRAM; the name where the class gives none), then the flags."""
    facts = Facts.from_node_class(node_class) if node_class else Facts(nodeClass=class_name)
    update: dict[str, object] = {}
    if node is not None:
        placed = {"domain": node.spec.domain, "region": node.spec.region, "zone": node.spec.zone}
        update |= {k: v for k, v in placed.items() if v is not None}
    if detected is not None:
        gpu, count, vram = detected
        update |= {"gpuCount": count, "vramGB": vram}
        if facts.gpu is None:  # a NodeClass's GPU name is the mesh's vocabulary: keep it
            update["gpu"] = gpu
    for f in fields(overrides):
        value = getattr(overrides, f.name)
        if value is not None:
            update[_FACT_NAMES[f.name]] = list(value) if isinstance(value, tuple) else value
    return Facts.model_validate({**facts.model_dump(), **update}) if update else facts


class Agent:
    """One node's agent. `start()`, then it runs until `stop()`; `report` is its last report.

    `feed` and `lease` may be shared by many agents (a fleet); whoever passes them in starts and
    stops them. Left out, the agent makes its own and owns them.
    """

    def __init__(
        self,
        config: AgentConfig,
        store: EtcdStore,
        client: AsyncMeshClient | None,
        *,
        feed: SpecFeed | None = None,
        lease: LeaseKeeper | None = None,
    ) -> None:
        self.config = config
        self._store, self._client = store, client
        layout = KeyLayout(config.etcd_prefix)
        self.key = layout.status("nodes", config.project, config.node)
        self._own_feed = feed is None
        self._feed = feed or SpecFeed(store, layout, config.project)
        self._own_lease = lease is None
        self._lease = lease or LeaseKeeper(store, config.lease_ttl_s)
        self._scraper = (
            RuntimeScraper(config.runtime_kind, config.runtime_url, timeout=config.scrape_timeout_s)
            if config.runtime_url
            else None
        )
        self._gpus: GpuSource | None = None
        self._detected: Hardware | None = None  # what NVML found
        self._known_facts: tuple[Node | None, NodeClass | None, Facts] | None = None
        self._server = None
        if config.http_port is not None:
            registry = agent_registry(lambda: [self])
            self._server = MetricsServer(
                registry, self._health, host=config.http_host, port=config.http_port
            )
        self.stats = AgentStats()
        self._started_at = datetime.now(UTC)
        self._wake = asyncio.Event()
        self._scrape_due = False
        self._unsubscribe: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        # observations
        self._runtime: RuntimeState | None = None
        self._readings: list[GpuReading] = []
        self._report: NodeReport | None = None
        # writes
        self._written: NodeReport | None = None
        self._written_at = 0.0
        self._written_epoch = 0
        self._write_error = ""
        # auto-quarantine
        self._rules = RuleState()
        self._pending: list[RuleFiring] = []
        self._quarantine_task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._quarantine_error = ""

    @property
    def name(self) -> str:
        return self.config.node

    @property
    def report(self) -> NodeReport | None:
        """The last report built (written or not: the deadband may have held it back)."""
        return self._report

    @property
    def address(self) -> str | None:
        """host:port of this agent's /metrics and /healthz, when it serves them."""
        return self._server.address if self._server is not None else None

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Register the node and start reporting. When etcd answers, the report key exists when
        this returns; otherwise the agent keeps trying in the background."""
        if self._own_feed:
            await self._feed.start()
        nvml = open_nvml(self.config.gpu_source, self.name)
        if nvml is not None:
            self._gpus, self._detected = nvml, nvml.hardware()
        else:  # simulated GPUs take their profile and count from the facts
            facts = self._facts()
            profile = profile_for(facts.gpu, facts.vramGB)
            self._gpus = SimulatedGpus(self.name, profile, facts.gpuCount)
        if self._server is not None:
            await self._server.start()
        if self._own_lease:
            await self._lease.start()
        self._unsubscribe = [
            self._feed.subscribe(self.name, self._wake.set),
            self._lease.subscribe(self._wake.set),
        ]
        await self._observe()
        await self._decide()
        self._task = asyncio.create_task(self._run(), name=f"agent-{self.name}")

    async def stop(self, *, revoke: bool = True) -> None:
        """Stop. `revoke` (a clean stop) removes the node's report at once; without it the
        report expires with the lease TTL, as when the process dies (a shared lease outlives
        one agent, so its report is deleted either way). An agent runs once: to restart a
        node, start a new Agent."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._task, self._quarantine_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._quarantine_task = None
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._server is not None:
            await self._server.stop()
        if self._own_lease:
            await self._lease.stop(revoke=revoke)
        else:
            with contextlib.suppress(MeshError):
                await self._store.delete(self.key)
        if self._own_feed:
            await self._feed.stop()
        if self._gpus is not None:
            self._gpus.close()
            self._gpus = None
        if self._scraper is not None:
            self._scraper.close()

    # the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.scrape_interval_s
        # Agents started together would scrape in lockstep; spread them over the interval.
        next_scrape = loop.time() + random.uniform(0, interval)
        while True:
            # A timer wakes us for the scrape, not asyncio.timeout, which ends a wait by
            # cancelling it: an exception per scrape, a fleet's largest cost after the scrape.
            self._scrape_due = False
            timer = loop.call_at(next_scrape, self._scrape_time)
            await self._wake.wait()
            timer.cancel()
            self._wake.clear()
            try:
                # The timer firing says so, not the clock: libuv's (uvloop's) timers fire on
                # the millisecond, which may be a hair before `next_scrape`.
                if self._scrape_due or loop.time() >= next_scrape:
                    next_scrape = max(next_scrape + interval, loop.time())
                    await self._observe()
                await self._decide()
            except Exception:
                # A bug or an odd reading must not freeze the report while the lease lives on.
                log.exception("node %s: agent step failed; carrying on", self.name)

    def _scrape_time(self) -> None:
        self._scrape_due = True
        self._wake.set()

    async def _observe(self) -> None:
        now = asyncio.get_running_loop().time()
        load = GpuLoad()
        if self._scraper is not None:
            self._runtime = state = await self._scraper.scrape(now)
            self.stats.scrapes, self.stats.scrape_failures = (
                self._scraper.scrapes,
                self._scraper.scrape_failures,
            )
            rt, sample = state.reading, state.sample
            load = GpuLoad(
                serving=rt.healthy and bool(rt.models),
                running=rt.running,
                kv_cache_usage=rt.kvCacheUsage,
                runtime_gpus=sample.gpus if sample is not None else (),
            )
        if self._gpus is not None:
            self._readings = await self._gpus.read(load, now)

    async def _decide(self) -> None:
        mono = asyncio.get_running_loop().time()
        now = datetime.now(UTC)
        node = self._feed.node(self.name)
        spec = node.spec if node is not None else None
        rt = self._runtime.reading if self._runtime is not None else None
        # A runtime that does not answer serves nothing: nothing is in flight on it.
        in_flight = rt.running + rt.waiting if rt is not None and rt.healthy else 0
        problem = None
        if rt is not None and not rt.healthy:
            why = self._scraper.last_error if self._scraper is not None else ""
            problem = f"runtime at {rt.url} is not answering" + (f" ({why})" if why else "")
        previous = self._report.conditions if self._report is not None else ()
        facts = self._facts()
        report = NodeReport(
            agent=AgentInfo(
                address=self.address,
                version=infermesh.__version__,
                startedAt=self._started_at,
                leaseTtlSeconds=self._lease.ttl,
            ),
            facts=facts,
            gpus=self._readings,
            runtime=rt,
            inFlight=in_flight,
            conditions=node_conditions(
                spec,
                runtime_problem=problem,
                in_flight=in_flight,
                now=now,
                previous=previous,
                has_runtime=self._scraper is not None,
            ),
            heartbeat=now,
            observedGeneration=node.metadata.generation if node is not None else None,
        )
        self._report = report
        self._guard(node, facts, mono)
        await self._write(report, mono)

    # auto-quarantine --------------------------------------------------------------------------
    def _guard(self, node: Node | None, facts: Facts, mono: float) -> None:
        """Evaluate the quarantine rules; ask the API to quarantine when one fires."""
        node_class = self._feed.node_class(facts.nodeClass) if facts.nodeClass else None
        identity = NodeIdentity(
            project=self.config.project,
            name=self.name,
            node_class=facts.nodeClass,
            domain=facts.domain,
            labels=node.metadata.labels if node is not None else {},
            node_class_labels=node_class.metadata.labels if node_class is not None else {},
        )
        errors = None
        if self._runtime is not None and self._runtime.sample is not None:
            errors = RuntimeErrors(
                self._runtime.reading.errorRatio, self._runtime.requests_last_minute
            )
        rules = quarantine_rules(self._feed.policies(), identity)
        firings, self._rules = evaluate_rules(rules, self._readings, errors, mono, self._rules)
        if node is not None and node.spec.quarantine is not None:
            self._pending = []  # quarantined already: nothing to ask for
            return
        self._pending.extend(firings)
        busy = self._quarantine_task is not None and not self._quarantine_task.done()
        if self._pending and not busy and mono >= self._retry_at:
            self._quarantine_task = asyncio.create_task(
                self._request_quarantine(list(self._pending)), name=f"quarantine-{self.name}"
            )

    async def _request_quarantine(self, firings: list[RuleFiring]) -> None:
        reason = quarantine_reason(firings)
        if self._client is None:
            log.warning(
                "node %s: %s (no API configured, so it stays in service)", self.name, reason
            )
            self._pending = self._pending[len(firings) :]
            return
        try:
            await self._client.action(
                "nodes", self.name, "quarantine", {"reason": reason}, project=self.config.project
            )
        except MeshError as exc:
            if str(exc) != self._quarantine_error:  # once per kind of failure, not per retry
                log.warning("node %s: quarantine request failed, retrying: %s", self.name, exc)
            self._quarantine_error = str(exc)
            self._retry_at = asyncio.get_running_loop().time() + QUARANTINE_RETRY_S
            return
        self._quarantine_error = ""
        self._pending = self._pending[len(firings) :]
        self.stats.quarantines += 1
        log.warning("node %s quarantined: %s", self.name, reason)

    # status writes ----------------------------------------------------------------------------
    async def _write(self, report: NodeReport, mono: float) -> None:
        lease = self._lease.lease_id
        if lease is None:
            return  # no lease (etcd unreachable): the keeper wakes us when it has one
        if self._written_epoch != self._lease.epoch:
            reason: str | None = "register"
        else:
            reason = write_due(self._written, report, mono - self._written_at, self.config.deadband)
        if reason is None:
            return
        try:
            await self._store.put(self.key, report.to_json(), lease=lease)
        except MeshError as exc:
            self.stats.write_failures += 1
            if str(exc) != self._write_error:  # once per kind of failure, not per tick
                log.warning("node %s: report not written: %s", self.name, exc)
            self._write_error = str(exc)
            return
        if reason == "register":
            log.info("node %s registered at %s", self.name, self.key)
            # Agents started together (a fleet) would rewrite in the same second of every
            # interval, in bursts of thousands of puts; a random phase spreads them (over half
            # the interval, so that the first rewrite still waits half of it).
            mono -= random.uniform(0, self.config.deadband.max_interval_s / 2)
        elif self._write_error:
            log.info("node %s: reports are written again", self.name)
        self._write_error = ""
        self._written, self._written_at, self._written_epoch = report, mono, self._lease.epoch
        self.stats.wrote(reason)

    # facts and health -------------------------------------------------------------------------
    def _facts(self) -> Facts:
        node = self._feed.node(self.name)
        class_name = self.config.node_class or (node.spec.nodeClassRef if node else None)
        node_class = self._feed.node_class(class_name) if class_name else None
        # The feed hands out the same objects until a watch event replaces them: the facts
        # follow from them (and from what is fixed at the start), so build them once per change.
        known = self._known_facts
        if known is None or known[0] is not node or known[1] is not node_class:
            facts = node_facts(node_class, node, self._detected, self.config.facts, class_name)
            known = self._known_facts = (node, node_class, facts)
        return known[2]

    def _health(self) -> dict[str, object]:
        report = self._report
        return {
            "status": "ok",
            "node": self.name,
            "registered": self._written_epoch == self._lease.epoch and self._written is not None,
            "ready": report is not None and report.is_true("Ready"),
            "gpuSource": self._gpus.kind if self._gpus is not None else None,
        }


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run one agent in this process until `stop` is set (or the task is cancelled), with its
    own etcd connection and API client; a clean stop removes the node at once."""
    async with EtcdStore(list(config.etcd_endpoints)) as store:
        client = (
            AsyncMeshClient(config.api_url, config.api_token, project=config.project)
            if config.api_url
            else None
        )
        agent = Agent(config, store, client)
        try:
            await agent.start()
            await (stop or asyncio.Event()).wait()
        finally:
            await agent.stop()
            if client is not None:
                await client.aclose()
