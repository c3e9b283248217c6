"""Degradation on SLO state: which of a Policy's degrade rules fire for an endpoint now.

A rule with `sloAlert` fires while one of the endpoint's SLOs has an alert of that severity
firing (`ticket` takes pages too); one with `burnRateAbove` while an SLO burns faster than that
over both 5m and 1h (the same two-window guard the page alert uses, so a blip does not switch
anything). The actions of the rules that fire are the endpoint's `status.degrade`; routers
apply them to every request (router/service.py). A change of the set is an event, and the
actions are reverted as soon as no rule fires any more (the alerts' own short windows keep
that from flapping).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from infermesh.model.policy import DegradeRule
from infermesh.store.repository import Obj
from infermesh.store.slo.status import iso

BURN_WINDOWS = ("5m", "1h")


def _burns(status: Obj, factor: float) -> bool:
    rows = {row.get("window"): row.get("burn") or 0.0 for row in status.get("windows") or []}
    return all(rows.get(w, 0.0) > factor for w in BURN_WINDOWS)


def _alerts(status: Obj, severity: str) -> list[str]:
    wanted = ("page",) if severity == "page" else ("page", "ticket")
    return [
        a["rule"]
        for a in status.get("alerts") or []
        if a.get("firing") and a.get("severity") in wanted
    ]


def firing(rule: DegradeRule, slos: Iterable[tuple[str, Obj]]) -> list[str]:
    """Why the rule fires: one line per SLO that makes it (none: it does not)."""
    why = []
    for name, status in slos:
        if rule.sloAlert is not None and (rules := _alerts(status, rule.sloAlert)):
            why.append(f"{name}: {', '.join(rules)} firing")
        elif rule.burnRateAbove is not None and _burns(status, rule.burnRateAbove):
            why.append(f"{name}: burning over {rule.burnRateAbove:g}x over 5m and 1h")
    return why


def decide(
    rules: Sequence[DegradeRule],
    slos: Sequence[tuple[str, Obj]],
    previous: Obj | None,
    now: float,
) -> tuple[Obj | None, tuple[str, str, bool] | None]:
    """The endpoint's degrade status (None: nothing degraded) and the event of a change."""
    actions: set[str] = set()
    reasons: list[str] = []
    for rule in rules:
        if rule.on_slo and (why := firing(rule, slos)):
            actions.update(rule.actions)
            reasons += [r for r in why if r not in reasons]
    before = set((previous or {}).get("actions") or [])
    if not actions:
        if not before:
            return None, None
        return None, (
            "DegradeReverted",
            f"{', '.join(sorted(before))} switched off: the SLOs stopped burning",
            False,
        )
    status = {
        "actions": sorted(actions),
        "since": (previous or {}).get("since") if actions == before else iso(now),
        "reason": "; ".join(reasons),
    }
    if actions == before:
        return status, None
    on, off = sorted(actions - before), sorted(before - actions)
    said = [f"{', '.join(on)} switched on"] if on else []
    said += [f"{', '.join(off)} switched off"] if off else []
    return status, ("DegradeApplied", f"{'; '.join(said)}: {status['reason']}", True)
