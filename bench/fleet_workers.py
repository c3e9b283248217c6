"""The worker processes of bench/fleet.py: N agents, a replay of their writes, and a real fleet
for memory per node. Each runs as `bench/fleet.py --role ROLE --spec FILE`."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fake_runtimes import serve_runtimes
from harness import (  # bench/ is on sys.path when run as a script
    LoopLag,
    cpu_percent,
    etcd_revision,
    latency_summary,
    processes_sampler,
    rss_mb,
    run_async,
)

LEASE_TTL_S = 5
START_BATCH = 100  # agents started concurrently


# -- the agents worker: one shard of the N agents ---------------------------------------------
def fleet_configs(spec: dict[str, Any]) -> list[Any]:
    """The N agents' configurations (named and classed as the default fleet's groups), each
    scraping its own fake runtime; a shard takes its slice."""
    from infermesh.agent.agent import AgentConfig, FactOverrides
    from infermesh.agent.fleet import load_fleet, sized

    ports: list[int] = spec["ports"]
    configs = []
    index = 0
    for group in sized(load_fleet().spec, spec["total_n"]):
        for i in range(1, group.count + 1):
            port = ports[index % len(ports)]
            url = f"http://127.0.0.1:{port}/{spec['mode']}/{group.profile}/{group.model}/{index}"
            configs.append(
                AgentConfig(
                    node=f"{group.name}-{i}",
                    project=spec["project"],
                    etcd_prefix=spec["prefix"],
                    node_class=group.nodeClass,
                    facts=FactOverrides(domain=group.domain, region=group.region, zone=group.zone),
                    runtime_url=url,
                    gpu_source="simulated",
                    lease_ttl_s=LEASE_TTL_S,
                    http_port=None,
                )
            )
            index += 1
    return configs[spec["offset"] : spec["offset"] + spec["n"]]


async def run_agents(spec: dict[str, Any]) -> dict[str, Any]:
    """The `agents` role: one shard, `n` real agents sharing one `EtcdStore`, `LeaseKeeper` and
    `SpecFeed` as `SimulatedFleet` does, against the fake runtimes. Once they run it says so in
    `ready_file`; SIGUSR1 opens the measured window and SIGUSR2 closes it (the parent signals
    every shard at once, so their windows are the one it measures etcd over)."""
    from infermesh.agent.agent import Agent
    from infermesh.agent.feed import SpecFeed
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

    loop = asyncio.get_running_loop()
    window_open, window_closed = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, window_open.set)
    loop.add_signal_handler(signal.SIGUSR2, window_closed.set)
    n, project = spec["n"], spec["project"]
    configs = fleet_configs(spec)
    store = TimedStore([spec["etcd"]])
    store.put_latencies = []
    await store.connect()
    client = AsyncMeshClient(spec["api_url"], os.environ["FLEET_BENCH_TOKEN"], project=project)
    feed = SpecFeed(store, KeyLayout(spec["prefix"]), project)
    lease = LeaseKeeper(store, LEASE_TTL_S)
    agents: list[Agent] = []
    lag = LoopLag()
    try:
        await feed.start()
        await lease.start()
        gc.collect()
        rss_base = rss_mb()
        t0 = time.perf_counter()
        for first in range(0, n, START_BATCH):
            if time.perf_counter() - t0 > spec["start_limit"]:
                break  # too slow to start them all: measure the ones running, and say so
            batch = [
                Agent(c, store, client, feed=feed, lease=lease)
                for c in configs[first : first + START_BATCH]
            ]
            agents.extend(batch)
            await asyncio.gather(*(a.start() for a in batch))
        start_s = time.perf_counter() - t0
        lag.start()
        Path(spec["ready_file"]).write_text(json.dumps({"started": len(agents)}))

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
                "lease_epoch": lease.epoch,
                "t": time.perf_counter(),
            }

        await window_open.wait()
        c0 = counters()
        store.put_latencies = []
        lag.reset()
        await window_closed.wait()
        c1 = counters()
        put_latencies = store.put_latencies
        loop_lag = lag.summary()
        lease_held = lease.lease_id is not None
        rss_after = rss_mb()
        ready = sum(1 for a in agents if a.report is not None and a.report.is_true("Ready"))
        sizes = [len(a.report.to_json()) for a in agents if a.report is not None]
    finally:
        await lag.stop()
        # All at once: on a swamped loop each stop's delete may wait out its timeout.
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        await lease.stop(revoke=True)
        await feed.stop()
        await client.aclose()
        await store.close()

    window = c1["t"] - c0["t"]
    return {
        "shard": spec["shard"],
        "n": n,
        "started": len(agents),
        "start_s": round(start_s, 2),
        "window_s": round(window, 3),
        "writes": c1["writes"] - c0["writes"],
        "writes_by_reason": {
            k: c1["reasons"][k] - c0["reasons"][k] for k in c1["reasons"] if c1["reasons"][k]
        },
        "write_failures": c1["write_failures"] - c0["write_failures"],
        "scrapes": c1["scrapes"] - c0["scrapes"],
        "scrape_failures": c1["scrape_failures"] - c0["scrape_failures"],
        "lease_grants_in_window": c1["lease_epoch"] - c0["lease_epoch"],
        "lease_held_at_end": lease_held,
        "lease_max_loop_lag_s": round(lease.max_loop_lag_s, 3),
        "ready_at_end": ready,
        "report_bytes": sizes,
        "put_latencies_s": put_latencies,
        "loop_lag_ms": loop_lag,
        "rss_mb_before": rss_base,
        "rss_mb_after": rss_after,
        "log_warnings": dict(WARNINGS),
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
