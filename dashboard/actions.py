"""Operator actions as data: what to do to which objects, whether it must be confirmed by typing
the target's name, and its outcome per target. Sent through the SDK (`MeshClient.action`,
`.promote`, `.rollback`); the API validates, authorises and audits each one. No Streamlit here
(the dialog is confirm.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from infermesh.client import MeshClient
from infermesh.errors import MeshError

KIND = {"nodes": "node", "endpoints": "endpoint", "jobs": "job"}
LABELS = {
    "trafficSplit": "Set the traffic split of",
    "rollback": "Roll back",
    "unquarantine": "Lift the quarantine of",
}
# Actions that take capacity or traffic away: confirmed in a dialog by typing the target.
DESTRUCTIVE = {
    ("nodes", "drain"),
    ("nodes", "quarantine"),
    ("endpoints", "rollback"),
    ("endpoints", "promote"),
}


@dataclass(frozen=True)
class ActionRequest:
    plural: str  # nodes | endpoints | jobs
    verb: str  # cordon, drain, quarantine, trafficSplit, promote, rollback, pause, scale...
    targets: tuple[str, ...]
    body: dict[str, Any] = field(default_factory=dict)
    detail: str = ""  # what it will do, in a sentence, for the dialog
    destructive: bool = False  # confirmed by typing `confirm_word`

    @classmethod
    def of(
        cls,
        plural: str,
        verb: str,
        targets: list[str] | tuple[str, ...],
        body: dict[str, Any] | None = None,
        detail: str = "",
        destructive: bool | None = None,
    ) -> ActionRequest:
        return cls(
            plural,
            verb,
            tuple(targets),
            dict(body or {}),
            detail,
            (plural, verb) in DESTRUCTIVE if destructive is None else destructive,
        )

    @property
    def title(self) -> str:
        verb = LABELS.get(self.verb, self.verb.capitalize())
        if len(self.targets) == 1:
            return f"{verb} {KIND.get(self.plural, self.plural)} {self.targets[0]}"
        return f"{verb} {len(self.targets)} {self.plural}: {', '.join(self.targets)}"

    @property
    def confirm_word(self) -> str:
        """What the operator types to confirm: the target's name, or `3 nodes` for several."""
        if len(self.targets) == 1:
            return self.targets[0]
        return f"{len(self.targets)} {self.plural}"


def confirmed(request: ActionRequest, typed: str | None) -> bool:
    """A destructive action goes ahead only when exactly its confirm word was typed."""
    return not request.destructive or (typed or "").strip() == request.confirm_word


@dataclass(frozen=True)
class Outcome:
    plural: str
    verb: str
    target: str
    ok: bool
    message: str
    time: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


def _split(obj: dict[str, Any]) -> str:
    split = (obj.get("spec") or {}).get("trafficSplit") or []
    model = (obj.get("spec") or {}).get("modelRef")
    if not split:
        return f"all traffic to {model}"
    return ", ".join(f"{s.get('modelRef')}={s.get('weight')}%" for s in split)


def _done(request: ActionRequest, target: str, obj: dict[str, Any]) -> str:
    kind = KIND.get(request.plural, request.plural)
    spec = obj.get("spec") or {}
    verb = request.verb
    if verb == "promote":
        return f"{kind}/{target} promoted to {spec.get('modelRef')}"
    if verb == "rollback":
        return f"{kind}/{target} rolled back: {_split(obj)}"
    if verb == "trafficSplit":
        return f"{kind}/{target} traffic split set: {_split(obj)}"
    if verb == "scale":
        return f"{kind}/{target}: scale to {spec.get('targetGpus')} GPUs requested"
    past = {
        "cordon": "cordoned",
        "uncordon": "uncordoned",
        "drain": "drain requested",
        "quarantine": "quarantined",
        "unquarantine": "quarantine lifted",
        "pause": "pause requested",
        "resume": "resume requested",
        "checkpoint": "checkpoint requested",
    }
    return f"{kind}/{target} {past.get(verb, verb)}"


def execute(client: MeshClient, request: ActionRequest) -> list[Outcome]:
    """Send the action for each target; an error is that target's outcome (with the API's
    message), and the others still go."""
    outcomes = []
    body = dict(request.body)
    for target in request.targets:
        try:
            if request.verb == "promote":
                obj = client.promote(
                    target, body.get("revision") or None, reason=str(body.get("reason") or "")
                )
            elif request.verb == "rollback":
                obj = client.rollback(target, reason=str(body.get("reason") or ""))
            else:
                obj = client.action(request.plural, target, request.verb, body)
            message, ok = _done(request, target, obj), True
        except MeshError as exc:
            kind = KIND.get(request.plural, request.plural)
            message, ok = f"{request.verb} {kind}/{target} failed: {exc.message}", False
        outcomes.append(Outcome(request.plural, request.verb, target, ok, message))
    return outcomes
