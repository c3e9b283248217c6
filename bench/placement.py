#!/usr/bin/env python
"""Training placement benchmark: the scheduler's planning pass on simulated fleets, in memory.

    .venv/bin/python bench/placement.py [--nodes 2000,10000] [--runs 1] [--calls 1000]
                                        [--queue 1000] [--trace-load 3] [--wait-idle S]
                                        [--out bench/results/placement.json]

One run of the defaults takes about 15 s; `--runs 3` (medians) under a minute. No Dask, no etcd:
`scheduler.plan` on `Snapshot`s built here. For each fleet size, a fleet of 8-GPU nodes (three
regions of three zones, domains cloud-us/cloud-eu/edge-eu/cloud-ap, node classes h100 (a third
of them in NVLink islands of four nodes), a100 and l4, 2 % cordoned, 1 % without a Dask worker;
capacity pools with class, domain, max_gpus and spent-budget limits) is filled to about 92 % of
its usable GPUs by running gangs (fine-tunes of 1-8 GPUs up to pre-training gangs of 256 GPUs
with tp 8 x pp 4; a third elastic, priorities 0-2, random checkpoint times). Then:

- **one job**: `--calls` snapshots, each the fleet with one newly queued job (mixed shapes,
  priorities 0-3, so that a quarter may preempt; some with constraints, a few over budget or
  impossible), each decided by one `plan()` call on a FreeMap kept between passes (as the
  service should keep one): the latency of one decision including the map's sync to the
  snapshot, fair-share order, quota checks, the preemption search and the elastic-growth scan.
  Also `plan()` without a kept map (the whole fleet indexed afresh), a few calls, to compare.
- **queue pass**: the same fleet with `--queue` queued jobs, decided in one pass
  (`Planner.step()` timed per job): decisions/s of the whole pass (sync, growth and the map's
  rollback included) and the latency of each decision in it.
- **trace**: bin-pack against spread on an empty fleet of the same shape: jobs of mixed shapes
  (1 to 64 GPUs) arrive at `--trace-load` times the rate the fleet can serve, run for an
  exponential time and finish; a FIFO queue with backfill (an arrival is tried when the queue is
  short; when a gang finishes, the first 32 queued jobs are tried in order). Reported: the
  time-averaged share of usable GPUs busy from when the queue first backs up, and fragmentation:
  the share of tries, and the jobs, that did not fit though enough GPUs were free on nodes they
  may use.

Targets (issue 5): >= 5,000 decisions/s and p99 <= 2 ms at 2,000 nodes, >= 2,000/s and p99
<= 10 ms at 10,000 nodes; checked against the queue pass's decisions/s and the one-job p99.
Prints a table (medians of `--runs`) and writes JSON with every run and the machine. GC stays on
(as in the service); full collections during the timed parts are recorded with their pauses.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import heapq
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from harness import (  # bench/ is on sys.path when run as a script
    ROOT,
    latency_summary,
    machine_busy_s,
    machine_facts,
    wait_until_idle,
    write_report,
)

from infermesh.scheduler.capacity import FreeMap
from infermesh.scheduler.placement import max_replicas_that_fit, place
from infermesh.scheduler.plan import Evict, Planner, Resize, Start, Wait, plan
from infermesh.scheduler.snapshot import GpuNode, JobDemand, Pool, Snapshot

TARGETS = {2000: (5000.0, 2.0), 10000: (2000.0, 10.0)}  # nodes: (decisions/s, p99 ms)
GPUS = 8
FILL = 0.92  # share of GPUs the running mix holds: a busy fleet, where preemption is searched
FRESH_CALLS = 5  # plan() calls without a kept map
BACKFILL = 32  # queued jobs tried when a trace gang finishes
REGIONS = [
    ("us-east", "cloud-us", "US"),
    ("eu-west", "cloud-eu", "EU"),
    ("ap-south", "cloud-ap", "AP"),
]
CLASSES = [("h100", 0.5), ("a100", 0.3), ("l4", 0.2)]
ISLAND_NODES = 4
# (tp, pp, replicas, weight): from single-GPU fine-tunes to tp 8 x pp 4 x 8 pre-training
SHAPES = [
    (1, 1, 1, 20),
    (1, 1, 4, 10),
    (2, 1, 2, 10),
    (4, 1, 1, 10),
    (4, 1, 4, 8),
    (8, 1, 1, 12),
    (8, 1, 2, 10),
    (8, 2, 2, 8),
    (8, 2, 8, 4),
    (8, 4, 4, 3),
    (8, 4, 8, 1),
]
TRACE_SHAPES = [s for s in SHAPES if s[0] * s[1] * s[2] <= 64]


def fleet(n: int, rng: random.Random) -> dict[str, GpuNode]:
    nodes: dict[str, GpuNode] = {}
    islands: dict[str, int] = {}  # zone -> nodes in its open island
    for i in range(n):
        region, domain, residency = REGIONS[i % len(REGIONS)]
        zone = f"{region}-1{'abc'[(i // len(REGIONS)) % 3]}"
        node_class = rng.choices([c for c, _ in CLASSES], [w for _, w in CLASSES])[0]
        if region == "eu-west" and zone.endswith("c") and node_class == "l4":
            domain = "edge-eu"
        island = ""
        if node_class == "h100" and rng.random() < 1 / 3:
            count = islands.get(zone, 0)
            island = f"{zone}-nvl{count // ISLAND_NODES}"
            islands[zone] = count + 1
        key = f"fleet/n{i:05d}"
        nodes[key] = GpuNode(
            key=key,
            node_class=node_class,
            gpus=GPUS,
            zone=zone,
            region=region,
            domain=domain,
            island=island,
            residency=residency,
            price_gpu_hour={"h100": 4.0, "a100": 2.5, "l4": 0.8}[node_class],
            schedulable=rng.random() > 0.02,
            worker=None if rng.random() < 0.01 else f"tcp://10.0.{i // 250}.{i % 250}:8786",
        )
    return nodes


def pools(n: int) -> dict[str, Pool]:
    return {
        "gold": Pool("gold", quota_gpu_hours=1e7, used_gpu_hours=2e6, node_classes=("h100",)),
        "silver": Pool("silver", node_classes=("a100", "l4")),
        "research": Pool("research", max_gpus=n * GPUS // 10),
        "eu": Pool("eu", domains=("cloud-eu", "edge-eu")),
        "spent": Pool("spent", budget_usd=1000.0, spent_usd=1000.0),
    }


def demand(
    key: str, rng: random.Random, *, priorities: int, shapes: list[tuple[int, ...]]
) -> JobDemand:
    tp, pp, dp, _ = rng.choices(shapes, [s[3] for s in shapes])[0]
    elastic = rng.random() < 1 / 3
    roll = rng.random()
    kw: dict[str, Any] = {}
    if roll < 0.25:
        kw["pool"] = rng.choice(["gold", "silver", "research", "eu"])
    elif roll < 0.35:
        kw["node_classes"] = (rng.choice(["h100", "a100"]),)
    elif roll < 0.40:
        kw["residency"] = ("EU", "US")
    return JobDemand(
        key=key,
        tp=tp,
        pp=pp,
        min_replicas=max(1, dp // 2) if elastic else dp,
        max_replicas=dp * 2 if elastic else dp,
        priority=rng.randrange(priorities),
        submitted=float(rng.randrange(1_000_000)),
        last_checkpoint=rng.choice([None, rng.uniform(0, 10_000)]),
        **kw,
    )


def running_mix(nodes: dict[str, GpuNode], rng: random.Random) -> Snapshot:
    """The fleet with gangs running on about FILL of its GPUs."""
    base = Snapshot(nodes=nodes, pools=pools(len(nodes)))
    free = FreeMap(base)
    total = sum(n.gpus for n in nodes.values())
    jobs, running = {}, {}
    misses = 0
    while free.free_gpus() > (1 - FILL) * total and misses < 200:
        d = demand(f"fleet/j{len(jobs)}", rng, priorities=3, shapes=SHAPES)
        n = max_replicas_that_fit(d, base, free=free)
        p = place(d, base, n, free=free) if n else None
        if p is None:
            misses += 1
            continue
        jobs[d.key], running[d.key] = d, p
    return dataclasses.replace(base, jobs=jobs, running=running)


def queued_job(key: str, rng: random.Random) -> JobDemand:
    d = demand(key, rng, priorities=4, shapes=SHAPES)
    roll = rng.random()
    if roll < 0.03:
        return dataclasses.replace(d, node_classes=("b200",))  # never placeable
    if roll < 0.06:
        return dataclasses.replace(d, pool="spent")  # over budget
    return d


def kinds(actions: list[Any]) -> dict[str, int]:
    out = {"start": 0, "resize": 0, "evict": 0, "wait": 0}
    for a in actions:
        out[{Start: "start", Resize: "resize", Evict: "evict", Wait: "wait"}[type(a)]] += 1
    return out


def one_job(base: Snapshot, calls: int, rng: random.Random) -> dict[str, Any]:
    kept = FreeMap(base)
    snaps = []
    for i in range(calls + FRESH_CALLS):
        new = queued_job(f"fleet/new{i}", rng)
        snaps.append(dataclasses.replace(base, jobs={**base.jobs, new.key: new}))
    for snap in snaps[:20]:  # warm-up
        plan(snap, now=10_000, free=kept)
    seconds, counts = [], {"start": 0, "resize": 0, "evict": 0, "wait": 0}
    for snap in snaps[:calls]:
        t0 = time.perf_counter()
        decided = plan(snap, now=10_000, free=kept)
        seconds.append(time.perf_counter() - t0)
        for k, v in kinds(decided.actions).items():
            counts[k] += v
    fresh = []
    for snap in snaps[calls:]:
        t0 = time.perf_counter()
        plan(snap, now=10_000)
        fresh.append(time.perf_counter() - t0)
    return {
        "latency_ms": latency_summary(seconds),
        "decisions_per_s": round(len(seconds) / sum(seconds), 1),
        "actions": counts,
        "fresh_map_latency_ms": latency_summary(fresh),
    }


def queue_pass(base: Snapshot, queue: int, rng: random.Random) -> dict[str, Any]:
    queued = [queued_job(f"fleet/q{i}", rng) for i in range(queue)]
    snap = dataclasses.replace(base, jobs={**base.jobs, **{d.key: d for d in queued}})
    kept = FreeMap(base)
    t_start = time.perf_counter()
    planner = Planner(snap, now=10_000, free=kept)
    seconds = []
    while True:
        t0 = time.perf_counter()
        if not planner.step():
            break
        seconds.append(time.perf_counter() - t0)
    decided = planner.finish()
    wall = time.perf_counter() - t_start
    return {
        "queued": queue,
        "decisions_per_s": round(queue / wall, 1),
        "pass_ms": round(wall * 1000, 1),
        "latency_ms": latency_summary(seconds),
        "actions": kinds(decided.actions),
    }


def trace(nodes: dict[str, GpuNode], spread: bool, load: float, seed: int) -> dict[str, Any]:
    """Arrivals at `load` x the fleet's service rate into a FIFO queue with backfill."""
    rng = random.Random(seed)
    snap = Snapshot(nodes=nodes)
    free = FreeMap(snap)
    usable = free.free_gpus()
    weights = [s[3] for s in TRACE_SHAPES]
    mean_gpus = sum(s[0] * s[1] * s[2] * s[3] for s in TRACE_SHAPES) / sum(weights)
    mean_run = 3600.0
    rate = load * usable / (mean_gpus * mean_run)  # arrivals per second
    arrivals = int(3 * usable / mean_gpus)  # enough to saturate and then turn over
    now, busy, saturated_at = 0.0, 0, None
    area = 0.0  # busy GPU-seconds since saturation
    finishes: list[tuple[float, int, list[tuple[str, int]]]] = []
    queue: deque[JobDemand] = deque()
    tries = fragmented = started = 0
    blocked: set[str] = set()  # jobs that once did not fit though enough GPUs were free
    seq = 0

    def advance(to: float) -> None:
        nonlocal now, area
        if saturated_at is not None:
            area += busy * (to - now)
        now = to

    def start(d: JobDemand) -> bool:
        nonlocal busy, tries, fragmented, started, seq
        tries += 1
        p = place(d, snap, d.min_replicas, free=free)
        if p is None:
            if free.free_gpus(free.eligible(d)) >= d.min_replicas * d.replica_gpus:
                fragmented += 1
                blocked.add(d.key)
            return False
        busy += p.gpus
        started += 1
        seq += 1
        slots = [(s.node, s.gpu) for s in p.ranks]
        heapq.heappush(finishes, (now + rng.expovariate(1 / mean_run), seq, slots))
        return True

    def backfill() -> None:
        """After a gang finished: the first BACKFILL queued jobs, in order."""
        tried = [queue.popleft() for _ in range(min(BACKFILL, len(queue)))]
        queue.extendleft(reversed([d for d in tried if not start(d)]))

    next_arrival = rng.expovariate(rate)
    for i in range(arrivals):
        while finishes and finishes[0][0] <= next_arrival:
            t, _, slots = heapq.heappop(finishes)
            advance(t)
            free.give(slots)
            busy -= len(slots)
            backfill()
        advance(next_arrival)
        tp, pp, dp, _ = rng.choices(TRACE_SHAPES, weights)[0]
        job = JobDemand(
            key=f"fleet/t{i}",
            tp=tp,
            pp=pp,
            min_replicas=dp,
            max_replicas=dp,
            spread="spread" if spread else "binpack",
        )
        # an arrival frees nothing: only the new job can start (within the backfill window)
        if len(queue) >= BACKFILL or not start(job):
            queue.append(job)
        if saturated_at is None and len(queue) >= BACKFILL:
            saturated_at = now
        next_arrival = now + rng.expovariate(rate)
    window = now - (saturated_at or now)
    return {
        "policy": "spread" if spread else "binpack",
        "arrivals": arrivals,
        "started": started,
        "busy_share": round(area / (usable * window), 4) if window > 0 else None,
        "busy_share_at_end": round(busy / usable, 4),
        "fragmented_tries": fragmented,
        "fragmented_share": round(fragmented / tries, 4) if tries else 0.0,
        "fragmented_jobs": len(blocked),
        "queued_at_end": len(queue),
    }


class FullCollections:
    """Pauses of full (generation 2) garbage collections while it is entered, in ms: GC stays on
    as in the service, and a full collection of a 10,000-node snapshot shows in the maxima."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._t0 = time.perf_counter()
            else:
                self.pauses.append(round((time.perf_counter() - self._t0) * 1000, 1))

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def one_run(args: argparse.Namespace, run: int) -> list[dict[str, Any]]:
    rows = []
    for n in args.nodes:
        rng = random.Random(run * 100_003 + n)
        nodes = fleet(n, rng)
        t0 = time.perf_counter()
        base = running_mix(nodes, rng)
        build_s = time.perf_counter() - t0
        cpu0, w0 = machine_busy_s(), time.perf_counter()
        t0 = time.perf_counter()
        FreeMap(base)
        index_ms = (time.perf_counter() - t0) * 1000
        row: dict[str, Any] = {
            "nodes": n,
            "gpus": n * GPUS,
            "running_jobs": len(base.running),
            "running_gpus": sum(p.gpus for p in base.running.values()),
            "fleet_build_s": round(build_s, 2),
            "fresh_index_ms": round(index_ms, 1),
        }
        with FullCollections() as collections:
            row["one_job"] = one_job(base, args.calls, rng)
        row["one_job"]["full_gc_pauses_ms"] = collections.pauses
        with FullCollections() as collections:
            row["queue_pass"] = queue_pass(base, args.queue, rng)
        row["queue_pass"]["full_gc_pauses_ms"] = collections.pauses
        cpu1, w1 = machine_busy_s(), time.perf_counter()
        if cpu0 is not None and cpu1 is not None:
            # the rest of the machine meanwhile (this process holds one core at most)
            row["other_cpu_pct"] = round(max(0.0, 100 * (cpu1 - cpu0) / (w1 - w0) - 100), 1)
        row["trace"] = [trace(nodes, spread, args.trace_load, seed=run) for spread in (False, True)]
        rows.append(row)
        print(
            f"  {n:,} nodes, {row['running_jobs']:,} gangs on {row['running_gpus']:,} GPUs: "
            f"one job p99 {row['one_job']['latency_ms']['p99']:.2f} ms "
            f"(actions {row['one_job']['actions']}), queue pass "
            f"{row['queue_pass']['decisions_per_s']:,.0f} decisions/s "
            f"(actions {row['queue_pass']['actions']})",
            flush=True,
        )
    return rows


def flat(row: dict[str, Any]) -> dict[str, float]:
    """The figures of one row that the summary takes medians of."""
    one, qp = row["one_job"], row["queue_pass"]
    out = {
        "one_job_p50_ms": one["latency_ms"]["p50"],
        "one_job_p99_ms": one["latency_ms"]["p99"],
        "one_job_per_s": one["decisions_per_s"],
        "fresh_map_p50_ms": one["fresh_map_latency_ms"]["p50"],
        "fresh_index_ms": row["fresh_index_ms"],
        "queue_per_s": qp["decisions_per_s"],
        "queue_p50_ms": qp["latency_ms"]["p50"],
        "queue_p99_ms": qp["latency_ms"]["p99"],
        "queue_pass_ms": qp["pass_ms"],
    }
    for t in row["trace"]:
        out[f"{t['policy']}_busy"] = t["busy_share"]
        out[f"{t['policy']}_fragmented"] = t["fragmented_share"]
        out[f"{t['policy']}_fragmented_jobs"] = t["fragmented_jobs"]
    return out


def medians(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for i, first in enumerate(runs[0]):
        figures = [flat(r[i]) for r in runs]
        row: dict[str, Any] = {
            "nodes": first["nodes"],
            "running_jobs": first["running_jobs"],
            "running_gpus": first["running_gpus"],
        }
        for key in figures[0]:
            values = [f[key] for f in figures if f[key] is not None]
            row[key] = round(statistics.median(values), 4) if values else None
        per_s, p99 = TARGETS.get(first["nodes"], (None, None))
        if per_s is not None:
            row["target"] = f">= {per_s:,.0f}/s, p99 <= {p99:g} ms"
            ok = row["queue_per_s"] >= per_s and row["one_job_p99_ms"] <= p99
            row["verdict"] = "pass" if ok else "fail"
        out.append(row)
    return out


def print_table(rows: list[dict[str, Any]], runs: int) -> None:
    print(f"\nplacement decisions (medians of {runs} run(s))")
    head = (
        f"{'nodes':>7}{'running':>9}{'1 job p50':>11}{'p99 ms':>8}{'fresh':>8}"
        f"{'queue/s':>9}{'q p50':>8}{'q p99':>8}{'target':>30}{'':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['nodes']:>7,}{r['running_jobs']:>9,}{r['one_job_p50_ms']:>11.2f}"
            f"{r['one_job_p99_ms']:>8.2f}{r['fresh_map_p50_ms']:>8.1f}{r['queue_per_s']:>9,.0f}"
            f"{r['queue_p50_ms']:>8.3f}{r['queue_p99_ms']:>8.2f}{r.get('target', ''):>30}"
            f"{r.get('verdict', ''):>6}"
        )
    print("(1 job: one plan() per newly queued job on a kept FreeMap; fresh: the same with the")
    print(" fleet indexed afresh; queue: one pass over the whole queue, per decision in it)")
    print(
        "\nsaturated trace: share of GPUs busy; fragmentation: share of tries, and jobs, that did"
        "\nnot fit though enough GPUs were free on nodes they may use"
    )
    head = (
        f"{'nodes':>7}{'binpack busy':>14}{'frag':>8}{'jobs':>7}"
        f"{'spread busy':>13}{'frag':>8}{'jobs':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['nodes']:>7,}{r['binpack_busy']:>14.1%}{r['binpack_fragmented']:>8.1%}"
            f"{r['binpack_fragmented_jobs']:>7,.0f}{r['spread_busy']:>13.1%}"
            f"{r['spread_fragmented']:>8.1%}{r['spread_fragmented_jobs']:>7,.0f}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", default="2000,10000", help="fleet sizes, comma-separated")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--calls", type=int, default=1000, help="one-job plan() calls per size")
    p.add_argument("--queue", type=int, default=1000, help="queued jobs in the queue pass")
    p.add_argument("--trace-load", type=float, default=3.0, help="offered load / capacity")
    p.add_argument(
        "--wait-idle", type=float, default=0.0, help="wait up to S s for a quiet machine per run"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "placement.json")
    args = p.parse_args(argv)
    args.nodes = [int(s) for s in args.nodes.split(",")]
    if args.calls < 20 or args.queue < 1 or args.runs < 1 or min(args.nodes) < 10:
        p.error("--calls >= 20, --queue >= 1, --runs >= 1 and sizes >= 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    print(
        f"bench/placement.py: {args.runs} run(s), nodes {args.nodes}, {args.calls} one-job "
        f"calls, queue {args.queue}",
        flush=True,
    )
    runs = []
    for run in range(1, args.runs + 1):
        print(f"run {run}/{args.runs}", flush=True)
        if args.wait_idle:
            wait_until_idle(args.wait_idle)
        runs.append(one_run(args, run))
    summary = medians(runs)
    print_table(summary, len(runs))
    verdicts = [r["verdict"] for r in summary if "verdict" in r]
    report = {
        "benchmark": "bench/placement.py",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/placement.py", *(argv or sys.argv[1:])]),
        "parameters": {
            "nodes": args.nodes,
            "runs": args.runs,
            "calls": args.calls,
            "fresh_calls": FRESH_CALLS,
            "queue": args.queue,
            "trace_load": args.trace_load,
            "fill": FILL,
            "backfill": BACKFILL,
            "gpus_per_node": GPUS,
        },
        "machine": machine_facts(),
        "target": {
            f"{n} nodes": f">= {s:,.0f} decisions/s, p99 <= {p:g} ms"
            for n, (s, p) in TARGETS.items()
        },
        "verdict": None
        if not verdicts
        else ("pass" if all(v == "pass" for v in verdicts) else "fail"),
        "median": summary,
        "runs": runs,
    }
    write_report(args.out, report, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
