"""One SLO's evaluation, decided: its status document, its alert states and the events to write.

Pure: `decide` takes the SLO, its counts per window, its previous alert states and the time. The
status shape (docs/slo.md) is what `GET /v1/slos/{name}` serves, the consoles show, and later
controllers (degradation, canaries) read:

`{phase: OK|Warning|Breaching, reason, message, implicit, sli, objective, thresholdMs, window,
errorBudget, budgetRemaining, exhaustionSeconds, windows: [{window, seconds, good, total, ratio,
burn}], alerts: [{rule, severity, longWindow, shortWindow, factor, firing, since}],
percentiles: {window: {requests, p50Ms, p95Ms, p99Ms, ttftP95Ms}}, updated, uid}`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from infermesh.store.committer import event_record
from infermesh.store.slo.alerts import RULES_BY_NAME, AlertState, step_alerts
from infermesh.store.slo.burn import BurnTable, evaluate
from infermesh.store.slo.counts import Counts, percentiles
from infermesh.store.slo.definitions import SloDefinition
from infermesh.store.slo.windows import BURN_WINDOW, table_windows

Obj = dict[str, Any]

ACTOR = "system:slo-evaluator"
FIRING, RESOLVED = "SLOAlertFiring", "SLOAlertResolved"

# Status fields whose change is written at once; the numbers are rewritten at most every
# `refresh_s` (evaluator.py), so a thousand SLOs under traffic do not rewrite etcd every pass.
_SIGNIFICANT = ("phase", "reason", "alerts", "uid", "implicit", "sli", "objective", "window")
_IDLE_REFRESHES = 10  # unchanged numbers: rewritten (for `updated`) every 10 refreshes


def iso(epoch: float) -> str:
    """The timestamp format of every object and event (`2024-05-01T12:00:00.000Z`)."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    status: Obj
    alerts: dict[str, AlertState]
    events: list[Obj]  # event records (store/committer.py), one per alert transition
    table: BurnTable | None  # None: a training SLO (training.py)


def window_percentiles(counts_by_window: Mapping[str, Counts]) -> dict[str, Obj]:
    """Latency percentiles per window (the same for every SLO of one slice of traffic)."""
    return {window: percentiles(c) for window, c in counts_by_window.items()}


def decide(
    d: SloDefinition,
    counts_by_window: Mapping[str, Counts],
    previous: Mapping[str, AlertState],
    now: float,
    by_window: Mapping[str, Obj] | None = None,
) -> Decision:
    """`by_window`: `window_percentiles(counts_by_window)`, when the caller shares it among the
    SLOs of one slice."""
    table = evaluate(counts_by_window, d.spec)
    states, transitions = step_alerts(previous, table, now)
    if by_window is None:
        by_window = window_percentiles(counts_by_window)
    status = status_document(d, table, states, by_window, now)
    events = [
        event_record(
            kind="SLO",
            project=d.project,
            name=d.name,
            reason=FIRING if t.firing else RESOLVED,
            message=t.message(table),
            actor=ACTOR,
            warning=t.firing,
            time=iso(now),
        )
        for t in transitions
    ]
    return Decision(status, {s.rule: s for s in states}, events, table)


def phase_of(table: BurnTable, alerts: tuple[AlertState, ...]) -> tuple[str, str, str]:
    """(phase, reason, message): Breaching while a page alert fires or the budget is spent,
    Warning while a ticket alert fires, else OK."""
    spec, slo = table.spec, table.slo_row
    remaining = f"budget remaining {table.budget_remaining * 100:.1f}%"
    if slo.total == 0:
        return "OK", "NoData", f"no valid events in the last {spec.window}"
    firing = [a for a in alerts if a.firing]
    pages = [a.rule for a in firing if a.severity == "page"]
    burn = f"burning {table.burn(BURN_WINDOW):.1f}x over {BURN_WINDOW}"
    if pages:
        return "Breaching", "PageAlertFiring", f"{burn}; {', '.join(pages)} firing; {remaining}"
    if table.budget_remaining <= 0:
        return "Breaching", "BudgetExhausted", f"the {spec.window} error budget is spent; {burn}"
    tickets = [a.rule for a in firing if a.severity == "ticket"]
    if tickets:
        return "Warning", "TicketAlertFiring", f"{burn}; {', '.join(tickets)} firing; {remaining}"
    ratio = (slo.ratio or 0.0) * 100
    return (
        "OK",
        "WithinObjective",
        f"{ratio:.3f}% good over {spec.window} (objective {spec.objective:g}%); {remaining}",
    )


def status_document(
    d: SloDefinition,
    table: BurnTable,
    alerts: tuple[AlertState, ...],
    by_window: Mapping[str, Obj],
    now: float,
) -> Obj:
    phase, reason, message = phase_of(table, alerts)
    exhaustion = table.exhaustion_seconds
    doc: Obj = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "implicit": d.implicit,
        "sli": d.spec.sli,
        "objective": d.spec.objective,
        "thresholdMs": d.spec.threshold_ms,
        "window": d.spec.window,
        "errorBudget": round(d.spec.budget, 6),
        "budgetRemaining": round(table.budget_remaining, 6),
        "exhaustionSeconds": None if exhaustion is None else round(exhaustion),
        "windows": [row.to_json() for row in table.rows],
        "alerts": [alert_json(a) for a in alerts],
        "percentiles": {
            window: by_window.get(window) or percentiles(Counts.zero())
            for window, _ in table_windows(d.spec.window)
        },
        "updated": iso(now),
    }
    if d.uid:
        doc["uid"] = d.uid  # owner_status.merged shows a status only with its own object
    return doc


def alert_json(a: AlertState) -> Obj:
    rule = RULES_BY_NAME[a.rule]
    return {
        "rule": a.rule,
        "severity": a.severity,
        "longWindow": rule.long,
        "shortWindow": rule.short,
        "factor": rule.factor,
        "firing": a.firing,
        "since": None if a.since is None else iso(a.since),
    }


def alert_states(status: Obj) -> dict[str, AlertState]:
    """The alert states a status holds (what a new leader carries on from)."""
    out = {}
    for a in status.get("alerts") or []:
        rule = RULES_BY_NAME.get(a.get("rule", ""))
        if rule is not None:
            out[rule.name] = AlertState(
                rule.name, rule.severity, bool(a.get("firing")), epoch(a.get("since"))
            )
    return out


def should_write(
    previous: Obj | None, new: Obj, previous_at: float | None, now: float, refresh_s: float
) -> bool:
    """Whether to rewrite a status: at once when its phase, alerts or definition changed, else
    when `refresh_s` passed (ten times that if nothing but `updated` would change)."""
    if previous is None or previous_at is None:
        return True
    if any(previous.get(k) != new.get(k) for k in _SIGNIFICANT):
        return True
    same = {**previous, "updated": None} == {**new, "updated": None}
    return now - previous_at >= refresh_s * (_IDLE_REFRESHES if same else 1)
