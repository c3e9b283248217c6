"""The console's table views, one module per kind; `VIEWS` by name, `view_for` by name or
alias."""

from __future__ import annotations

from infermesh.console.views import catalog, endpoints, events, jobs, nodes, replicas, slos
from infermesh.console.views.base import Cell, Column, Ctx, ViewSpec, key_of, row

VIEWS: dict[str, ViewSpec] = {
    v.name: v
    for v in (
        nodes.VIEW,
        endpoints.VIEW,
        jobs.VIEW,
        slos.VIEW,
        events.VIEW,
        catalog.DOMAINS,
        catalog.POOLS,
        catalog.POLICIES,
        catalog.STRATEGIES,
        replicas.VIEW,
    )
}

# The collections the console follows with a watch stream each (SLOs are listed, events
# streamed, metrics polled: see feed.py).
WATCHED = ("nodes", "endpoints", "jobs", "domains", "capacitypools", "policies", "strategies")


def view_for(word: str) -> ViewSpec | None:
    """The routable view named or aliased `word` (`no`, `ep`, `slo`...), or None."""
    word = word.strip().lower()
    for view in VIEWS.values():
        if view.routable and (word == view.name or word in view.aliases):
            return view
    return None


__all__ = ["VIEWS", "WATCHED", "Cell", "Column", "Ctx", "ViewSpec", "key_of", "row", "view_for"]
