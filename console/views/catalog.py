"""The declarative kinds an SRE looks up rather than watches: domains, capacity pools, policies
and strategies, with the columns `mesh get` prints for them."""

from __future__ import annotations

from infermesh.console.views.base import AGE, NAME, ViewSpec, printer_columns


def _view(
    name: str,
    title: str,
    kind: str,
    printer_kind: str,
    aliases: tuple[str, ...],
    keys: dict[str, str],
) -> ViewSpec:
    return ViewSpec(
        name=name,
        title=title,
        kind=kind,
        aliases=aliases,
        columns=(NAME, *printer_columns(printer_kind, keys), AGE),
        event_kind=printer_kind,
    )


DOMAINS = _view("domains", "Domains", "domains", "Domain", ("dom", "domain"), {"REGION": "E"})
POOLS = _view(
    "pools",
    "Capacity pools",
    "capacitypools",
    "CapacityPool",
    ("pool", "cp", "capacitypools"),
    {"QUOTA-GPU-H": "O", "BUDGET-USD": "B"},
)
POLICIES = _view("policies", "Policies", "policies", "Policy", ("pol", "policy"), {})
STRATEGIES = _view(
    "strategies", "Strategies", "strategies", "Strategy", ("strat", "strategy"), {"TYPE": "T"}
)
