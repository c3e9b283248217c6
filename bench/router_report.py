"""bench/router.py's summary: medians over runs, the issue's targets and their verdicts, and the
printed tables. The peers' figures come from router_peers.json, decide() from router_decide.json
(bench/router_decide.py), when those files exist."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from typing import Any

from harness import ROOT  # bench/ is on sys.path

RESULTS = ROOT / "bench" / "results"
TARGET_ADDED_TTFT_MS = 1.0
TARGET_STREAMS_PER_S = 1500.0
TARGET_DECIDE_US = 50.0
HYBRID = "hybrid_mesh@1.0"


def _median(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None and not math.isnan(v)]
    return round(statistics.median(found), 3) if found else None


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def run_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of each run, and their medians over runs."""
    out: dict[str, Any] = {}
    figures = {
        "c1_added_ttft_p50_ms": ("overhead", "c1", "added", "ttft_p50_ms"),
        "c1_added_ttft_p99_ms": ("overhead", "c1", "added", "ttft_p99_ms"),
        "c1_added_e2e_p50_ms": ("overhead", "c1", "added", "e2e_p50_ms"),
        "c1_added_e2e_p99_ms": ("overhead", "c1", "added", "e2e_p99_ms"),
        "c1_direct_ttft_p50_ms": ("overhead", "c1", "direct", "ttft_ms", "p50"),
        "c1_router_ttft_p50_ms": ("overhead", "c1", "router", "ttft_ms", "p50"),
        "c1_router_cpu_ms_per_1000": ("overhead", "c1", "router", "router_cpu_ms_per_1000"),
        "c1_paced_added_ttft_p50_ms": ("overhead", "c1_paced", "added", "ttft_p50_ms"),
        "c1_paced_added_ttft_p99_ms": ("overhead", "c1_paced", "added", "ttft_p99_ms"),
        "c1_paced_added_e2e_p50_ms": ("overhead", "c1_paced", "added", "e2e_p50_ms"),
        "c1_paced_added_e2e_p99_ms": ("overhead", "c1_paced", "added", "e2e_p99_ms"),
        "c1_paced_direct_ttft_p50_ms": ("overhead", "c1_paced", "direct", "ttft_ms", "p50"),
        "c1_paced_router_ttft_p50_ms": ("overhead", "c1_paced", "router", "ttft_ms", "p50"),
        "c16_added_ttft_p50_ms": ("overhead", "c16", "added", "ttft_p50_ms"),
        "c16_added_ttft_p99_ms": ("overhead", "c16", "added", "ttft_p99_ms"),
        "c16_added_e2e_p50_ms": ("overhead", "c16", "added", "e2e_p50_ms"),
        "c16_added_e2e_p99_ms": ("overhead", "c16", "added", "e2e_p99_ms"),
        "c16_direct_ttft_p50_ms": ("overhead", "c16", "direct", "ttft_ms", "p50"),
        "c16_router_ttft_p50_ms": ("overhead", "c16", "router", "ttft_ms", "p50"),
        "c16_router_per_s": ("overhead", "c16", "router", "throughput_per_s"),
        "c16_router_cpu_ms_per_1000": ("overhead", "c16", "router", "router_cpu_ms_per_1000"),
        "c16_router_cpu_percent": ("overhead", "c16", "router", "cpu_percent", "router"),
        "burst_max_per_s": ("throughput", "burst", "max_per_s"),
        "burst_at_concurrency": ("throughput", "burst", "at_concurrency"),
        "burst_cpu_ms_per_1000": ("throughput", "burst", "router_cpu_ms_per_1000_at_max"),
        "burst_router_cpu_percent": ("throughput", "burst", "router_cpu_percent_at_max"),
        "paced_max_per_s": ("throughput", "paced", "max_per_s"),
        "paced_cpu_ms_per_1000": ("throughput", "paced", "router_cpu_ms_per_1000_at_max"),
        "direct_burst_max_per_s": ("throughput", "direct_burst_max_per_s"),
    }
    for name, path in figures.items():
        values = [_get(run, *path) for run in runs]
        if any(v is not None for v in values):
            out[name] = {"median": _median(values), "runs": values}
    return out


def fleet_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per case: medians over its runs (each run's figures alongside)."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for case in _get(report, "fleet", "cases") or []:
        by_case.setdefault(case["case"], []).append(case)
    rows = []
    for name, runs in by_case.items():
        first = runs[0]
        p99s = [r["ttft_ms"].get("p99") for r in runs]
        nodes = first["share_by_node_pct"]
        rows.append(
            {
                "case": name,
                "router": first["router"],
                "policy": first["policy"],
                "runs": len(runs),
                "ttft_p50_ms": _median([r["ttft_ms"].get("p50") for r in runs]),
                "ttft_p99_ms": _median(p99s),
                "ttft_p99_ms_runs": p99s,
                "e2e_p99_ms": _median([r["e2e_ms"].get("p99") for r in runs]),
                "served_per_s": _median([r["throughput_per_s"] for r in runs]),
                "unfinished": _median([r["unfinished"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                "share_by_node_pct": {
                    n: _median([r["share_by_node_pct"].get(n) for r in runs]) for n in nodes
                },
                "prefix_cache_hit_pct": _median([r["prefix_cache_hit_pct"] for r in runs]),
                "router_cpu_percent": _median([r["cpu_percent"].get("router") for r in runs]),
            }
        )
    return rows


def _load(name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((RESULTS / name).read_text())
        return data
    except (OSError, ValueError):
        return None


def decide_p99_us() -> float | None:
    data = _load("router_decide.json")
    for row in (data or {}).get("median", []):
        if row.get("strategy") == HYBRID and row.get("candidates") == 1000 and not row["explain"]:
            return float(row["p99_us"])
    return None


def verdicts(ours: dict[str, Any] | None, peers: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's four targets against the latest figures we have."""
    out: list[dict[str, Any]] = []

    def verdict(name: str, value: float | None, ok: bool | None, note: str) -> None:
        state = "no figure" if value is None or ok is None else ("pass" if ok else "FAIL")
        out.append({"target": name, "value": value, "verdict": state, "note": note})

    s = (ours or {}).get("summary", {}).get("runs_median", {})
    hot = _get(s, "c1_added_ttft_p50_ms", "median")
    added = _get(s, "c1_paced_added_ttft_p50_ms", "median")
    verdict(
        "added p50 TTFT <= 1 ms at c=1",
        added,
        None if added is None else added <= TARGET_ADDED_TTFT_MS,
        "router TTFT p50 minus direct TTFT p50, median over runs, upstream paced like an LLM "
        f"(TTFT 20 ms); with an upstream that answers at once: {hot} ms",
    )
    streams = _get(s, "burst_max_per_s", "median")
    verdict(
        ">= 1,500 streamed requests/s on one core",
        streams,
        None if streams is None else streams >= TARGET_STREAMS_PER_S,
        "burst ramp"
        + (
            f"; with paced tokens: {paced}/s"
            if (paced := _get(s, "paced_max_per_s", "median"))
            else ""
        ),
    )
    ours_p99, peer_rows = hybrid_vs_peers(ours, peers)
    best = min((r["ttft_p99_ms"] for r in peer_rows), default=None)
    verdict(
        "hybrid_mesh p99 TTFT better than every peer policy (heterogeneous fleet, 80 %)",
        ours_p99,
        None if ours_p99 is None or best is None else ours_p99 < best,
        f"best peer policy's p99 {best} ms" if best is not None else "run `make bench-peers`",
    )
    decide = decide_p99_us()
    verdict(
        "decide() p99 <= 50 us with 1,000 candidates",
        decide,
        None if decide is None else decide <= TARGET_DECIDE_US,
        "from bench/results/router_decide.json (bench/router_decide.py)",
    )
    return out


def hybrid_vs_peers(
    ours: dict[str, Any] | None, peers: dict[str, Any] | None
) -> tuple[float | None, list[dict[str, Any]]]:
    """hybrid_mesh's p99 (measured in the peers' session when it was, else in ours) and the
    peers' rows."""
    peer_rows = [
        r for r in (_get(peers or {}, "summary", "fleet") or []) if r["router"] != "infermesh"
    ]
    same_session = [r for r in (_get(peers or {}, "summary", "fleet") or []) if r["case"] == HYBRID]
    rows = same_session or [
        r for r in (_get(ours or {}, "summary", "fleet") or []) if r["case"] == HYBRID
    ]
    return (rows[0]["ttft_p99_ms"] if rows else None), peer_rows


def summarize(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if args.peers:
        summary["by_peer"] = {
            name: {"runs_median": run_medians(sub["runs"]), "memory": sub.get("memory")}
            for name, sub in report.get("by_peer", {}).items()
        }
    else:
        summary["runs_median"] = run_medians(report["runs"])
        summary["memory"] = report.get("memory")
    summary["fleet"] = fleet_table(report)
    if fleet := report.get("fleet"):
        summary["fleet_capacity_per_s"] = fleet["capacity"]["requests_per_s"]
        summary["fleet_rate_per_s"] = round(fleet["rate_per_s"], 1)
    mine = {"summary": summary}
    if args.peers:
        summary["targets"] = verdicts(_load("router.json"), mine)
    else:
        summary["targets"] = verdicts(mine, _load("router_peers.json"))
    return summary


# -- printing -----------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _print_medians(title: str, med: dict[str, Any], memory: dict[str, Any] | None) -> None:
    print(f"\n{title} (median over runs; every run in the JSON)")
    rows = [
        ("c=1   added TTFT p50 / p99 (ms)", "c1_added_ttft_p50_ms", "c1_added_ttft_p99_ms"),
        ("c=1   added e2e p50 / p99 (ms)", "c1_added_e2e_p50_ms", "c1_added_e2e_p99_ms"),
        (
            "c=1 paced added TTFT p50 / p99",
            "c1_paced_added_ttft_p50_ms",
            "c1_paced_added_ttft_p99_ms",
        ),
        ("c=1 paced added e2e p50 / p99", "c1_paced_added_e2e_p50_ms", "c1_paced_added_e2e_p99_ms"),
        ("c=16  added TTFT p50 / p99 (ms)", "c16_added_ttft_p50_ms", "c16_added_ttft_p99_ms"),
        ("c=16  added e2e p50 / p99 (ms)", "c16_added_e2e_p50_ms", "c16_added_e2e_p99_ms"),
        ("max streams/s burst / paced", "burst_max_per_s", "paced_max_per_s"),
        (
            "CPU-ms per 1,000 req: c=16 / at max",
            "c16_router_cpu_ms_per_1000",
            "burst_cpu_ms_per_1000",
        ),
        ("client+upstream ceiling (streams/s)", "direct_burst_max_per_s", None),
    ]
    for label, a, b in rows:
        left = _fmt(_get(med, a, "median"), 3)
        right = _fmt(_get(med, b, "median"), 3) if b else ""
        print(f"  {label:<40} {left:>10} {('/ ' + right) if b else ''}")
    if memory:
        label = "router RSS now / peak (MiB)"
        print(f"  {label:<40} {memory['rss_mib']:>10} / {memory['peak_rss_mib']}")


def print_report(out: dict[str, Any]) -> None:
    summary = out["summary"]
    if summary.get("runs_median"):
        _print_medians("infermesh router", summary["runs_median"], summary.get("memory"))
    for name, sub in summary.get("by_peer", {}).items():
        _print_medians(f"{name} (round_robin)", sub["runs_median"], sub.get("memory"))
    if summary.get("fleet"):
        print(
            f"\nheterogeneous fleet: capacity {summary['fleet_capacity_per_s']} req/s, "
            f"offered {summary['fleet_rate_per_s']} req/s"
        )
        head = f"{'TTFT p50':>9} {'p99':>9} {'served/s':>9} {'unfin.':>6}"
        print(f"  {'case':<30} {head}  share % by node")
        for row in summary["fleet"]:
            share = " ".join(f"{v:.0f}" for v in row["share_by_node_pct"].values())
            p50, p99 = _fmt(row["ttft_p50_ms"], 1), _fmt(row["ttft_p99_ms"], 1)
            served, left = _fmt(row["served_per_s"], 1), _fmt(row["unfinished"], 0)
            print(f"  {row['case']:<30} {p50:>9} {p99:>9} {served:>9} {left:>6}  {share}")
    print("\ntargets")
    for t in summary["targets"]:
        print(f"  {t['verdict']:<9} {t['target']}: {_fmt(t['value'], 3)}  ({t['note']})")


def main() -> int:
    """`python bench/router_report.py`: the targets again from the stored router.json and
    router_peers.json (whichever ran last saw the other's older figures), written back into
    both, and the tables printed."""
    ours, peers = _load("router.json"), _load("router_peers.json")
    targets = verdicts(ours, peers)
    for name, data in (("router.json", ours), ("router_peers.json", peers)):
        if data is None:
            continue
        data["summary"]["targets"] = targets
        (RESULTS / name).write_text(json.dumps(data, indent=2) + "\n")
        print(f"== {name} ({data['command']}, {data['date']})")
        print_report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
