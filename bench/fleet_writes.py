"""The writes part of bench/fleet.py: N agents in one or more worker processes (shards), and the
etcd writes, CPU and memory they make over one window that every shard measures at once."""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import time
from collections import Counter
from typing import Any

from fleet_report import report_writes
from fleet_services import Services, Worker
from harness import (  # bench/ is on sys.path when run as a script
    cpu_percent,
    etcd_revision,
    latency_summary,
    processes_sampler,
    rss_mb,
    run_async,
)

REPEAT_MAX_N = 500  # --runs repeats N up to this by default; larger N once
AGENTS_PER_SHARD = 500


async def apply_fleet_objects(api_url: str, token: str, project: str) -> None:
    """The default fleet's Domains, NodeClasses and Models, in `project` (once, before the
    shards start: concurrent applies of the same objects would conflict)."""
    from infermesh.agent.fleet import load_fleet
    from infermesh.client import AsyncMeshClient

    objects = [o.to_dict() for o in load_fleet().objects]
    for obj in objects:
        obj["metadata"]["project"] = project
    async with AsyncMeshClient(api_url, token, project=project) as client:
        await client.apply(objects, project=project)


def writes_part(args: argparse.Namespace, svc: Services, run: int) -> list[dict[str, Any]]:
    out = []
    for n in args.sizes:
        if run > 1 and n > args.repeat_up_to:
            continue
        for mode in args.modes:
            res = run_shards(args, svc, n, mode, f"fleet-{mode}-{n}-r{run}")
            res["run"] = run
            out.append(res)
            report_writes(res)
    return out


def run_shards(
    args: argparse.Namespace, svc: Services, n: int, mode: str, project: str
) -> dict[str, Any]:
    """N agents dealt over ceil(N / --agents-per-shard) worker processes, measured together."""
    assert svc.api is not None
    run_async(apply_fleet_objects(svc.api.url, svc.api.token, project))
    count = math.ceil(n / args.agents_per_shard)
    sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
    shards: list[Worker] = []
    try:
        offset = 0
        for i, k in enumerate(sizes):
            spec = {
                "shard": i + 1,
                "n": k,
                "offset": offset,
                "total_n": n,
                "mode": mode,
                "project": project,
                "ports": svc.ports,
                "start_limit": args.start_limit,
            }
            shards.append(Worker("agents", spec, svc))
            offset += k
        deadline = time.monotonic() + args.start_limit + 60
        for shard in shards:
            shard.child.wait_for(shard.ready.exists, max(1.0, deadline - time.monotonic()))
        time.sleep(args.warmup)
        pids = {**svc.pids(), **{f"agents-{i + 1}": s.child.pid for i, s in enumerate(shards)}}
        sample = processes_sampler(pids, own=None)
        # One instant, read synchronously: etcd's revision and every process' CPU.
        rev0, cpu0 = etcd_revision(svc.etcd.endpoint), sample()
        for shard in shards:
            os.kill(shard.child.pid, signal.SIGUSR1)
        time.sleep(args.window)
        for shard in shards:
            os.kill(shard.child.pid, signal.SIGUSR2)
        rev1, cpu1 = etcd_revision(svc.etcd.endpoint), sample()
        pid_rss = {name: rss_mb(pid) for name, pid in svc.pids().items()}
        results = [shard.finish(60) for shard in shards]
    finally:
        for shard in shards:
            shard.child.stop()
    return aggregate(n, mode, project, len(svc.ports), results, rev1 - rev0, cpu0, cpu1, pid_rss)


def aggregate(
    n: int,
    mode: str,
    project: str,
    ports: int,
    shards: list[dict[str, Any]],
    revisions: int,
    cpu0: dict[str, float],
    cpu1: dict[str, float],
    pid_rss: dict[str, float | None],
) -> dict[str, Any]:
    """The shards' figures as one fleet's: sums of counts, merged latencies, the worst lag."""
    window = cpu1["wall"] - cpu0["wall"]
    cpu = cpu_percent(cpu0, cpu1)
    shard_cpu = [cpu.pop(f"agents-{s['shard']}", 0.0) for s in shards]
    cpu = {"agents": round(sum(shard_cpu), 1), **cpu}
    started = sum(s["started"] for s in shards)
    total = {k: sum(s[k] for s in shards) for k in ("writes", "scrapes", "scrape_failures")}
    reasons: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    for s in shards:
        reasons.update(s["writes_by_reason"])
        warnings.update(s["log_warnings"])
    write_failures = sum(s["write_failures"] for s in shards)
    lease_grants = sum(s["lease_grants_in_window"] for s in shards)
    leases_held = all(s["lease_held_at_end"] for s in shards)
    sizes = [b for s in shards for b in s["report_bytes"]]
    # Whether the shards kept up: all started, scraping on time, leases kept, writes landing.
    keeping_up = (
        started == n
        and total["scrapes"] / window >= 0.95 * n
        and leases_held
        and lease_grants == 0
        and write_failures == 0
    )
    rss_growth = sum((s["rss_mb_after"] or 0) - (s["rss_mb_before"] or 0) for s in shards)
    worst_lag = max(shards, key=lambda s: s["loop_lag_ms"].get("p99", 0.0))["loop_lag_ms"]
    return {
        "n": n,
        "started": started,
        "mode": mode,
        "project": project,
        "runtime_ports": ports,
        "shards": len(shards),
        "agents_per_shard": [s["started"] for s in shards],
        "start_s": max(s["start_s"] for s in shards),
        "window_s": round(window, 3),
        "etcd_revisions": revisions,
        "etcd_writes_per_s": round(revisions / window, 1),
        "agent_writes_per_s": round(total["writes"] / window, 1),
        "agent_writes_by_reason_per_s": {
            k: round(v / window, 1) for k, v in sorted(reasons.items()) if v
        },
        "writes_per_agent_per_s": round(total["writes"] / window / max(1, started), 3),
        "write_failures": write_failures,
        "keeping_up": keeping_up,
        "scrapes_per_s": round(total["scrapes"] / window, 1),
        "scrapes_nominal_per_s": float(started),
        "scrape_failures": total["scrape_failures"],
        "ready_at_end": sum(s["ready_at_end"] for s in shards),
        "report_bytes_mean": round(statistics.fmean(sizes)) if sizes else None,
        "lease_grants_in_window": lease_grants,
        "lease_held_at_end": leases_held,
        "lease_max_loop_lag_s": max(s["lease_max_loop_lag_s"] for s in shards),
        "log_warnings": dict(warnings),
        "put_latency_ms": latency_summary([x for s in shards for x in s["put_latencies_s"]]),
        "loop_lag_ms": worst_lag,
        "cpu_percent": cpu,
        "shard_cpu_percent": shard_cpu,
        # CPU ms the agents' processes spend per agent per second (per scrape, at 1 s)
        "cpu_ms_per_agent_s": round(10 * cpu["agents"] / max(1, started), 3),
        "rss_mb": {
            "agents_before": [s["rss_mb_before"] for s in shards],
            "agents_after": [s["rss_mb_after"] for s in shards],
            **pid_rss,
        },
        "rss_per_agent_kib": round(rss_growth * 1024 / max(1, started), 1),
    }
