#!/usr/bin/env python
"""Router benchmark: what our router adds over going straight to the runtime, how many streams
one core of it carries, and TTFT per routing strategy on a heterogeneous fleet at 80 % load;
with `--peers`, the same load against vllm-router and smg (issue 4, acceptance 3).

    .venv/bin/python bench/router.py [--part overhead,throughput,fleet] [--runs 1] [--quick]
                                     [--wait-idle S] [--router-loop asyncio|uvloop]
                                     [--out bench/results/router.json]
    .venv/bin/python bench/router.py --peers        # bench/results/router_peers.json
                                                    # (`make bench-peers` installs the peers)

One default run takes about 6 minutes, `--quick` about 1.5, `--runs 3` (the medians that
docs/benchmarks.md reports; the fleet part runs once) about 10, `--peers` about 11 and
`--peers --fleet-runs 3` (medians of the fleet windows) about 27, plus any waits for quiet.
`bench/router_report.py` prints both result files again with the targets re-derived.

Cores: the router under test (ours or a peer) runs alone on core 1 (`taskset -c 1`); the load
generator (this process), the runtimes, their agents, etcd and the API share core 0. So "one
core" is the router's whole budget, and the client's cost never lands on it.

What runs: a real etcd (`EmbeddedEtcd`, temporary directory) and the real API
(`infermesh api`), then `infermesh router` as `up` starts it (it reads etcd and ships its SLI
series to the API). Its runtimes are registered by real agents, as any vLLM's would be:

- overhead and throughput: a fixed-answer vLLM-compatible upstream (router_upstream.py; one
  process, 4 ports = 4 nodes, each with an `infermesh agent`), because the runtime simulator
  itself streams ~800 requests/s on a whole core and would be the limit; its answers are
  streamed chat completions of 16 tokens (SSE, chunked), paced per phase (router_parts.py);
- fleet: `infermesh fleet` with 2 x H100, 2 x A100 and 2 x L4 simulators at realistic speed
  (router_fleet.py); the strategy is switched by applying the Endpoint with another
  `strategy.ref` through the API. Peers get the same runtime URLs on their command line.

Every figure is "through the router" minus "straight to the runtime" with the same client, the
same requests and the same upstream. The router's CPU is read from /proc/PID/stat and its peak
RSS from VmHWM. Everything talks to 127.0.0.1 only; every child is stopped by its PID at the
end (also on Ctrl-C, SIGTERM and errors); every phase is bounded in time and requests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import (  # bench/ is on sys.path when run as a script
    ROOT,
    etcd_version,
    interrupt_on_signals,
    machine_facts,
    run_async,
    wait_until_idle,
    write_report,
)
from router_fleet import (
    FLEET_ENDPOINT,
    FLEET_MODEL,
    OUR_STRATEGIES,
    Workload,
    confirm_strategy,
    endpoint,
    fleet_target,
    write_fleet_file,
)
from router_load import wait_routable
from router_mesh import LOAD_CORE, OVERHEAD_ENDPOINT, ROUTER_CORE, UPSTREAM_MODEL, Mesh
from router_parts import (
    OVERHEAD_PHASES,
    THROUGHPUT_PACINGS,
    Case,
    Subject,
    direct,
    fleet_capacity,
    fleet_case,
    memory,
    overhead,
    routed,
    throughput,
)
from router_peers import POLICIES, installed, missing_message, start_peer, versions
from router_report import print_report, summarize

PARTS = ("overhead", "throughput", "fleet")
LEVELS = (8, 16, 32, 64, 128, 256)
QUICK = {
    "c1_window": 2.0,
    "c1_paced_window": 4.0,
    "c16_window": 4.0,
    "level_window": 2.0,
    "levels": [16, 64, 256],
    "pacings": ["burst"],
    "fleet_window": 8.0,
    "fleet_warmup": 3.0,
    "fleet_drain": 5.0,
    "fleet_cap_window": 4.0,
    "fleet_cap_warmup": 3.0,
    "strategies": ["baseline_rr@1.0", "hybrid_mesh@1.0"],
    "policies": ["round_robin"],
}


# -- ours -----------------------------------------------------------------------------------------
async def ours(args: argparse.Namespace, mesh: Mesh, report: dict[str, Any]) -> None:
    ports = mesh.start_upstream(args.nodes)
    mesh.overhead_endpoint(args.strategy)
    port = mesh.start_router(args.router_loop)
    assert mesh.router is not None
    subject = Subject(
        "infermesh", mesh.router.pid, routed("infermesh", port, OVERHEAD_ENDPOINT, mesh.token)
    )
    await wait_routable(subject.target, 60)
    report["memory_after_start"] = memory(subject)
    await overhead_and_throughput(args, mesh, subject, direct(ports), report)
    if "fleet" in args.parts:
        workload = Workload(args.seed)
        target = fleet_target("infermesh", port, workload, FLEET_ENDPOINT, mesh.token)

        def case(strategy: str) -> Case:
            async def start() -> Subject:
                mesh.apply([endpoint(strategy)])
                await confirm_strategy(f"http://127.0.0.1:{port}", mesh.token, strategy)
                return Subject("infermesh", subject.pid, target)

            return Case(strategy, "infermesh", strategy, start, lambda: None)

        await fleet(args, mesh, [case(s) for s in args.strategies], workload, report)
    report["memory"] = memory(subject)


async def overhead_and_throughput(
    args: argparse.Namespace,
    mesh: Mesh,
    subject: Subject,
    base: Any,
    report: dict[str, Any],
) -> None:
    if not {"overhead", "throughput"} & set(args.parts):
        return
    for run in range(1, args.runs + 1):
        if args.wait_idle > 0:
            report["machine_busy_before_pct"].append(wait_until_idle(args.wait_idle))
        entry: dict[str, Any] = {"run": run}
        if "overhead" in args.parts:
            print(f"overhead, run {run}/{args.runs} ({subject.name})", flush=True)
            entry["overhead"] = await overhead(args, mesh, subject, base)
        if "throughput" in args.parts:
            print(f"throughput, run {run}/{args.runs} ({subject.name})", flush=True)
            entry["throughput"] = await throughput(args, mesh, subject, base)
        report["runs"].append(entry)


async def fleet(
    args: argparse.Namespace,
    mesh: Mesh,
    cases: list[Case],
    workload: Workload,
    report: dict[str, Any],
) -> None:
    print("heterogeneous fleet", flush=True)
    mesh.start_fleet(write_fleet_file(mesh.workdir, args.fleet_max_seqs), args.fleet_time_scale, 6)
    if args.wait_idle > 0:
        wait_until_idle(args.wait_idle, busy_below=40.0)  # the idle fleet itself costs some
    cap = await fleet_capacity(args, mesh, workload)
    rate = args.load * cap["requests_per_s"]
    report["fleet"] = {"capacity": cap, "load": args.load, "rate_per_s": rate, "cases": []}
    for run in range(1, args.fleet_runs + 1):  # case after case, so drift hits them all alike
        if args.fleet_runs > 1:
            print(f"  fleet run {run}/{args.fleet_runs}", flush=True)
        for case in cases:
            result = await fleet_case(args, mesh, case, rate)
            report["fleet"]["cases"].append(result | {"run": run})


# -- peers ----------------------------------------------------------------------------------------
async def peers(args: argparse.Namespace, mesh: Mesh, report: dict[str, Any]) -> None:
    found = installed()
    if not found:
        raise SystemExit(missing_message())
    report["peers"] = versions()
    ports = mesh.start_upstream(args.nodes, agents=False)
    workers = [f"http://127.0.0.1:{p}" for p in ports]
    report["by_peer"] = {}
    for peer in found if {"overhead", "throughput"} & set(args.parts) else ():
        port = start_peer(mesh, peer, workers, "round_robin", "overhead")
        assert mesh.router is not None
        subject = Subject(peer.name, mesh.router.pid, routed(peer.name, port, UPSTREAM_MODEL))
        try:
            await wait_routable(subject.target, 60)
            sub: dict[str, Any] = {
                "runs": [],
                "machine_busy_before_pct": [],
                "policy": "round_robin",
            }
            await overhead_and_throughput(args, mesh, subject, direct(ports), sub)
            sub["memory"] = memory(subject)
            report["by_peer"][peer.name] = sub
        finally:
            mesh.stop_child(mesh.router)
    if "fleet" not in args.parts:
        return
    workload = Workload(args.seed)
    cases = []
    for peer in found:
        for policy in args.policies:
            cases.append(peer_case(mesh, peer, policy, workload))
    for strategy in args.reference:  # ours in the same session: no comparison across runs
        cases.append(our_case(args, mesh, strategy, workload))
    await fleet(args, mesh, cases, workload, report)


def peer_case(mesh: Mesh, peer: Any, policy: str, workload: Workload) -> Case:
    async def start() -> Subject:
        urls = [n["runtime"] for n in mesh.fleet_runtimes]
        port = start_peer(mesh, peer, urls, policy, "fleet")
        assert mesh.router is not None
        target = fleet_target(peer.name, port, workload, FLEET_MODEL, None)
        await wait_routable(target, 60)
        return Subject(peer.name, mesh.router.pid, target)

    return Case(
        f"{peer.name} {policy}", peer.name, policy, start, lambda: mesh.stop_child(mesh.router)
    )


def our_case(args: argparse.Namespace, mesh: Mesh, strategy: str, workload: Workload) -> Case:
    async def start() -> Subject:
        port = mesh.start_router(args.router_loop)
        assert mesh.router is not None
        mesh.apply([endpoint(strategy)])
        await confirm_strategy(f"http://127.0.0.1:{port}", mesh.token, strategy)
        target = fleet_target("infermesh", port, workload, FLEET_ENDPOINT, mesh.token)
        return Subject("infermesh", mesh.router.pid, target)

    return Case(strategy, "infermesh", strategy, start, lambda: mesh.stop_child(mesh.router))


# -- main -----------------------------------------------------------------------------------------
def _words(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def _ints(value: str) -> list[int]:
    return [int(x) for x in _words(value)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", dest="parts", type=_words, default=list(PARTS), help=",".join(PARTS))
    p.add_argument("--peers", action="store_true", help="measure vllm-router and smg instead")
    p.add_argument("--quick", action="store_true", help="a ~2 minute smoke run")
    p.add_argument("--runs", type=int, default=1, help="overhead and throughput repeats (medians)")
    p.add_argument("--nodes", type=int, default=4, help="upstream nodes (ports) for overhead")
    p.add_argument("--strategy", default="hybrid_mesh@1.0", help="the overhead endpoint's")
    p.add_argument("--router-loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--warmup", type=float, default=1.0, help="s before each measured window")
    p.add_argument("--c1-window", type=float, default=5.0, help="measured s at concurrency 1")
    p.add_argument(
        "--c1-paced-window", type=float, default=25.0, help="measured s at c=1, LLM-paced"
    )
    p.add_argument("--c16-window", type=float, default=15.0, help="measured s at concurrency 16")
    p.add_argument("--level-window", type=float, default=3.0, help="measured s per ramp level")
    p.add_argument("--levels", type=_ints, default=list(LEVELS), help="ramp concurrencies")
    p.add_argument(
        "--pacings", type=_words, default=list(THROUGHPUT_PACINGS), help="burst,paced ramps"
    )
    p.add_argument(
        "--no-direct-ceiling",
        dest="direct_ceiling",
        action="store_false",
        help="skip the client+upstream ceiling (the ramp straight to the upstream)",
    )
    p.add_argument("--strategies", type=_words, default=list(OUR_STRATEGIES))
    p.add_argument("--policies", type=_words, default=list(POLICIES), help="peer policies")
    p.add_argument(
        "--reference",
        type=_words,
        default=["hybrid_mesh@1.0"],
        help="with --peers: our strategies measured in the same session ('' for none)",
    )
    p.add_argument("--fleet-runs", type=int, default=1, help="fleet repeats (medians)")
    p.add_argument("--load", type=float, default=0.8, help="share of the fleet's capacity")
    p.add_argument("--fleet-max-seqs", type=int, default=16, help="max_num_seqs of every node")
    p.add_argument("--fleet-time-scale", type=float, default=1.0, help="1: realistic speed")
    p.add_argument("--fleet-warmup", type=float, default=5.0)
    p.add_argument("--fleet-window", type=float, default=20.0)
    p.add_argument("--fleet-drain", type=float, default=15.0, help="s for the last answers")
    p.add_argument("--fleet-cap-warmup", type=float, default=4.0)
    p.add_argument("--fleet-cap-window", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=1, help="arrivals and prompts")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for other work on the machine to stop",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="measure a window again (after waiting for quiet) when other work took > 20%% of "
        "a core during it, at most this many times",
    )
    p.add_argument("--retry-wait", type=float, default=120.0, help="max s to wait for quiet")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    given = argv if argv is not None else sys.argv
    if args.quick:
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    if bad := set(args.parts) - set(PARTS):
        p.error(f"unknown parts: {', '.join(sorted(bad))}")
    if bad := set(args.pacings) - set(THROUGHPUT_PACINGS):
        p.error(f"unknown pacings: {', '.join(sorted(bad))}")
    if bad := set(args.policies) - set(POLICIES):
        p.error(f"unknown policies: {', '.join(sorted(bad))}")
    if not (1 <= args.runs <= 10 and 1 <= args.fleet_runs <= 5 and 1 <= args.nodes <= 64):
        p.error("runs 1..10, fleet-runs 1..5, nodes 1..64")
    if not 0.05 <= args.load <= 1.5:
        p.error("load 0.05..1.5")
    if not all(1 <= c <= 2048 for c in args.levels) or not args.levels:
        p.error("levels 1..2048")
    windows = (args.c1_window, args.c1_paced_window, args.c16_window, args.level_window)
    if not all(0 < w <= 300 for w in windows) or not 0 <= args.warmup <= 60:
        p.error("windows 0..300 s, warmup 0..60 s")
    if args.out is None:
        name = "router_peers.json" if args.peers else "router.json"
        args.out = ROOT / "bench" / "results" / name
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not {LOAD_CORE, ROUTER_CORE} <= set(os.sched_getaffinity(0)):
        print(f"needs cores {LOAD_CORE} and {ROUTER_CORE}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})  # the load generator stays off the router's core
    interrupt_on_signals()
    started = dt.datetime.now(dt.UTC)
    what = "peers" if args.peers else "infermesh router"
    print(f"bench/router.py: {what}; parts {','.join(args.parts)}; {args.runs} run(s)", flush=True)
    report: dict[str, Any] = {"runs": [], "machine_busy_before_pct": []}
    etcd_ver = "unknown"
    served: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="infermesh-router-bench-") as tmp:
            mesh = Mesh(Path(tmp))
            try:
                mesh.start()
                etcd_ver = etcd_version(mesh.etcd.endpoint)
                run_async(peers(args, mesh, report) if args.peers else ours(args, mesh, report))
            finally:
                served = mesh.stop()
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); every child is stopped", file=sys.stderr)
        return 130
    summary = summarize(args, report)
    out = {
        "benchmark": "bench/router.py",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/router.py", *(argv or sys.argv[1:])]),
        "parameters": parameters(args),
        "machine": {**machine_facts(), "etcd_version": etcd_ver},
        "summary": summary,
        **report,
        "upstream_requests_served": served,
        "wall_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
    }
    print_report(out)
    write_report(args.out, out, started)
    return 0


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "parts": args.parts,
        "runs": args.runs,
        "cores": {"router": ROUTER_CORE, "everything else": LOAD_CORE},
        "router_loop": args.router_loop,
        "overhead_strategy": args.strategy,
        "upstream_nodes": args.nodes,
        "overhead_phases": [
            {"name": n, "concurrency": c, "upstream_ttft_ms": t, "upstream_itl_ms": i}
            for n, c, t, i in OVERHEAD_PHASES
        ],
        "tokens_per_stream": 16,
        "warmup_s": args.warmup,
        "c1_window_s": args.c1_window,
        "c1_paced_window_s": args.c1_paced_window,
        "c16_window_s": args.c16_window,
        "level_window_s": args.level_window,
        "levels": args.levels,
        "throughput_pacings_ms": {p: THROUGHPUT_PACINGS[p] for p in args.pacings},
        "fleet": {
            "nodes": "2 x H100, 2 x A100, 2 x L4 simulators (agent/sim profiles), one zone",
            "max_num_seqs": args.fleet_max_seqs,
            "time_scale": args.fleet_time_scale,
            "load": args.load,
            "runs": args.fleet_runs,
            "warmup_s": args.fleet_warmup,
            "window_s": args.fleet_window,
            "drain_s": args.fleet_drain,
            "strategies": args.strategies,
            "peer_policies": args.policies,
            "reference_strategies": args.reference if args.peers else [],
            "seed": args.seed,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
