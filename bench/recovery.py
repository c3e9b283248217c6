#!/usr/bin/env python
"""Recovery benchmark: kill-to-resumed time of a training gang on a real local Dask cluster
(issue 5, acceptance 3; target <= 5 s).

    .venv/bin/python bench/recovery.py [--runs 5] [--step-ms 50] [--interval 10]
                                       [--cpu-share 0.2] [--grace 5] [--seed 1]
                                       [--wait-idle S] [--out bench/results/recovery.json]

A local cluster of three 2-GPU nodes (`start_local_cluster`: one Nanny worker each) runs the
built-in `synthetic` workload as a gang of 4 ranks on two nodes, checkpointing every
`--interval` steps of `--step-ms`. Each run starts a fresh job, lets it write two checkpoints,
waits a random part of one more interval (so the kill lands anywhere between checkpoints),
then SIGKILLs the worker process of rank 0's node (the worst case: rank 0 writes the
checkpoints, so nothing is saved on the way out). A minimal recovery loop on the executor's
public API then does what the scheduler service does: on `WorkerLost` for a node of the gang,
`stop` the attempt (the survivors get SIGTERM, the futures are cancelled and released), place
the gang on the two healthy nodes and `launch` attempt + 1, which resumes from the newest
checkpoint. Resumed = the first `RankReport` of the new attempt.

Per run it reports kill -> WorkerLost, -> stopped, -> relaunched, -> resumed, and the steps
lost (the highest step the killed attempt reported minus the step the new one resumed from;
reports come every ~100 ms, so this may read up to two 50 ms steps low). Then it stops the
job and waits for the Nanny to bring the killed worker back before the next run.

`--cpu-share` is the share of each step the synthetic ranks compute on the CPU (the rest they
wait, as ranks waiting on their GPU do): 4 ranks computing flat out would starve the Dask
workers and this process of the machine's two cores. Everything runs on 127.0.0.1; the cluster
is closed at the end and any worker process left is killed by its PID, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import distributed
from distributed import Client
from harness import (  # bench/ is on sys.path when run as a script
    ROOT,
    interrupt_on_signals,
    machine_facts,
    percentile,
    wait_until_idle,
    write_report,
)

from infermesh.model import Workload
from infermesh.scheduler.cluster import (
    WorkerNode,
    close_cluster,
    cluster_workers,
    start_local_cluster,
)
from infermesh.scheduler.executor import (
    ExecutorEvent,
    GangExecutor,
    Launch,
    RankReport,
    WorkerAdded,
    WorkerLost,
)
from infermesh.scheduler.snapshot import NodeKey, Placement, RankSlot

NODES = [WorkerNode(f"bench/n{i}", 2, {"zone": f"z{i}", "node_class": "sim"}) for i in (1, 2, 3)]
TARGET_S = 5.0
WAIT_S = 60.0  # bound on every wait; a run that exceeds it fails the benchmark
PHASES = ("lost", "stopped", "relaunched", "resumed")


class Inbox:
    """The executor's events, taken one at a time until the one wanted arrives."""

    def __init__(self, executor: GangExecutor) -> None:
        self.executor = executor

    async def until(
        self, want: Callable[[ExecutorEvent], bool], what: str, seen: list[ExecutorEvent]
    ) -> ExecutorEvent:
        """The first event `want` accepts, in `seen` already or to come; every event taken
        meanwhile lands in `seen`."""
        for event in seen:
            if want(event):
                return event
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no {what} within {WAIT_S:.0f} s")
            try:
                event = await asyncio.wait_for(self.executor.events.get(), remaining)
            except TimeoutError:
                continue
            seen.append(event)
            if want(event):
                return event


def gang(job: str, nodes: list[NodeKey]) -> Placement:
    """Four data-parallel ranks, two on each node; rank 0 on the first."""
    slots = [RankSlot(2 * i + g, node, g, g) for i, node in enumerate(nodes) for g in (0, 1)]
    return Placement(job, len(slots), 1, 1, tuple(slots))


def launch_of(
    job: str,
    attempt: int,
    placement: Placement,
    workers: dict[str, str],
    args: argparse.Namespace,
    uri: Path,
) -> Launch:
    workload = Workload(
        entrypoint="synthetic",
        steps=1_000_000,  # runs until stopped
        stepTimeMs=args.step_ms,
        env={"INFERMESH_SYNTHETIC_CPU_SHARE": str(args.cpu_share)},
    )
    return Launch(
        job=job,
        attempt=attempt,
        placement=placement,
        workers=workers,
        workload=workload,
        checkpoint_uri=uri.as_uri(),
        interval_steps=args.interval,
        keep_last=2,
        topology={"algorithm": "ring"},
    )


def reports(seen: list[ExecutorEvent], job: str, attempt: int) -> list[RankReport]:
    return [e for e in seen if isinstance(e, RankReport) and (e.job, e.attempt) == (job, attempt)]


async def recover(
    executor: GangExecutor,
    inbox: Inbox,
    job: str,
    placement: Placement,
    args: argparse.Namespace,
    uri: Path,
    seen: list[ExecutorEvent],
) -> dict[str, float]:
    """The minimal recovery loop: WorkerLost -> stop -> relaunch on healthy nodes -> resumed.
    The monotonic time each phase ended."""
    nodes = placement.nodes()
    lost = await inbox.until(
        lambda e: isinstance(e, WorkerLost) and e.node in nodes, "WorkerLost", seen
    )
    marks = {"lost": time.perf_counter()}
    assert isinstance(lost, WorkerLost)
    await executor.stop(job, 1, args.grace)
    marks["stopped"] = time.perf_counter()
    workers = {n: w.address for n, w in (await cluster_workers(executor.client)).items()}
    healthy = [n.node for n in NODES if n.node != lost.node and n.node in workers][:2]
    await executor.launch(launch_of(job, 2, gang(job, healthy), workers, args, uri))
    marks["relaunched"] = time.perf_counter()
    await inbox.until(
        lambda e: isinstance(e, RankReport) and (e.job, e.attempt) == (job, 2), "resumed", seen
    )
    marks["resumed"] = time.perf_counter()
    return marks


async def one_run(
    run: int,
    client: Client,
    executor: GangExecutor,
    inbox: Inbox,
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    job, uri = f"bench/recovery-{run}", tmp / f"run-{run}"
    seen: list[ExecutorEvent] = []
    workers = {n: w.address for n, w in (await cluster_workers(client)).items()}
    nodes = [n.node for n in NODES][run % 3 :] + [n.node for n in NODES][: run % 3]
    placement = gang(job, nodes[:2])
    await executor.launch(launch_of(job, 1, placement, workers, args, uri))
    await inbox.until(
        lambda e: (
            isinstance(e, RankReport)
            and (e.job, e.attempt) == (job, 1)
            and (e.checkpoint_step or 0) >= 2 * args.interval
        ),
        "two checkpoints",
        seen,
    )
    await asyncio.sleep(args.rng.uniform(0, args.interval * args.step_ms / 1000))
    victim = workers[nodes[0]]
    pid = (await client.run(os.getpid, workers=[victim]))[victim]
    args.worker_pids.add(pid)

    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    marks = await recover(executor, inbox, job, placement, args, uri, seen)

    before = max(r.step for r in reports(seen, job, 1))
    resumed_from = reports(seen, job, 2)[0].resumed_from
    await executor.stop(job, 2, args.grace)
    await inbox.until(
        lambda e: isinstance(e, WorkerAdded) and e.node == nodes[0], "the worker's restart", seen
    )
    result: dict[str, Any] = {"run": run, "killed_node": nodes[0]}
    last = killed
    for phase in PHASES:
        result[f"{phase}_ms"] = round((marks[phase] - last) * 1000, 1)
        last = marks[phase]
    result["kill_to_resumed_s"] = round(marks["resumed"] - killed, 3)
    result["last_step_before_kill"] = before
    result["resumed_from"] = resumed_from
    result["steps_lost"] = before - (resumed_from or 0)
    print(
        f"  run {run}: kill -> resumed {result['kill_to_resumed_s']:.3f} s  ("
        + "  ".join(f"{p} +{result[f'{p}_ms']:.0f} ms" for p in PHASES)
        + f")  steps lost {result['steps_lost']} (step {before} -> checkpoint {resumed_from})",
        flush=True,
    )
    return result


async def bench(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    cluster = await start_local_cluster(NODES)
    try:
        async with Client(cluster, asynchronous=True) as client:
            args.worker_pids.update((await client.run(os.getpid)).values())
            executor = GangExecutor(client)
            await executor.start()
            try:
                inbox = Inbox(executor)
                return [
                    await one_run(run, client, executor, inbox, args, tmp)
                    for run in range(1, args.runs + 1)
                ]
            finally:
                args.worker_pids.update((await client.run(os.getpid)).values())
                for job, attempt in (await executor.live_attempts()).items():
                    await executor.stop(job, attempt, 0)
                await executor.close()
    finally:
        await close_cluster(cluster)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    totals = sorted(r["kill_to_resumed_s"] for r in runs)
    lost = sorted(r["steps_lost"] for r in runs)
    out: dict[str, Any] = {
        "runs": len(runs),
        "kill_to_resumed_s": {
            "median": round(statistics.median(totals), 3),
            "p95": round(percentile(totals, 95), 3),
            "max": round(totals[-1], 3),
        },
        "steps_lost": {"median": statistics.median(lost), "max": lost[-1]},
        "target_s": TARGET_S,
        "meets_target": percentile(totals, 95) <= TARGET_S,
    }
    for phase in PHASES:
        out[f"{phase}_ms_median"] = round(statistics.median(r[f"{phase}_ms"] for r in runs), 1)
    return out


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any], interval: int) -> None:
    print("\nrun  kill->lost  ->stopped  ->relaunched  ->resumed   total    steps lost")
    for r in runs:
        print(
            f"{r['run']:>3}  {r['lost_ms']:>8.0f} ms {r['stopped_ms']:>7.0f} ms"
            f" {r['relaunched_ms']:>9.0f} ms {r['resumed_ms']:>7.0f} ms"
            f" {r['kill_to_resumed_s']:>7.3f} s  {r['steps_lost']:>4}"
        )
    k = summary["kill_to_resumed_s"]
    print(
        f"\nkill-to-resumed: median {k['median']:.3f} s, p95 {k['p95']:.3f} s, max {k['max']:.3f} s"
        f" (target <= {TARGET_S:g} s: {'met' if summary['meets_target'] else 'MISSED'});"
        f" steps lost: median {summary['steps_lost']['median']:g},"
        f" max {summary['steps_lost']['max']} (interval {interval})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--step-ms", type=float, default=50.0)
    p.add_argument("--interval", type=int, default=10, help="checkpoint every N steps")
    p.add_argument("--cpu-share", type=float, default=0.2)
    p.add_argument("--grace", type=float, default=5.0, help="stop's grace period, s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--wait-idle", type=float, default=0.0, help="wait up to S for a quiet box")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recovery.json")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines bury the table
    args.rng = random.Random(args.seed)
    args.worker_pids = set()
    interrupt_on_signals()
    started = dt.datetime.now(dt.UTC)
    busy = wait_until_idle(args.wait_idle) if args.wait_idle > 0 else None
    print(
        f"bench/recovery.py: {args.runs} run(s), 4 ranks on 2 of 3 local 2-GPU nodes, "
        f"steps of {args.step_ms:g} ms (CPU share {args.cpu_share:g}), "
        f"checkpoint every {args.interval} steps",
        flush=True,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="infermesh-recovery-bench-") as tmp:
            runs = asyncio.run(bench(args, Path(tmp)))
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); the cluster is closed", file=sys.stderr)
        return 130
    finally:
        for pid in args.worker_pids:  # anything the cluster failed to stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    summary = summarize(runs)
    print_table(runs, summary, args.interval)
    out = {
        "benchmark": "bench/recovery.py",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/recovery.py", *(argv or sys.argv[1:])]),
        "parameters": {
            "runs": args.runs,
            "nodes": [{"node": n.node, "gpus": n.gpus} for n in NODES],
            "gang": "4 ranks (dp=4), 2 per node on 2 nodes; rank 0's node is killed",
            "step_ms": args.step_ms,
            "cpu_share": args.cpu_share,
            "checkpoint_interval_steps": args.interval,
            "stop_grace_s": args.grace,
            "seed": args.seed,
            "resumed": "first RankReport of attempt 2 (resumed from the newest checkpoint)",
        },
        "machine": {
            **machine_facts(),
            "dask_distributed": distributed.__version__,
            "machine_busy_before_pct": busy,
        },
        "summary": summary,
        "runs": runs,
    }
    write_report(args.out, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
