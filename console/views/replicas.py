"""Replicas of one endpoint (enter on an endpoint): the nodes whose runtime serves one of its
revisions in one of its domains, as the router would consider them; enter opens the node."""

from __future__ import annotations

from collections.abc import Mapping

from infermesh.console.state import ConsoleState
from infermesh.console.views import endpoints, nodes
from infermesh.console.views.base import (
    DIM,
    NONE,
    Cell,
    Column,
    Ctx,
    Obj,
    ViewSpec,
    dig,
    number,
    plain,
)


def endpoint_of(state: ConsoleState, param: str | None) -> Obj | None:
    return state.objects.get("endpoints", {}).get(param or "")


def serves(node: Obj, endpoint: Obj) -> list[str]:
    """The endpoint's revisions this node's runtime serves."""
    refs = {ref for ref, _ in endpoints.split_entries(endpoint)}
    models = dig(node, "status.runtime.models") or []
    return [m for m in models if m in refs]


def select(state: ConsoleState, param: str | None) -> Mapping[str, Obj]:
    endpoint = endpoint_of(state, param)
    if endpoint is None:
        return {}
    project = dig(endpoint, "metadata.project") or "default"
    domains = {d.get("name") for d in dig(endpoint, "spec.domains") or []}
    return {
        key: node
        for key, node in state.objects.get("nodes", {}).items()
        if key.startswith(f"{project}/")
        and (not domains or dig(node, "spec.domain") in domains)
        and serves(node, endpoint)
    }


def _serves(obj: Obj, ctx: Ctx) -> Cell:
    # The endpoint is not at hand in a cell: show what the runtime serves.
    models = dig(obj, "status.runtime.models") or []
    return plain(",".join(endpoints.revision(m) for m in models) or None)


def _runtime(field: str) -> Column:
    return Column(field, field.upper(), lambda o, c: plain(dig(o, f"status.runtime.{field}")))


def _kv(obj: Obj, ctx: Ctx) -> Cell:
    kv = dig(obj, "status.runtime.kvCacheUsage")
    return number(None if kv is None else 100 * float(kv), "{:.0f}%", 80.0, 95.0)


def _ttft(obj: Obj, ctx: Ctx) -> Cell:
    ms = dig(obj, "status.runtime.ttftP50Ms")
    return Cell(NONE, DIM) if ms is None else Cell(f"{float(ms):.0f}ms", "", float(ms))


def _errors(obj: Obj, ctx: Ctx) -> Cell:
    ratio = dig(obj, "status.runtime.errorRatio")
    return number(None if ratio is None else 100 * float(ratio), "{:.1f}%", *endpoints.ERRORS)


COLUMNS = (
    nodes.COLUMNS[0],
    nodes.COLUMNS[1],  # DOMAIN
    Column("serves", "SERVES", _serves),
    nodes.COLUMNS[4],  # UTIL
    Column("inflight", "IN-FLIGHT", lambda o, c: plain(dig(o, "status.inFlight")), "I"),
    _runtime("running"),
    _runtime("waiting"),
    Column("kv", "KV", _kv, "K"),
    Column("ttft", "TTFT-P50", _ttft, "T"),
    Column("errors", "ERR", _errors, "E"),
    nodes.COLUMNS[9],  # STATUS
)

VIEW = ViewSpec(
    name="replicas",
    title="Replicas",
    kind="nodes",
    columns=COLUMNS,
    select=select,
    depends=("endpoints",),
    drill="nodes",
    describe=nodes.describe,
    routable=False,
    event_kind="Node",
)
