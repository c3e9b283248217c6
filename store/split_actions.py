"""How the split of an Endpoint's traffic changes: the `:trafficSplit`, `:promote` and
`:rollback` actions as plain functions (stored object, body, actor) -> (object, event sentence).

The API's action route (store/api/actions.py) and the delivery controller (store/delivery/) both
change splits through these, so a rollout step reads in the audit log as the action would.
"""

from __future__ import annotations

from typing import Any

from infermesh.errors import BadRequest, Conflict, Invalid
from infermesh.store.repository import Obj


def reason_of(body: dict[str, Any], required: bool) -> str:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise Invalid("reason: must be a string", {"field": "reason"})
    if required and not (reason or "").strip():
        raise Invalid(
            "reason: required for this action (say why, for the audit log)", {"field": "reason"}
        )
    return (reason or "").strip()


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
        f": {r}" if (r := reason_of(body, False)) else ""
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
        + (f": {r}" if (r := reason_of(body, False)) else "")
    )
