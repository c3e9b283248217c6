"""SLI series (`GET /v1/metrics/series`) as frames: one row per point, the dimension it was
grouped by as a column, and per-series totals for side-by-side tables."""

from __future__ import annotations

from typing import Any

import pandas as pd

Obj = dict[str, Any]

METRICS: tuple[tuple[str, str], ...] = (
    ("rps", "Requests/s"),
    ("error_rate", "Error ratio"),
    ("latency_p50_ms", "Latency p50 (ms)"),
    ("latency_p95_ms", "Latency p95 (ms)"),
    ("latency_p99_ms", "Latency p99 (ms)"),
    ("ttft_p95_ms", "TTFT p95 (ms)"),
)
_POINT_COLUMNS = ["t", "requests", "errors", *(m for m, _ in METRICS)]


def frame(answer: Obj | None, by: str | None = None) -> pd.DataFrame:
    """Every point of every series; with `by`, a column of that dimension's value."""
    rows = []
    for series in (answer or {}).get("series") or []:
        key = str(series.get(by) or "") if by else ""
        for point in series.get("points") or []:
            row = {c: point.get(c) for c in _POINT_COLUMNS}
            if by:
                row[by] = key
            rows.append(row)
    columns = [*_POINT_COLUMNS, *([by] if by else [])]
    out = pd.DataFrame(rows, columns=columns)
    for c in _POINT_COLUMNS[1:]:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    out["time"] = pd.to_datetime(out["t"], unit="s", utc=True)
    return out


def totals(answer: Obj | None, by: str, order: list[str] | None = None) -> pd.DataFrame:
    """One row per series with its totals over the range (requests, error ratio, latency and
    TTFT percentiles); `order` puts those keys first, in that order."""
    rows = []
    for series in (answer or {}).get("series") or []:
        total = series.get("total") or {}
        rows.append(
            {
                by: str(series.get(by) or ""),
                "Requests": total.get("requests"),
                "Avg req/s": total.get("rps"),
                "Errors": total.get("errors"),
                "Error ratio %": _pct(total.get("error_rate")),
                "p50 ms": total.get("latency_p50_ms"),
                "p95 ms": total.get("latency_p95_ms"),
                "p99 ms": total.get("latency_p99_ms"),
                "TTFT p95 ms": total.get("ttft_p95_ms"),
            }
        )
    columns = [by, "Requests", "Avg req/s", "Errors", "Error ratio %", "p50 ms", "p95 ms", "p99 ms"]
    out = pd.DataFrame(rows, columns=[*columns, "TTFT p95 ms"])
    if order:
        rank = {k: i for i, k in enumerate(order)}
        out = out.sort_values(by, key=lambda s: s.map(lambda k: rank.get(k, len(rank))))
    return out.reset_index(drop=True)


def _pct(value: Any) -> float | None:
    return None if value is None else round(float(value) * 100, 3)
