"""What the console can do to objects: one `ActionSpec` per action (its key, its dialog, whether
the target's name must be typed, whether it needs a reason), the request body each dialog's
answer becomes, and `perform`, which sends it through the source (the SDK).

Every action changes the mesh, so `--readonly` drops them all: no binding, no help line, no
palette entry. Quarantine, drain, rollback (the canary to 0 %) and job delete (kill) make the
user type the target's name (with several marked rows: their count and kind, e.g. `3 nodes`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from infermesh.errors import MeshError

Obj = dict[str, Any]
Dialog = Literal["confirm", "drain", "split", "scale"]
Reason = Literal["none", "optional", "required"]


@dataclass(frozen=True)
class ActionSpec:
    id: str  # "nodes.cordon": unique, names the binding's action
    plural: str  # the API kind it acts on
    verb: str  # the colon verb (or promote, rollback, delete)
    key: str  # its key binding
    label: str  # "Cordon"
    views: tuple[str, ...]  # the views it is bound in
    dialog: Dialog = "confirm"
    typed: bool = False  # the target's name must be typed to confirm
    reason: Reason = "optional"
    what: str = ""  # one line: what it does, for the dialog, the help and the palette

    def noun(self, count: int) -> str:
        singular = self.plural.rstrip("s")
        return singular if count == 1 else self.plural


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec(
        "nodes.cordon",
        "nodes",
        "cordon",
        "c",
        "Cordon",
        ("nodes", "replicas"),
        what="no new work lands on the node; what runs there keeps running",
    ),
    ActionSpec(
        "nodes.uncordon",
        "nodes",
        "uncordon",
        "u",
        "Uncordon",
        ("nodes", "replicas"),
        what="the node takes new work again (also ends a drain)",
    ),
    ActionSpec(
        "nodes.drain",
        "nodes",
        "drain",
        "r",
        "Drain",
        ("nodes", "replicas"),
        "drain",
        True,
        what="cordon, then let in-flight requests finish (or stop them at the timeout, with force)",
    ),
    ActionSpec(
        "nodes.quarantine",
        "nodes",
        "quarantine",
        "Q",
        "Quarantine",
        ("nodes", "replicas"),
        typed=True,
        reason="required",
        what="take the node out of service at once: the router sends it nothing",
    ),
    ActionSpec(
        "nodes.unquarantine",
        "nodes",
        "unquarantine",
        "U",
        "Unquarantine",
        ("nodes", "replicas"),
        what="lift the node's quarantine",
    ),
    ActionSpec(
        "endpoints.split",
        "endpoints",
        "trafficSplit",
        "percent_sign",
        "Traffic split",
        ("endpoints",),
        "split",
        reason="none",
        what="set the revisions' weights (they add up to 100)",
    ),
    ActionSpec(
        "endpoints.promote",
        "endpoints",
        "promote",
        "P",
        "Promote",
        ("endpoints",),
        what="the leading canary becomes the endpoint's model with all its traffic",
    ),
    ActionSpec(
        "endpoints.rollback",
        "endpoints",
        "rollback",
        "R",
        "Rollback",
        ("endpoints",),
        typed=True,
        what="drop the traffic split: the canary goes to 0 %, all traffic to the model",
    ),
    ActionSpec(
        "jobs.pause",
        "jobs",
        "pause",
        "p",
        "Pause",
        ("jobs",),
        reason="none",
        what="the scheduler checkpoints and stops the job, keeping its place",
    ),
    ActionSpec(
        "jobs.resume",
        "jobs",
        "resume",
        "u",
        "Resume",
        ("jobs",),
        reason="none",
        what="the scheduler runs a paused job again from its last checkpoint",
    ),
    ActionSpec(
        "jobs.scale",
        "jobs",
        "scale",
        "s",
        "Scale",
        ("jobs",),
        "scale",
        reason="none",
        what="run an elastic job on another number of GPUs (within its elastic range)",
    ),
    ActionSpec(
        "jobs.checkpoint",
        "jobs",
        "checkpoint",
        "k",
        "Checkpoint",
        ("jobs",),
        reason="none",
        what="ask the scheduler for a checkpoint now",
    ),
    ActionSpec(
        "jobs.kill",
        "jobs",
        "delete",
        "ctrl+k",
        "Kill",
        ("jobs",),
        typed=True,
        reason="none",
        what="delete the job: the scheduler stops its ranks and drops its status and logs",
    ),
)
BY_ID = {a.id: a for a in ACTIONS}


def actions_for(view: str) -> list[ActionSpec]:
    return [a for a in ACTIONS if view in a.views]


def typed_phrase(spec: ActionSpec, names: Sequence[str]) -> str:
    """What the user must type to confirm: the name, or `3 nodes` for several targets."""
    return names[0] if len(names) == 1 else f"{len(names)} {spec.plural}"


# --- traffic split ------------------------------------------------------------------------------


class SplitError(ValueError):
    pass


_WEIGHT = re.compile(r"^([A-Za-z0-9_.@\-]+)=(\d+)$")


def parse_split(text: str, model_ref: str) -> list[Obj]:
    """`q4_k_m=90 fp8=10` (or with commas; a bare revision is one of the endpoint's model) as
    the split the API takes; raises SplitError naming what is wrong."""
    base = model_ref.partition("@")[0]
    split: list[Obj] = []
    for term in text.replace(",", " ").split():
        match = _WEIGHT.match(term)
        if match is None:
            raise SplitError(f"{term!r}: write revision=weight, e.g. fp8=10")
        ref = match.group(1) if "@" in match.group(1) else f"{base}@{match.group(1)}"
        if any(e["modelRef"] == ref for e in split):
            raise SplitError(f"{ref} is listed twice")
        split.append({"modelRef": ref, "weight": int(match.group(2))})
    if not split:
        raise SplitError("name at least one revision, e.g. q4_k_m=90 fp8=10")
    total = sum(e["weight"] for e in split)
    if total != 100:
        raise SplitError(f"weights add up to {total}; they must add up to 100")
    return split


def split_text(entries: Sequence[tuple[str, int]]) -> str:
    """The split as the dialog's input shows it: `q4_k_m=90 fp8=10`."""
    return " ".join(f"{ref.partition('@')[2] or ref}={w}" for ref, w in entries)


def split_preview(
    before: Sequence[tuple[str, int]], after: Sequence[Obj]
) -> list[tuple[str, int, int]]:
    """(modelRef, weight before, weight after) of every revision in either split."""
    old = dict(before)
    new = {e["modelRef"]: int(e["weight"]) for e in after}
    refs = list(old) + [r for r in new if r not in old]
    return [(r, old.get(r, 0), new.get(r, 0)) for r in refs]


# --- sending ----------------------------------------------------------------------------------


def body(spec: ActionSpec, form: Obj) -> Obj:
    """The request body from a dialog's answer (reason, timeout and force, gpus, split)."""
    out: Obj = {}
    if form.get("reason"):
        out["reason"] = form["reason"]
    if spec.dialog == "drain":
        out["timeoutSeconds"] = int(form.get("timeoutSeconds", 300))
        out["force"] = bool(form.get("force", False))
    elif spec.dialog == "scale":
        out["gpus"] = int(form["gpus"])
    elif spec.dialog == "split":
        out["split"] = form["split"]
    return out


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    message: str


async def perform(
    source: Any, spec: ActionSpec, targets: Sequence[Obj], form: Obj
) -> list[Outcome]:
    """Send the action for each target; each answer or API error becomes an Outcome."""
    outcomes = []
    payload = body(spec, form)
    for obj in targets:
        meta = obj.get("metadata") or {}
        name, project = str(meta.get("name")), meta.get("project")
        try:
            await source.action(spec.plural, name, spec.verb, payload, project)
        except MeshError as exc:
            outcomes.append(Outcome(name, False, f"{spec.label} {name} failed: {exc.message}"))
        else:
            outcomes.append(Outcome(name, True, f"{spec.label} {spec.noun(1)} {name}: done"))
    return outcomes
