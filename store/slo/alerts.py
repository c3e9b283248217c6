"""Multi-window, multi-burn-rate alerts (Google SRE workbook, chapter 5) and their state machine.

A rule fires while the burn rate is over its factor in both its long window (enough budget spent
to matter) and its short window (still burning now, so it resolves soon after the burn stops):

| rule | severity | long | short | factor | budget spent in the long window (30 d SLO) |
|---|---|---|---|---|---|
| page-1h-5m | page | 1h | 5m | 14.4 | 2 % |
| page-6h-30m | page | 6h | 30m | 6 | 5 % |
| ticket-1d-2h | ticket | 1d | 2h | 3 | 10 % |
| ticket-3d-6h | ticket | 3d | 6h | 1 | 10 % |

`step_alerts` is a pure function of the previous states, a new burn table and the time: it
returns the new states and the transitions (each becomes an event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from infermesh.humanize import format_duration
from infermesh.store.slo.burn import BurnTable

Severity = Literal["page", "ticket"]


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: str
    severity: Severity
    long: str  # window names (windows.py)
    short: str
    factor: float  # burn rate both windows must exceed

    def holds(self, table: BurnTable) -> bool:
        return table.burn(self.long) > self.factor and table.burn(self.short) > self.factor


RULES: tuple[AlertRule, ...] = (
    AlertRule("page-1h-5m", "page", "1h", "5m", 14.4),
    AlertRule("page-6h-30m", "page", "6h", "30m", 6.0),
    AlertRule("ticket-1d-2h", "ticket", "1d", "2h", 3.0),
    AlertRule("ticket-3d-6h", "ticket", "3d", "6h", 1.0),
)
RULES_BY_NAME: dict[str, AlertRule] = {r.name: r for r in RULES}


@dataclass(frozen=True, slots=True)
class AlertState:
    rule: str
    severity: Severity
    firing: bool
    since: float | None  # epoch seconds of the last transition; None: never fired


@dataclass(frozen=True, slots=True)
class Transition:
    rule: AlertRule
    firing: bool  # True: started firing; False: resolved
    at: float
    long_burn: float
    short_burn: float
    previous_since: float | None  # when the state that just ended began

    def message(self, table: BurnTable) -> str:
        """The event text: which rule, the burn rates that decided it, and the budget left."""
        r = self.rule
        burns = (
            f"burn {self.long_burn:.1f}x over {r.long} and {self.short_burn:.1f}x over "
            f"{r.short} (threshold {r.factor:g}x)"
        )
        budget = f"budget remaining {table.budget_remaining * 100:.1f}% of {table.spec.window}"
        if self.firing:
            return f"{r.severity} alert {r.name} firing: {burns}; {budget}"
        lasted = ""
        if self.previous_since is not None:
            lasted = f" after {format_duration(self.at - self.previous_since)}"
        return f"{r.severity} alert {r.name} resolved{lasted}: {burns}; {budget}"


def step_alerts(
    previous: Mapping[str, AlertState],
    table: BurnTable,
    now: float,
    rules: tuple[AlertRule, ...] = RULES,
) -> tuple[tuple[AlertState, ...], tuple[Transition, ...]]:
    """Every rule's state after looking at `table` at `now`, and the rules that changed."""
    states, transitions = [], []
    for rule in rules:
        before = previous.get(rule.name)
        was = before is not None and before.firing
        firing = rule.holds(table)
        if firing == was:
            since = before.since if before is not None else None
            states.append(AlertState(rule.name, rule.severity, firing, since))
            continue
        states.append(AlertState(rule.name, rule.severity, firing, now))
        transitions.append(
            Transition(
                rule,
                firing,
                now,
                table.burn(rule.long),
                table.burn(rule.short),
                before.since if before is not None else None,
            )
        )
    return tuple(states), tuple(transitions)
