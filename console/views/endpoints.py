"""Endpoints: revisions and weights, domains, SLO state, latency and traffic, canary rollout and
degradation; enter drills to the replicas (views/replicas.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from infermesh.cli import slo_format
from infermesh.cli.printers import rollout_summary
from infermesh.console.views.base import (
    AGE,
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
    ViewSpec,
    dig,
    key_of,
    level,
    number,
    plain,
)

# SLO phases, best first; an endpoint shows its worst SLO's.
PHASES = {"OK": 0, "Pending": 1, "Unknown": 1, "Warning": 2, "Breaching": 3}
PHASE_STYLE = {"OK": OK, "Warning": WARN, "Breaching": CRIT}
ROLLOUT_STYLE = {"Progressing": WARN, "Holding": WARN, "Promoted": OK, "RolledBack": CRIT}
ERRORS = (1.0, 5.0)  # percent of requests


def revision(ref: str | None) -> str:
    """`q4_k_m` of `chat-70b@q4_k_m`."""
    return (ref or NONE).partition("@")[2] or (ref or NONE)


def split_entries(obj: Obj) -> list[tuple[str, int]]:
    """(modelRef, weight) of the traffic split; the model alone takes 100 without one."""
    split = dig(obj, "spec.trafficSplit") or []
    entries = [(str(e.get("modelRef")), int(e.get("weight") or 0)) for e in split]
    return entries or [(str(dig(obj, "spec.modelRef")), 100)]


def _split(obj: Obj, ctx: Ctx) -> Cell:
    entries = split_entries(obj)
    text = ",".join(f"{revision(ref)}={w}" for ref, w in entries)
    canary = len(entries) > 1
    return Cell(text, WARN if canary else "", (len(entries), text))


def _domains(obj: Obj, ctx: Ctx) -> Cell:
    doms = dig(obj, "spec.domains") or []
    return plain(",".join(f"{d.get('name')}={d.get('weight', 100)}" for d in doms) or None)


def metrics(obj: Obj, ctx: Ctx) -> Obj:
    if ctx.state is None:
        return {}
    return ctx.state.objects.get("metrics", {}).get(key_of(obj)) or {}


def slos(obj: Obj, ctx: Ctx) -> list[Obj]:
    return [] if ctx.state is None else ctx.state.endpoint_slos(key_of(obj))


def _slo(obj: Obj, ctx: Ctx) -> Cell:
    phases = [str(dig(s, "status.phase") or "Unknown") for s in slos(obj, ctx)]
    if not phases:
        return Cell(NONE, DIM, -1)
    worst = max(phases, key=lambda p: PHASES.get(p, 1))
    return Cell(worst, PHASE_STYLE.get(worst, DIM), PHASES.get(worst, 1))


def _target(obj: Obj, field: str) -> float | None:
    """The tightest target of `field` (p95_ms, ttft_ms) over the endpoint and its domains."""
    values = [dig(obj, f"spec.slo.{field}")]
    values += [dig(d, f"slo.{field}") for d in dig(obj, "spec.domains") or []]
    found = [float(v) for v in values if v is not None]
    return min(found) if found else None


def _percentile(obj: Obj, ctx: Ctx, metric: str, slo_field: str) -> float | None:
    value = metrics(obj, ctx).get(metric)
    if value is None:  # no recent series: the last hour's, from an SLO's evaluation
        for slo in slos(obj, ctx):
            value = dig(slo, f"status.percentiles.1h.{slo_field}")
            if value is not None:
                break
    return None if value is None else float(value)


def _latency(metric: str, slo_field: str, target_field: str) -> Any:
    def cell(obj: Obj, ctx: Ctx) -> Cell:
        value, target = _percentile(obj, ctx, metric, slo_field), _target(obj, target_field)
        if value is None:
            return Cell(NONE, DIM)
        style = level(value, 0.8 * target, target) if target else ""
        return Cell(f"{value:.0f}ms", style, value)

    return cell


def _rps(obj: Obj, ctx: Ctx) -> Cell:
    value = metrics(obj, ctx).get("rps")
    if value is None:
        return Cell(NONE, DIM)
    rps = float(value)
    return Cell(f"{rps:.2f}" if rps < 10 else f"{rps:.1f}" if rps < 100 else f"{rps:.0f}", "", rps)


def _errors(obj: Obj, ctx: Ctx) -> Cell:
    rate = metrics(obj, ctx).get("error_rate")
    return number(None if rate is None else 100 * float(rate), "{:.1f}%", *ERRORS)


def _rollout(obj: Obj, ctx: Ctx) -> Cell:
    rollout = dig(obj, "status.rollout")
    if not isinstance(rollout, dict) or not rollout:
        return Cell(NONE, DIM)
    phase = str(rollout.get("phase") or "")
    return Cell(
        rollout_summary(rollout), ROLLOUT_STYLE.get(phase, ""), (phase, rollout.get("weight"))
    )


def _degrade(obj: Obj, ctx: Ctx) -> Cell:
    degrade = dig(obj, "status.degrade")
    actions = degrade.get("actions") if isinstance(degrade, dict) else None
    return Cell(",".join(map(str, actions)), WARN) if actions else Cell(NONE, DIM)


COLUMNS = (
    NAME,
    Column("model", "MODEL", lambda o, c: plain(dig(o, "spec.modelRef")), "M"),
    Column("split", "SPLIT", _split),
    Column("domains", "DOMAINS", _domains, "D"),
    Column("slo", "SLO", _slo, "S"),
    Column("p95", "P95", _latency("latency_p95_ms", "p95Ms", "p95_ms"), "L"),
    Column("ttft", "TTFT", _latency("ttft_p95_ms", "ttftP95Ms", "ttft_ms"), "T"),
    Column("rps", "RPS", _rps, "H"),
    Column("errors", "ERR", _errors, "E"),
    Column("rollout", "ROLLOUT", _rollout, "O"),
    Column("degrade", "DEGRADE", _degrade),
    AGE,
)


def _comparison(rollout: Obj) -> Table | None:
    comparison = rollout.get("comparison")
    if not isinstance(comparison, dict) or not comparison:
        return None
    table = Table("", "REQUESTS", "ERRORS", "P95", "TTFT", box=None, padding=(0, 2))
    for side in ("canary", "baseline"):
        row = comparison.get(side) or {}
        rate = row.get("error_rate")
        table.add_row(
            f"{side} {rollout.get(side) or ''}".strip(),
            str(row.get("requests", NONE)),
            NONE if rate is None else f"{100 * float(rate):.2f}%",
            NONE if row.get("p95_ms") is None else f"{float(row['p95_ms']):.0f}ms",
            NONE if row.get("ttft_ms") is None else f"{float(row['ttft_ms']):.0f}ms",
        )
    return table


def describe(obj: Obj, ctx: Ctx) -> RenderableType:
    parts: list[RenderableType] = [
        Text.assemble(
            (str(dig(obj, "metadata.name")), "bold"),
            f"  model {dig(obj, 'spec.modelRef')}  split ",
            _split(obj, ctx),
            f"  strategy {dig(obj, 'spec.strategy.ref') or 'default'}",
        )
    ]
    rollout = dig(obj, "status.rollout")
    if isinstance(rollout, dict) and rollout:
        parts.append(
            Text.assemble(
                "rollout ",
                _rollout(obj, ctx),
                f"  {rollout.get('baseline', NONE)} -> {rollout.get('canary', NONE)}"
                f"  steps {rollout.get('steps', NONE)}  next {rollout.get('nextStepAt', NONE)}",
            )
        )
        if rollout.get("verdict") or rollout.get("reason"):
            parts.append(
                Text(f"verdict {rollout.get('verdict', NONE)}: {rollout.get('reason', '')}")
            )
        table = _comparison(rollout)
        if table is not None:
            parts.append(table)
    degrade = dig(obj, "status.degrade")
    if isinstance(degrade, dict) and degrade.get("actions"):
        parts.append(
            Text(
                f"degraded: {','.join(map(str, degrade['actions']))} since "
                f"{degrade.get('since', NONE)}: {degrade.get('reason', '')}",
                style=WARN,
            )
        )
    found = slos(obj, ctx)
    if found:
        table = Table("SLO", "SLI", "OBJECTIVE", "BUDGET", "BURN-1H", "PHASE", box=None)
        for s in sorted(found, key=lambda s: str(dig(s, "metadata.name"))):
            phase = str(dig(s, "status.phase") or NONE)
            table.add_row(
                str(dig(s, "metadata.name")),
                slo_format.sli(s) or NONE,
                slo_format.objective(s) or NONE,
                slo_format.budget_left(s) or NONE,
                slo_format.burn(s) or NONE,
                Text(phase, style=PHASE_STYLE.get(phase, "")),
            )
        parts.append(table)
    return Group(*parts)


VIEW = ViewSpec(
    name="endpoints",
    title="Endpoints",
    kind="endpoints",
    aliases=("ep", "endpoint"),
    columns=COLUMNS,
    drill="replicas",
    describe=describe,
    depends=("slos", "metrics"),
    event_kind="Endpoint",
)
