"""The colon actions of seed 000: `POST /v1/{plural}/{name}:{verb}`.

Each action is a plain function from (stored object, request body, actor) to the changed object
and a sentence for the event; the route wraps it in an authorised, audited read-modify-write.
Actions only record desired state: agents, routers and the scheduler act on it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from infermesh.errors import BadRequest, Invalid, NotFound
from infermesh.model import Node
from infermesh.store.api.http import json_response, read_json
from infermesh.store.api.nodes import ensure_node_object
from infermesh.store.api.objects import authorized
from infermesh.store.repository import Obj, now
from infermesh.store.split_actions import promote, reason_of, rollback, traffic_split

router = APIRouter()

Action = Callable[[Obj, dict[str, Any], str], tuple[Obj, str]]


def _int(body: dict[str, Any], field: str, default: int | None = None) -> int | None:
    value = body.get(field, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise Invalid(f"{field}: must be a non-negative integer", {"field": field})
    return value


# nodes -------------------------------------------------------------------------------------
def cordon(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["cordoned"] = True
    return obj, f"cordoned by {actor}" + (f": {r}" if (r := reason_of(body, False)) else "")


def uncordon(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["cordoned"] = False
    obj["spec"].pop("drain", None)
    return obj, f"uncordoned by {actor}"


def drain_node(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    reason = reason_of(body, False)
    obj["spec"]["cordoned"] = True  # a draining node takes no new work
    obj["spec"]["drain"] = {
        "reason": reason,
        "actor": actor,
        "requestedAt": now(),
        "timeoutSeconds": _int(body, "timeoutSeconds", 300),
        "force": bool(body.get("force", False)),
    }
    return obj, f"drain requested by {actor}" + (f": {reason}" if reason else "")


def quarantine_node(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    reason = reason_of(body, True)
    obj["spec"]["quarantine"] = {"reason": reason, "actor": actor, "since": now()}
    return obj, f"quarantined by {actor}: {reason}"


def unquarantine_node(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    if not obj["spec"].get("quarantine"):
        raise BadRequest(f"node {obj['metadata']['name']!r} is not quarantined")
    obj["spec"].pop("quarantine", None)
    return obj, f"quarantine lifted by {actor}" + (
        f": {r}" if (r := reason_of(body, False)) else ""
    )


# endpoints ---------------------------------------------------------------------------------
def pin(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    pins = body.get("pins")
    if not isinstance(pins, list):
        raise Invalid(
            'pins: required, a list like [{"node": "n1"}, {"domain": "edge-eu"}] '
            "([] removes all pins)",
            {"field": "pins"},
        )
    obj["spec"]["pins"] = pins
    return obj, f"pins set to {pins} by {actor}"


def drain_endpoint(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    reason = reason_of(body, False)
    obj["spec"]["drain"] = {
        "reason": reason,
        "actor": actor,
        "requestedAt": now(),
        "timeoutSeconds": _int(body, "timeoutSeconds", 300),
    }
    return obj, f"drain requested by {actor}" + (f": {reason}" if reason else "")


def quarantine_endpoint_node(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    node = body.get("node")
    if not isinstance(node, str) or not node:
        raise Invalid(
            "node: required, the node whose replica stops getting this endpoint's traffic",
            {"field": "node"},
        )
    reason = reason_of(body, True)
    entries = [q for q in obj["spec"].get("quarantinedNodes") or [] if q.get("node") != node]
    entries.append({"node": node, "reason": reason, "actor": actor, "since": now()})
    obj["spec"]["quarantinedNodes"] = entries
    return obj, f"replica on node {node} quarantined by {actor}: {reason}"


# jobs and models ---------------------------------------------------------------------------
def pause(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["paused"] = True
    return obj, f"pause requested by {actor}"


def resume(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["paused"] = False
    return obj, f"resume requested by {actor}"


def scale(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    gpus = _int(body, "gpus")
    if gpus is None:
        raise Invalid("gpus: required, the number of GPUs to run the job on", {"field": "gpus"})
    obj["spec"]["targetGpus"] = gpus
    return obj, f"scale to {gpus} GPUs requested by {actor}"


def checkpoint(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["checkpointRequests"] = int(obj["spec"].get("checkpointRequests") or 0) + 1
    return obj, f"checkpoint requested by {actor}"


def publish(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["published"] = True
    return obj, f"published by {actor}"


ACTIONS: dict[tuple[str, str], Action] = {
    ("nodes", "cordon"): cordon,
    ("nodes", "uncordon"): uncordon,
    ("nodes", "drain"): drain_node,
    ("nodes", "quarantine"): quarantine_node,
    ("nodes", "unquarantine"): unquarantine_node,
    ("endpoints", "trafficSplit"): traffic_split,
    ("endpoints", "promote"): promote,
    ("endpoints", "rollback"): rollback,
    ("endpoints", "pin"): pin,
    ("endpoints", "drain"): drain_endpoint,
    ("endpoints", "quarantine"): quarantine_endpoint_node,
    ("jobs", "pause"): pause,
    ("jobs", "resume"): resume,
    ("jobs", "scale"): scale,
    ("jobs", "checkpoint"): checkpoint,
    ("models", "publish"): publish,
}


# Actions that take capacity or traffic away: their events are Warnings, so an operator who
# filters for warnings sees them.
WARNING_VERBS = frozenset({"drain", "quarantine", "rollback"})


@router.post("/v1/{plural}/{name}:{verb}")
async def act(plural: str, name: str, verb: str, request: Request) -> Response:
    state, principal, cls, project = authorized(request, plural, "write")
    action = ACTIONS.get((plural, verb))
    if action is None:
        verbs = sorted(v for p, v in ACTIONS if p == plural)
        raise NotFound(
            f"{cls.__name__} has no action {verb!r}"
            + (f"; actions: {', '.join(verbs)}" if verbs else "")
        )
    body = await read_json(request) if (await request.body()).strip() else {}
    if not isinstance(body, dict):
        raise BadRequest("action body must be a JSON object")
    if cls is Node:  # a node only its agent knows yet gets its object now
        await ensure_node_object(state, project, name, principal.subject)
    current = state.repo.cached(cls.__name__, project, name)
    if current is None:
        raise NotFound(f"{cls.__name__} {name!r} not found in project {project!r}")
    # A dry run on a copy validates the body before any read-modify-write, and gives the message.
    _, message = action(copy.deepcopy(current.obj), dict(body), principal.subject)
    result = await state.repo.mutate(
        cls.__name__,
        project,
        name,
        principal.subject,
        lambda obj: action(obj, dict(body), principal.subject)[0],
        action=verb,
        reason=verb[:1].upper() + verb[1:],
        message=f"{cls.__name__} {name} {message}",
        warning=verb in WARNING_VERBS,
    )
    return json_response(result.object)
