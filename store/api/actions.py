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

from infermesh.errors import BadRequest, Conflict, Invalid, NotFound
from infermesh.model import Node
from infermesh.store.api.http import json_response, read_json
from infermesh.store.api.nodes import ensure_node_object
from infermesh.store.api.objects import authorized
from infermesh.store.repository import Obj, now

router = APIRouter()

Action = Callable[[Obj, dict[str, Any], str], tuple[Obj, str]]


def _reason(body: dict[str, Any], required: bool) -> str:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise Invalid("reason: must be a string", {"field": "reason"})
    if required and not (reason or "").strip():
        raise Invalid(
            "reason: required for this action (say why, for the audit log)", {"field": "reason"}
        )
    return (reason or "").strip()


def _int(body: dict[str, Any], field: str, default: int | None = None) -> int | None:
    value = body.get(field, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise Invalid(f"{field}: must be a non-negative integer", {"field": field})
    return value


# nodes -------------------------------------------------------------------------------------
def cordon(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["cordoned"] = True
    return obj, f"cordoned by {actor}" + (f": {r}" if (r := _reason(body, False)) else "")


def uncordon(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    obj["spec"]["cordoned"] = False
    obj["spec"].pop("drain", None)
    return obj, f"uncordoned by {actor}"


def drain_node(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    reason = _reason(body, False)
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
    reason = _reason(body, True)
    obj["spec"]["quarantine"] = {"reason": reason, "actor": actor, "since": now()}
    return obj, f"quarantined by {actor}: {reason}"


def unquarantine_node(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    if not obj["spec"].get("quarantine"):
        raise BadRequest(f"node {obj['metadata']['name']!r} is not quarantined")
    obj["spec"].pop("quarantine", None)
    return obj, f"quarantine lifted by {actor}" + (f": {r}" if (r := _reason(body, False)) else "")


# endpoints ---------------------------------------------------------------------------------
def _split_text(split: list[Any]) -> str:
    return ", ".join(f"{s.get('modelRef')}={s.get('weight')}" for s in split if isinstance(s, dict))


def traffic_split(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    split = body.get("split", body.get("trafficSplit"))
    if not isinstance(split, list) or not split:
        raise Invalid(
            'split: required, e.g. [{"modelRef": "chat-70b@q4", "weight": 90}, ...]',
            {"field": "split"},
        )
    obj["spec"]["trafficSplit"] = split
    return obj, f"traffic split set to {_split_text(split)} by {actor}"


def promote(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    """A canary of the traffic split becomes the endpoint's model and takes all its traffic."""
    spec, name = obj["spec"], obj["metadata"]["name"]
    current, split = spec["modelRef"], spec.get("trafficSplit") or []
    revision = body.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise Invalid("revision: must be a non-empty string", {"field": "revision"})
    if not split:
        raise Conflict(
            f"endpoint {name!r} has no canary to promote: all its traffic goes to {current} "
            "(start one with a traffic split)"
        )
    canaries = [s for s in split if s.get("modelRef") != current]
    if revision:
        # A bare revision ("fp8") names a revision of the endpoint's model, as traffic-split does.
        target = revision if "@" in revision else f"{current.partition('@')[0]}@{revision}"
        if target == current:
            raise BadRequest(
                f"revision: {target} is already the model of endpoint {name!r}; "
                "to drop the canaries, roll back",
                {"field": "revision"},
            )
        if target not in {s.get("modelRef") for s in canaries}:
            raise BadRequest(
                f"revision: {target} is not in the traffic split of endpoint {name!r} "
                f"({_split_text(split)})",
                {"field": "revision"},
            )
    else:
        top = max((s.get("weight") or 0 for s in canaries), default=None)
        leaders = [s["modelRef"] for s in canaries if (s.get("weight") or 0) == top]
        if not leaders:
            raise Conflict(
                f"endpoint {name!r} has no canary to promote: its traffic split "
                f"({_split_text(split)}) names only {current}"
            )
        if len(leaders) > 1:
            raise Conflict(
                f"endpoint {name!r} has several canaries of weight {top} "
                f"({', '.join(leaders)}); name the one to promote with revision",
                {"candidates": leaders},
            )
        target = leaders[0]
    spec["modelRef"] = target
    spec["trafficSplit"] = []
    return obj, f"promoted to {target} (was {current}; split {_split_text(split)}) by {actor}" + (
        f": {r}" if (r := _reason(body, False)) else ""
    )


def rollback(obj: Obj, body: dict[str, Any], actor: str) -> tuple[Obj, str]:
    """Drop the traffic split: all traffic back to the endpoint's model."""
    spec, name = obj["spec"], obj["metadata"]["name"]
    split = spec.get("trafficSplit") or []
    if not split:
        raise Conflict(
            f"endpoint {name!r} has no traffic split to roll back; "
            f"all its traffic already goes to {spec['modelRef']}"
        )
    spec["trafficSplit"] = []
    return obj, (
        f"rolled back to {spec['modelRef']} (split {_split_text(split)} dropped) by {actor}"
        + (f": {r}" if (r := _reason(body, False)) else "")
    )


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
    reason = _reason(body, False)
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
    reason = _reason(body, True)
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
    )
    return json_response(result.object)
