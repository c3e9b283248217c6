"""The measurements of bench/router.py, each against one router under test (ours or a peer):

- `overhead`: the same closed loop straight to the runtimes and through the router; added
  TTFT and end to end = router - direct. Three phases: concurrency 1 with an upstream that
  answers at once (`c1`: the router never idles, its code runs hot), concurrency 1 paced like
  an LLM (`c1_paced`: TTFT 20 ms, a token every 5 ms, so the router idles between events and
  runs its path from cold caches, as it would in front of a real runtime at low load) and
  concurrency 16 paced the same way (`c16`);
- `throughput`: closed-loop levels of rising concurrency until throughput stops growing, with
  the upstream answering at once (`burst`: every SSE event its own write, back to back) and
  paced (TTFT and inter-token 1 ms: each token a separate read and write in the router);
- `fleet`: an open-loop window at 80 % of the heterogeneous fleet's capacity per case (a
  strategy of ours, or a peer with one of its policies) and fleet run; see router_fleet.py.

The router's CPU comes from /proc/PID/stat (utime + stime, every thread) over each window.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from harness import Sample, processes_sampler, wait_until_idle  # bench/ is on sys.path
from router_fleet import (
    Workload,
    at_load,
    capacity,
    wait_fleet_idle,
)
from router_load import Target, Window, closed_loop, post, ramp
from router_mesh import UPSTREAM_MODEL, Mesh, memory_kib

OVERHEAD_MAX_TOKENS = 16
# (name, concurrency, upstream TTFT ms, upstream inter-token ms)
OVERHEAD_PHASES = (("c1", 1, 0.0, 0.0), ("c1_paced", 1, 20.0, 5.0), ("c16", 16, 20.0, 5.0))
THROUGHPUT_PACINGS = {"burst": (0.0, 0.0), "paced": (1.0, 1.0)}
DISTURBED_PCT = 20.0  # other work on the machine above this (% of a core): measure again
QUIET_PCT = 25.0  # the machine's busy share (ours idling included) that counts as quiet
LOAD_CORE_BOUND_PCT = 90.0  # the load core this busy: the client side is the limit
PROMPT = "Say hello to the fleet and tell me about routing. " * 3


def overhead_body(model: str) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": OVERHEAD_MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def routed(name: str, port: int, model: str, token: str | None = None) -> Target:
    """Streams through one router: ours takes the endpoint's name and a token, a peer the
    runtimes' model name."""
    body = overhead_body(model)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return Target(name, [port], lambda p, _i: post("/v1/chat/completions", body, p, headers))


def direct(ports: list[int]) -> Target:
    body = overhead_body(UPSTREAM_MODEL)
    return Target("direct", ports, lambda p, _i: post("/v1/chat/completions", body, p))


@dataclass
class Subject:
    """The router under test: its name, PID (for CPU and memory) and load target."""

    name: str
    pid: int
    target: Target


def sampler(mesh: Mesh, subject_pid: int | None) -> Sample:
    """CPU of the router under test, of every process of ours (the agents summed) and of the
    machine; what is left is `other`: someone else's work."""
    pids = {k: v for k, v in mesh.pids().items() if k != "router" and v != subject_pid}
    if subject_pid is not None:
        pids["router"] = subject_pid
    base = processes_sampler(pids, own="client")

    def sample() -> dict[str, float]:
        out = base()
        out["agents"] = mesh.agents_cpu_s()
        return out

    return sample


async def measured(
    args: argparse.Namespace, what: str, measure: Callable[[], Awaitable[Window]]
) -> Window:
    """`measure()`, again (at most `args.retries` times, each after waiting for the machine to
    go quiet) while other work took more than DISTURBED_PCT of a core during the window: on a
    shared machine a neighbour's burst shows as router latency. The last window is kept; the
    `other` of every attempt goes with it."""
    others: list[float] = []
    while True:
        window = await measure()
        others.append(window.cpu.get("other", 0.0))
        if others[-1] <= DISTURBED_PCT or len(others) > args.retries:
            window.other_attempts = others
            return window
        print(f"  ({what}: other work took {others[-1]:.0f}% of a core; again when quiet)")
        wait_until_idle(args.retry_wait, busy_below=QUIET_PCT)


def router_cpu_ms_per_1000(window: Window) -> float | None:
    cpu = window.cpu_s.get("router")
    if cpu is None or not window.ok:
        return None
    return round(cpu / window.ok * 1e6, 1)


def describe(window: Window) -> dict[str, Any]:
    out = window.to_json()
    out["router_cpu_ms_per_1000"] = router_cpu_ms_per_1000(window)
    # Everything but the router runs on the load core: near 100 % it, not the router, is the
    # limit, and the router's figure is a lower bound.
    load_core = sum(v for k, v in window.cpu.items() if k not in ("router", "other"))
    out["load_core_percent"] = round(load_core, 1)
    return out


def _p(out: dict[str, Any], what: str, q: str) -> float:
    value = out[what].get(q)
    return math.nan if value is None else float(value)


def line(label: str, out: dict[str, Any]) -> str:
    cpu = " ".join(f"{k} {v:.0f}" for k, v in out["cpu_percent"].items())
    return (
        f"  {label:<28} {out['throughput_per_s']:8.1f}/s  TTFT p50 {_p(out, 'ttft_ms', 'p50'):7.3f}"
        f" p99 {_p(out, 'ttft_ms', 'p99'):8.3f}  e2e p50 {_p(out, 'e2e_ms', 'p50'):7.3f}"
        f" p99 {_p(out, 'e2e_ms', 'p99'):8.3f} ms  err {out['errors']}  cpu% {cpu}"
    )


async def overhead(
    args: argparse.Namespace, mesh: Mesh, subject: Subject, base: Target
) -> dict[str, Any]:
    sample = sampler(mesh, subject.pid)
    out: dict[str, Any] = {}
    for name, c, ttft_ms, itl_ms in OVERHEAD_PHASES:
        mesh.pacing(ttft_ms, itl_ms)
        duration = {"c1": args.c1_window, "c1_paced": args.c1_paced_window}.get(
            name, args.c16_window
        )
        direct_w = describe(
            await measured(args, f"{name} direct", _closed(base, c, duration, args.warmup, sample))
        )
        print(line(f"{name} direct", direct_w), flush=True)
        router_w = describe(
            await measured(
                args,
                f"{name} {subject.name}",
                _closed(subject.target, c, duration, args.warmup, sample),
            )
        )
        print(line(f"{name} {subject.name}", router_w), flush=True)
        mesh.check_alive()
        added = {
            f"{what}_{q}_ms": round(
                _p(router_w, f"{what}_ms", q) - _p(direct_w, f"{what}_ms", q), 3
            )
            for what in ("ttft", "e2e")
            for q in ("p50", "p99")
        }
        out[name] = {
            "concurrency": c,
            "upstream_pacing_ms": {"ttft": ttft_ms, "itl": itl_ms},
            "tokens": OVERHEAD_MAX_TOKENS,
            "direct": direct_w,
            "router": router_w,
            "added": added,
        }
    return out


def _closed(
    target: Target, c: int, duration: float, warmup: float, sample: Sample
) -> Callable[[], Awaitable[Window]]:
    return lambda: closed_loop(target, c, duration, warmup, sample)


def level(
    args: argparse.Namespace, target: Target, sample: Sample
) -> Callable[[int], Awaitable[Window]]:
    """One ramp level: a closed loop at concurrency c, measured again when disturbed."""

    async def run(c: int) -> Window:
        measure = _closed(target, c, args.level_window, args.warmup, sample)
        return await measured(args, f"c={c} {target.name}", measure)

    return run


async def throughput(
    args: argparse.Namespace, mesh: Mesh, subject: Subject, base: Target
) -> dict[str, Any]:
    sample = sampler(mesh, subject.pid)
    out: dict[str, Any] = {}
    for pacing in args.pacings:
        mesh.pacing(*THROUGHPUT_PACINGS[pacing])
        print(f"  {pacing}: upstream TTFT/ITL {THROUGHPUT_PACINGS[pacing]} ms", flush=True)
        levels = args.levels if pacing == "burst" else [c for c in args.levels if c >= 32]
        windows, reason = await ramp(
            levels,
            level(args, subject.target, sample),
            lambda w: print(line(f"c={w.concurrency} {subject.name}", describe(w)), flush=True),
        )
        mesh.check_alive()
        described = [describe(w) for w in windows]
        best = max(described, key=lambda d: d["throughput_per_s"])
        out[pacing] = {
            "levels": described,
            "stop_reason": reason,
            "max_per_s": best["throughput_per_s"],
            "at_concurrency": best["concurrency"],
            "router_cpu_percent_at_max": best["cpu_percent"].get("router"),
            "router_cpu_ms_per_1000_at_max": best["router_cpu_ms_per_1000"],
            "load_core_percent_at_max": best["load_core_percent"],
            "load_core_bound": best["load_core_percent"] >= LOAD_CORE_BOUND_PCT,
        }
    if args.direct_ceiling:  # what the client and upstream do without a router: the ceiling
        mesh.pacing(0.0, 0.0)
        windows, _ = await ramp(
            [64, 256],
            level(args, base, sample),
            lambda w: print(line(f"c={w.concurrency} direct", describe(w)), flush=True),
        )
        out["direct_burst_max_per_s"] = max(w.ok / w.duration_s for w in windows)
    return out


def memory(subject: Subject) -> dict[str, float]:
    mem = memory_kib(subject.pid)
    return {
        "rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
        "peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
    }


# -- the heterogeneous fleet ---------------------------------------------------------------------
@dataclass
class Case:
    """One routing setup on the fleet: `start` brings it up (a strategy applied, or a peer
    started) and returns what the load goes to; `stop` ends it."""

    name: str
    router: str  # "infermesh", "vllm-router", "smg"
    policy: str
    start: Callable[[], Awaitable[Subject]]
    stop: Callable[[], None]


async def fleet_capacity(
    args: argparse.Namespace, mesh: Mesh, workload: Workload
) -> dict[str, Any]:
    assert mesh.fleet is not None
    sample = sampler(mesh, None)
    cap = await capacity(
        mesh.fleet_runtimes,
        workload,
        args.fleet_max_seqs,
        args.fleet_cap_warmup,
        args.fleet_cap_window,
        sample,
    )
    print(
        f"  capacity {cap['requests_per_s']:.1f} req/s (per node "
        + ", ".join(f"{k} {v:.1f}" for k, v in cap["per_node_requests_per_s"].items())
        + f")  cpu% {cap['cpu_percent']}",
        flush=True,
    )
    return cap


async def fleet_case(
    args: argparse.Namespace, mesh: Mesh, case: Case, rate: float
) -> dict[str, Any]:
    settle = wait_fleet_idle(mesh.fleet_runtimes)
    subject = await case.start()
    try:
        assert mesh.fleet is not None
        sample = sampler(mesh, subject.pid)
        spread: dict[str, Any] = {}

        async def once() -> Window:
            nonlocal spread
            wait_fleet_idle(mesh.fleet_runtimes)  # a retry starts from an idle fleet too
            window, spread = await at_load(
                subject.target,
                mesh.fleet_runtimes,
                rate,
                args.fleet_warmup,
                args.fleet_window,
                args.fleet_drain,
                sample,
                seed=args.seed,
            )
            return window

        window = await measured(args, case.name, once)
        mesh.check_alive()
        out = describe(window) | spread
        out |= {"case": case.name, "router": case.router, "policy": case.policy}
        out["idle_wait_s"] = round(settle, 1)
        out["memory"] = memory(subject)
    finally:
        case.stop()
    ttft = out["ttft_ms"]
    share = " ".join(f"{k} {v:.0f}" for k, v in out["share_by_node_pct"].items())
    print(
        f"  {case.name:<30} {out['throughput_per_s']:6.1f}/s of {rate:.1f}  TTFT p50"
        f" {ttft.get('p50', math.nan):8.1f} p99 {ttft.get('p99', math.nan):8.1f} ms"
        f"  unfinished {out['unfinished']}  err {out['errors']}  share% {share}"
        f"  cache hit {out['prefix_cache_hit_pct']}%",
        flush=True,
    )
    return out
