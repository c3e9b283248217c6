"""Tables and medians of bench/fleet.py."""

from __future__ import annotations

import math
import statistics
from typing import Any


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
        + " ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        + f"  ({r['shards']} shard(s): "
        + "/".join(f"{v:.0f}" for v in r["shard_cpu_percent"])
        + " %)",
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
        row: dict[str, Any] = {"n": n, "mode": mode, "runs": len(rs), "shards": rs[0]["shards"]}
        row["started"] = statistics.median(r["started"] for r in rs)
        for f in WRITE_FIGURES:
            row[f] = round(statistics.median(r[f] for r in rs), 3)
        row["etcd_writes_per_s_runs"] = [r["etcd_writes_per_s"] for r in rs]
        row["shard_cpu_max"] = statistics.median(max(r["shard_cpu_percent"]) for r in rs)
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
        print("\netcd writes by N agents (median of each figure over its runs)")
        print(
            f"{'N':>6} {'load':<7}{'runs':>5}{'shards':>7}{'kept up':>8}{'started':>8}"
            f"{'etcd w/s':>10}"
            f"{'agents w/s':>11}"
            f"{'/agent/s':>9}{'scrapes/s':>10}{'put p99':>10}{'lag p99':>9}{'KiB/agent':>10}"
            f"{'ms/agent/s':>11}  cpu% agents/etcd/api/runtimes/other, busiest shard"
        )
        for r in rows:
            print(
                f"{r['n']:>6} {r['mode']:<7}{r['runs']:>5}{r['shards']:>7}"
                f"{r['keeping_up_runs']:>6}/{r['runs']}{r['started']:>8.0f}"
                f"{r['etcd_writes_per_s']:>10.1f}{r['agent_writes_per_s']:>11.1f}"
                f"{r['writes_per_agent_per_s']:>9.3f}{r['scrapes_per_s']:>10.0f}"
                f"{r['put_p99_ms']:>8.1f}ms{r['loop_lag_p99_ms']:>7.0f}ms"
                f"{r['rss_per_agent_kib']:>10.0f}{r['cpu_ms_per_agent_s']:>11.2f}  "
                + "/".join(
                    f"{r[f'cpu_{p}']:.0f}" for p in ("agents", "etcd", "api", "runtimes", "other")
                )
                + f", {r['shard_cpu_max']:.0f}"
            )
        print(
            "kept up: runs in which every agent started, scraped on time (95 %), kept the lease\n"
            "and had no failed write; where not, an agents' process was swamped, and the etcd\n"
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
