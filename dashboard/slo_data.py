"""SLOs as the dashboard shows them: the overview table, a detail page's tiles, its burn-rate
table and the series behind its charts. Pure functions of what `GET /v1/slos...` answers (shapes
in docs/slo.md); the table cells reuse infermesh/cli/slo_format.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from infermesh.cli import slo_format
from infermesh.cli.printers import dig
from infermesh.humanize import format_duration
from infermesh.sli import parse_duration

Obj = dict[str, Any]

# Budget remaining, in buckets a person reads at a glance (lower bound, label, colour).
BUCKETS: tuple[tuple[float, str, str], ...] = (
    (0.5, "healthy", "#2e9e5b"),
    (0.2, "watch", "#e0b000"),
    (1e-9, "low", "#f07c1b"),
    (float("-inf"), "exhausted", "#d62728"),
)
NO_DATA = ("no data", "#9e9e9e")
PHASE_ORDER = {"Breaching": 0, "Warning": 1, "Pending": 2, "Unknown": 3, "OK": 4}
PHASE_COLOURS = {"Breaching": "#d62728", "Warning": "#f07c1b", "OK": "#2e9e5b", "firing": "#d62728"}


def budget_bucket(remaining: float | None) -> tuple[str, str]:
    """(label, colour) of a budget remaining (a share: 1 untouched, 0 spent, < 0 overspent)."""
    if remaining is None:
        return NO_DATA
    for lower, label, colour in BUCKETS:
        if remaining >= lower:
            return label, colour
    return BUCKETS[-1][1:]


def name_of(slo: Obj) -> str:
    return str(dig(slo, "metadata.name") or "")


def window_ratio(slo: Obj) -> float | None:
    """The SLI over the SLO's own window (good / valid), None without valid events."""
    row = slo_format.window_row(slo, str(dig(slo, "spec.window") or "30d"))
    return None if row is None or row.get("ratio") is None else float(row["ratio"])


def burn_1h(slo: Obj) -> float | None:
    row = slo_format.window_row(slo, "1h")
    return None if row is None or row.get("burn") is None else float(row["burn"])


def overview(slos: list[Obj]) -> pd.DataFrame:
    """One row per SLO, the most urgent first (phase, then least budget left)."""
    rows = []
    for slo in slos:
        status = slo.get("status") or {}
        remaining = status.get("budgetRemaining")
        label, _ = budget_bucket(remaining)
        ratio = window_ratio(slo)
        phase = str(status.get("phase") or "Pending")
        rows.append(
            {
                "SLO": name_of(slo),
                "Target": slo_format.target(slo),
                "SLI": slo_format.sli(slo),
                "Objective %": dig(slo, "spec.objective"),
                "Current %": None if ratio is None else round(ratio * 100, 3),
                "Budget left %": None if remaining is None else round(float(remaining) * 100, 1),
                "Budget": label,
                "Burn 1h": burn_1h(slo),
                "Alerts": slo_format.alerts(slo) or "",
                "Phase": phase,
                "Window": dig(slo, "spec.window"),
                "Exhaustion": slo_format.exhaustion(slo),
                "_order": (PHASE_ORDER.get(phase, 5), remaining if remaining is not None else 9),
            }
        )
    columns = [
        "SLO",
        "Target",
        "SLI",
        "Objective %",
        "Current %",
        "Budget left %",
        "Budget",
        "Burn 1h",
        "Phase",
        "Alerts",
        "Exhaustion",
        "Window",
    ]
    if not rows:
        return pd.DataFrame(columns=columns)
    rows.sort(key=lambda r: (r["_order"], r["SLO"]))
    return pd.DataFrame(rows, columns=columns)


def phase_counts(slos: list[Obj]) -> dict[str, int]:
    counts = {"Breaching": 0, "Warning": 0, "OK": 0, "Pending": 0}
    for slo in slos:
        phase = str(dig(slo, "status.phase") or "Pending")
        counts[phase] = counts.get(phase, 0) + 1
    return counts


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    help: str = ""


def tiles(slo: Obj) -> list[Tile]:
    """The numbers at the top of an SLO's page: objective, SLI, budget, burn, exhaustion."""
    status = slo.get("status") or {}
    window = str(dig(slo, "spec.window") or "30d")
    ratio = window_ratio(slo)
    remaining = status.get("budgetRemaining")
    burn = burn_1h(slo)
    sli = dig(slo, "spec.sli")
    sli_label = "Availability" if sli == "availability" else f"SLI ({sli})"
    return [
        Tile("Objective", slo_format.objective(slo) or "–", f"over {window}"),
        Tile(
            sli_label,
            "–" if ratio is None else f"{ratio * 100:.3f}%",
            f"good / valid events over {window}",
        ),
        Tile(
            "Error budget left",
            "–" if remaining is None else f"{float(remaining) * 100:.1f}%",
            f"{budget_bucket(remaining)[0]}; budget is "
            + (slo_format.percent(status.get("errorBudget"), 3) or "–")
            + " of valid events",
        ),
        Tile("Burn rate 1h", "–" if burn is None else f"{burn:.2f}x", "1x spends the budget"),
        Tile(
            "Exhaustion",
            slo_format.exhaustion(slo) or "–",
            "when the budget runs out at the last hour's burn",
        ),
    ]


def training_tiles(slo: Obj) -> list[Tile]:
    """A training SLO's figures (docs/slo.md): the job's latest step time or throughput
    against the threshold; no budget."""
    current = dig(slo, "status.current") or {}
    out = [Tile("Objective", slo_format.sli(slo) or "–", "the job's latest figure must meet it")]
    if current.get("stepTimeP95Ms") is not None:
        out.append(Tile("Step time p95", f"{float(current['stepTimeP95Ms']):g} ms"))
    if current.get("throughputTps") is not None:
        out.append(Tile("Throughput", f"{float(current['throughputTps']):g} tok/s"))
    out.append(Tile("Job phase", str(current.get("jobPhase") or "–")))
    return out


def burn_rules(slo: Obj) -> pd.DataFrame:
    """The multi-window burn-rate table (Pyrra's): per alert rule its severity, how soon its
    factor would spend the whole budget, its threshold, the burn over its short and long
    windows, and whether it fires."""
    status = slo.get("status") or {}
    window_s = parse_duration(str(dig(slo, "spec.window") or "30d"))
    budget = status.get("errorBudget")
    rows = []
    for rule in status.get("alerts") or []:
        factor = float(rule.get("factor") or 0)
        short, long = rule.get("shortWindow"), rule.get("longWindow")
        short_row = slo_format.window_row(slo, str(short)) or {}
        long_row = slo_format.window_row(slo, str(long)) or {}
        threshold = f"{factor:g}x"
        if budget is not None:
            threshold += f" ({factor * float(budget) * 100:.3g}% bad)"
        firing = bool(rule.get("firing"))
        rows.append(
            {
                "Severity": rule.get("severity"),
                "Rule": rule.get("rule"),
                "Exhaustion": format_duration(window_s / factor) if factor else "–",
                "Threshold": threshold,
                "Short window": short,
                "Short burn": _burn(short_row),
                "Long window": long,
                "Long burn": _burn(long_row),
                "State": "firing" if firing else "ok",
                "Since": rule.get("since"),
            }
        )
    columns = [
        "Severity",
        "Rule",
        "Exhaustion",
        "Threshold",
        "Short window",
        "Short burn",
        "Long window",
        "Long burn",
        "State",
        "Since",
    ]
    return pd.DataFrame(rows, columns=columns)


def _burn(row: Obj) -> float | None:
    burn = row.get("burn")
    return None if burn is None else round(float(burn), 2)


def rows_frame(rows: list[list[Any]]) -> pd.DataFrame:
    """slo_format's header-first rows (burn_rows, percentile_rows) as a DataFrame."""
    if not rows:
        return pd.DataFrame()
    header = [str(h).replace("-", " ").title().replace("Ms", "ms") for h in rows[0]]
    return pd.DataFrame(rows[1:], columns=header)


# --- series --------------------------------------------------------------------------------


def points_frame(answer: Obj | None) -> pd.DataFrame:
    """`GET /v1/slos/{name}/series` points as a frame: time, good, total, ratio, burn."""
    points = (answer or {}).get("points") or []
    frame = pd.DataFrame(points, columns=["t", "good", "total", "ratio", "burn"])
    frame["time"] = pd.to_datetime(frame["t"], unit="s", utc=True)
    return frame


def burndown(points: pd.DataFrame, error_budget: float | None) -> pd.DataFrame:
    """How the window's error budget was spent: at each point, the share left of the budget
    of every valid event in the span (1 at its start; the last point is the budget remaining
    over the whole span, as the SLO's status reads it)."""
    if points.empty or not error_budget:
        return pd.DataFrame(columns=["time", "remaining"])
    total = float(points["total"].sum())
    if total <= 0:
        return pd.DataFrame(columns=["time", "remaining"])
    bad = (points["total"] - points["good"]).clip(lower=0).cumsum()
    return pd.DataFrame(
        {"time": points["time"], "remaining": 1 - bad / (float(error_budget) * total)}
    )


def breaches(points: pd.DataFrame, step: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Spans where the SLO was breached: consecutive points burning faster than 1x (more bad
    events than the objective allows)."""
    if points.empty:
        return []
    spans: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    start: int | None = None
    last: int | None = None
    for t, burn in zip(points["t"].tolist(), points["burn"].tolist(), strict=True):
        hot = burn is not None and burn == burn and float(burn) > 1.0
        if hot and start is not None and last is not None and t - last <= step:
            last = t
            continue
        if start is not None and last is not None:
            spans.append(_span(start, last + step))
            start = last = None
        if hot:
            start = last = int(t)
    if start is not None and last is not None:
        spans.append(_span(start, last + step))
    return spans


def _span(start: int, end: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    return pd.Timestamp(start, unit="s", tz="UTC"), pd.Timestamp(end, unit="s", tz="UTC")


def series_filters(slo: Obj) -> dict[str, str] | None:
    """The `/v1/metrics/series` filters of an SLO's traffic; None for training SLOs."""
    target = dig(slo, "spec.target") or {}
    if target.get("kind") != "Endpoint":
        return None
    out = {"endpoint": str(target.get("name"))}
    if dig(slo, "spec.domain"):
        out["domain"] = str(dig(slo, "spec.domain"))
    return out


def thresholds(slo: Obj) -> dict[str, float]:
    """The line each chart draws for this SLO: `latency`/`ttft` in ms, `error_rate` (the error
    budget, for availability), `ratio` (the objective as a share)."""
    spec = slo.get("spec") or {}
    out: dict[str, float] = {}
    objective = spec.get("objective")
    if objective is not None:
        out["ratio"] = float(objective) / 100
        if spec.get("sli") == "availability":
            out["error_rate"] = 1 - float(objective) / 100
    if spec.get("thresholdMs") is not None and spec.get("sli") in ("latency", "ttft"):
        out[str(spec["sli"])] = float(spec["thresholdMs"])
    return out
