"""Nodes as users see them: the operator's Node object merged with its agent's report.

A node is two keys (docs/architecture.md, "Nodes"): the Node object (spec, written through this
API) and the agent's lease-bound report (status, written by the agent). These routes serve the
merge (owner_status.py), so `mesh get nodes` lists the live nodes and those an operator acted on,
and a watch sees both halves change in one ordered stream.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from infermesh.errors import NotFound
from infermesh.model import parse_object
from infermesh.store.api import owner_status
from infermesh.store.api.owner_status import Owned
from infermesh.store.api.state import ApiState
from infermesh.store.repository import Obj, declared

router = APIRouter()

NOT_REPORTING = {
    "type": "Ready",
    "status": "Unknown",
    "reason": "AgentNotReporting",
    "message": "no report from the node's agent (stopped, or lost its lease)",
}


def from_report(report: Obj, project: str, name: str) -> Obj:
    """The Node object of a node only its agent knows: its spec from the agent's facts."""
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
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": {k: v for k, v in spec.items() if v is not None} | {"cordoned": False},
    }


NODES = Owned("Node", "nodes", {"conditions": [NOT_REPORTING]}, from_report)


async def ensure_node_object(state: ApiState, project: str, name: str, actor: str) -> None:
    """Give a node that only its agent knows a Node object, so an operator's action on it has
    somewhere to live (and outlives the agent)."""
    if owner_status.stored_object(state, NODES, project, name) is not None:
        return
    view = owner_status.view(state, NODES, project, name)
    if view is None:
        raise NotFound(f"Node {name!r} not found in project {project!r}")
    await state.repo.apply(parse_object(declared(view)), actor)


@router.get("/v1/nodes")
async def list_nodes(request: Request) -> Response:
    return owner_status.list_response(request, NODES)


@router.get("/v1/nodes/{name}")
async def get_node(name: str, request: Request) -> Response:
    return owner_status.get_response(request, NODES, name)


@router.get("/v1/watch/nodes")
async def watch_nodes(request: Request) -> Response:
    """Both halves of every node, in one revision-ordered stream (resumable by Last-Event-ID)."""
    return owner_status.watch_response(request, NODES)
