"""Nodes as users see them: the operator's Node object merged with its agent's report.

A node is two keys (docs/architecture.md, "Nodes"): the Node object (spec, written through this
API) and the agent's lease-bound report (status, written by the agent). These routes serve the
merge, so `mesh get nodes` lists the live nodes and those an operator acted on, and a watch sees
both halves change in one ordered stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from infermesh.errors import NotFound
from infermesh.model import Node, parse_object
from infermesh.store.api.http import json_response
from infermesh.store.api.objects import authorized, match_labels, project_param, stale_header
from infermesh.store.api.state import ApiState, mesh
from infermesh.store.api.streams import PING_S, sse, start_revision, watch_etcd
from infermesh.store.etcd import WatchEvent
from infermesh.store.repository import Obj, declared, decode

router = APIRouter()

NOT_REPORTING = {
    "type": "Ready",
    "status": "Unknown",
    "reason": "AgentNotReporting",
    "message": "no report from the node's agent (stopped, or lost its lease)",
}


def merged(obj: Obj | None, report: Obj | None, project: str, name: str) -> Obj | None:
    """The node users see; None when neither half exists."""
    if obj is None and report is None:
        return None
    if obj is None:
        assert report is not None
        facts, agent = report.get("facts") or {}, report.get("agent") or {}
        spec = {
            "nodeClassRef": facts.get("nodeClass") or "unknown",
            "domain": facts.get("domain"),
            "region": facts.get("region"),
            "zone": facts.get("zone"),
            "address": agent.get("address"),
        }
        meta = {"name": name, "project": project, "labels": {}, "annotations": {}}
        if agent.get("startedAt"):
            meta["creationTimestamp"] = agent["startedAt"]
        obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": meta,
            "spec": {k: v for k, v in spec.items() if v is not None} | {"cordoned": False},
        }
    own = (obj.get("status") or {}).get("conditions") or []
    if report is None:
        status = {"conditions": [NOT_REPORTING, *own]}
    else:
        status = {**report, "conditions": [*(report.get("conditions") or []), *own]}
    return {**obj, "status": status}


def _half(value: bytes, revision: int, is_object: bool) -> Obj:
    """One half of a node from a watch event: the Node object, or the agent's report."""
    return decode("", value, revision).obj if is_object else json.loads(value)


def _object(state: ApiState, project: str, name: str) -> Obj | None:
    stored = state.repo.cached("Node", project, name)
    return stored.obj if stored else None


def _report(state: ApiState, project: str, name: str) -> Obj | None:
    return state.reports.get(state.keys.status("nodes", project, name))


def node_view(state: ApiState, project: str, name: str) -> Obj | None:
    return merged(_object(state, project, name), _report(state, project, name), project, name)


def all_nodes(state: ApiState, project: str | None) -> list[Obj]:
    """Every node of a project (None: of every project), sorted by project and name."""
    names: set[tuple[str, str]] = set()
    for s in state.repo.list("Node", project):
        names.add((s.obj["metadata"]["project"], s.obj["metadata"]["name"]))
    for key, _ in state.reports.items(state.keys.statuses("nodes", project)):
        ident = state.keys.parse_status(key)
        names.add((ident.project, ident.name))
    views = (node_view(state, p, n) for p, n in sorted(names))
    return [v for v in views if v is not None]


async def ensure_node_object(state: ApiState, project: str, name: str, actor: str) -> None:
    """Give a node that only its agent knows a Node object, so an operator's action on it has
    somewhere to live (and outlives the agent)."""
    if _object(state, project, name) is not None:
        return
    view = node_view(state, project, name)
    if view is None:
        raise NotFound(f"Node {name!r} not found in project {project!r}")
    await state.repo.apply(parse_object(declared(view)), actor)


@router.get("/v1/nodes")
async def list_nodes(request: Request) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    project = project_param(request)
    selector = request.query_params.get("labelSelector")
    if project == "*":
        items = [
            n
            for n in all_nodes(state, None)
            if principal.sees_project(n["metadata"]["project"], state.tenant_of)
        ]
    else:
        state.check(principal, "read", "Node", project)
        items = all_nodes(state, project)
    meta = {"resourceVersion": str(state.objects.revision), "stale": state.objects.stale}
    body = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [n for n in items if match_labels(n, selector)],
        "metadata": meta,
    }
    return json_response(body, headers=stale_header(state))


@router.get("/v1/nodes/{name}")
async def get_node(name: str, request: Request) -> Response:
    state, _, _, project = authorized(request, Node.plural, "read")
    view = node_view(state, project, name)
    if view is None:
        raise NotFound(f"Node {name!r} not found in project {project!r}")
    return json_response(view, headers=stale_header(state))


@router.get("/v1/watch/nodes")
async def watch_nodes(request: Request) -> Response:
    """Both halves of every node, in one revision-ordered stream (resumable by Last-Event-ID)."""
    state = mesh(request)
    principal = state.authenticate(request)
    project = project_param(request)
    every = project == "*"
    if not every:
        state.check(principal, "read", "Node", project)
    scope = None if every else project
    objects, reports = state.keys.objects("nodes", scope), state.keys.statuses("nodes", scope)
    selector = request.query_params.get("labelSelector")
    after = start_revision(request)

    def visible(view: Obj) -> bool:
        return principal.sees_project(
            view["metadata"]["project"], state.tenant_of
        ) and match_labels(view, selector)

    def convert(event: WatchEvent) -> dict[str, Any] | None:
        if event.key.startswith(objects):
            ident, is_object = state.keys.parse_object(event.key), True
        elif event.key.startswith(reports):
            ident, is_object = state.keys.parse_status(event.key), False
        else:
            return None  # a neighbour inside the watched range
        p, n = ident.project, ident.name
        other = _report(state, p, n) if is_object else _object(state, p, n)
        if event.type == "PUT":
            mine = _half(event.value, event.mod_revision, is_object)
            new = event.create_revision == event.mod_revision and other is None
            kind = "ADDED" if new else "MODIFIED"
        elif event.type == "DELETE":
            mine = None
            kind = "MODIFIED" if other is not None else "DELETED"
            if other is None and event.prev_value is not None:
                other_half = _half(event.prev_value, event.mod_revision, is_object)
                view = merged(*((other_half, None) if is_object else (None, other_half)), p, n)
                return sse(kind, view, event.mod_revision) if view and visible(view) else None
        else:
            return None
        view = merged(*((mine, other) if is_object else (other, mine)), p, n)
        return sse(kind, view, event.mod_revision) if view and visible(view) else None

    async def stream() -> AsyncIterator[dict[str, Any]]:
        nonlocal after
        if after is None:
            after = state.objects.revision
            for view in all_nodes(state, scope):
                if visible(view):
                    yield sse("ADDED", view)
            yield sse("BOOKMARK", {"resourceVersion": str(after)}, after)
        end = state.keys.statuses("nodes", scope)[:-1] + "0"  # just past the reports prefix
        async for item in watch_etcd(state, objects, after, convert, prev_kv=True, end=end):
            yield item

    return EventSourceResponse(stream(), ping=PING_S)
