"""SLOs: objective, SLI, error budget left, the burn rates of the four alert windows and the
alerts firing; cells from infermesh/cli/slo_format.py (the same as `mesh get slos`)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from infermesh.cli import printers, slo_format
from infermesh.console.views.base import (
    CRIT,
    DIM,
    NAME,
    NONE,
    OK,
    WARN,
    Cell,
    Column,
    Ctx,
    Obj,
    Render,
    ViewSpec,
    dig,
    plain,
)

ALERT_WINDOWS = ("1h", "6h", "1d", "3d")  # the long windows of the four burn-rate alert rules
PHASE_STYLE = {"OK": OK, "Warning": WARN, "Breaching": CRIT}


def _budget(obj: Obj, ctx: Ctx) -> Cell:
    left = dig(obj, "status.budgetRemaining")
    text = slo_format.budget_left(obj)
    if left is None or text is None:
        return Cell(NONE, DIM)
    style = CRIT if left <= 0 else WARN if left < 0.25 else OK
    return Cell(text, style, float(left))


def factor(obj: Obj, window: str) -> float | None:
    """The burn rate at which the alert rule of this long window fires, from the SLO's own
    alert table (the evaluator writes each rule with its factor)."""
    for alert in dig(obj, "status.alerts") or []:
        if alert.get("longWindow") == window and alert.get("factor") is not None:
            return float(alert["factor"])
    return None


def _burn(window: str) -> Render:
    def cell(obj: Obj, ctx: Ctx) -> Cell:
        text = slo_format.burn(obj, window)
        if text is None:
            return Cell(NONE, DIM)
        value = float((slo_format.window_row(obj, window) or {}).get("burn") or 0)
        limit = factor(obj, window)
        style = CRIT if limit is not None and value >= limit else WARN if value >= 1 else ""
        return Cell(text, style, value)

    return cell


def _alerts(obj: Obj, ctx: Ctx) -> Cell:
    firing = slo_format.firing(obj)
    if not firing:
        return Cell(NONE, DIM, 0)
    page = any(a.get("severity") == "page" for a in firing)
    return Cell(slo_format.alerts(obj) or NONE, CRIT if page else WARN, len(firing))


def _phase(obj: Obj, ctx: Ctx) -> Cell:
    phase = str(dig(obj, "status.phase") or NONE)
    return Cell(phase, PHASE_STYLE.get(phase, DIM))


def _cell(fn: Any) -> Render:
    return lambda obj, ctx: plain(fn(obj))


COLUMNS = (
    NAME,
    Column("target", "TARGET", _cell(slo_format.target), "T"),
    Column("sli", "SLI", _cell(slo_format.sli)),
    Column("objective", "OBJECTIVE", _cell(slo_format.objective), "O"),
    Column("budget", "BUDGET", _budget, "B"),
    Column("status", "STATUS", _phase, "S"),
    *(
        Column(f"burn{w}", f"BURN-{w.upper()}", _burn(w), "X" if w == "1h" else None)
        for w in ALERT_WINDOWS
    ),
    Column("alerts", "ALERTS", _alerts, "L"),
)


def _table(rows: list[list[Any]]) -> Table:
    table = Table(*[str(h) for h in rows[0]], box=None, padding=(0, 2))
    for r in rows[1:]:
        table.add_row(*(printers.text(c) for c in r))
    return table


def describe(obj: Obj, ctx: Ctx) -> RenderableType:
    """`mesh describe slo`'s sections: the summary, the burn table, the alert rules, the
    percentiles."""
    parts: list[RenderableType] = [
        Text(f"{key + ':':<13}{printers.text(value)}") for key, value in slo_format.summary(obj)
    ]
    for rows in (
        slo_format.burn_rows(obj),
        slo_format.alert_rows(obj),
        slo_format.percentile_rows(obj),
    ):
        if rows:
            parts.append(_table(rows))
    return Group(*parts)


VIEW = ViewSpec(
    name="slo",
    title="SLOs",
    kind="slos",
    aliases=("slos",),
    columns=COLUMNS,
    describe=describe,
    event_kind="SLO",
)
