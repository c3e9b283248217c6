"""A canary's step plan as a state machine: where it stands, and what the next pass does.

A canary is an Endpoint whose traffic split names two revisions: the baseline (the endpoint's
`modelRef`, else the heavier entry) and the canary. Its rollout status (the Endpoint's
`status.rollout`) moves through these phases:

- `Progressing`: at a step, being judged; it advances once the step has lasted
  `stepIntervalSeconds` and the canary passed, and is `RolledBack` when it fails a gate;
- `Holding`: worse than the baseline but within every gate; `Progressing` again once no worse;
- `Failed`: failed a gate with `autoRollback: false`; an operator promotes or rolls back;
- `Promoted`, `RolledBack`: over (by the controller or by hand); a new split starts anew;
- `Manual`: a split without a rollout policy: judged and shown, never acted on.

`decide` is pure: the controller (controller.py) reads the canary's window, judges it
(analysis.py) and carries out the decision: a new split, a promotion or a rollback, each
through the same audited path as the `:trafficSplit`, `:promote` and `:rollback` actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infermesh.model.policy import RolloutPolicy
from infermesh.store.delivery.analysis import Verdict
from infermesh.store.repository import Obj
from infermesh.store.slo.status import epoch, iso

Action = Literal["advance", "promote", "rollback"]
ACTIVE = frozenset({"Progressing", "Holding", "Failed", "Manual"})


@dataclass(frozen=True, slots=True)
class Canary:
    baseline: str
    canary: str
    weight: int  # the canary's share of the traffic, percent

    def split(self, weight: int) -> list[Obj]:
        return [
            {"modelRef": self.baseline, "weight": 100 - weight},
            {"modelRef": self.canary, "weight": weight},
        ]


def canary_of(spec: Obj) -> Canary | None:
    """The endpoint's canary: a split of exactly two revisions with the canary's share below
    100 % (an A/B split of more is not analysed)."""
    split = [s for s in spec.get("trafficSplit") or [] if s.get("weight", 0) > 0]
    if len(spec.get("trafficSplit") or []) != 2 or len(split) != 2:
        return None
    model = spec.get("modelRef")
    ordered = sorted(split, key=lambda s: (s["modelRef"] != model, -s["weight"]))
    base, canary = ordered
    return Canary(base["modelRef"], canary["modelRef"], int(canary["weight"]))


@dataclass(frozen=True, slots=True)
class Decision:
    status: Obj | None  # the rollout status to store; None: none
    action: Action | None = None
    split: list[Obj] | None = None  # the new split of an `advance`
    event: tuple[str, str, bool] | None = None  # (reason, message, warning)


def same_rollout(canary: Canary, previous: Obj | None) -> bool:
    return bool(
        previous
        and previous.get("phase") in ACTIVE
        and previous.get("canary") == canary.canary
        and previous.get("baseline") == canary.baseline
    )


def step_started(canary: Canary, previous: Obj | None, now: float) -> float:
    """When the canary's current step began: the start of the window it is judged over."""
    if same_rollout(canary, previous) and previous and previous.get("weight") == canary.weight:
        return epoch(previous.get("stepStartedAt")) or now
    return now


def position(plan: list[int], weight: int) -> int:
    """The step the weight has reached (0-based; -1 below the first)."""
    return sum(1 for s in plan if s <= weight) - 1


def decide(
    canary: Canary | None,
    model_ref: str,
    policy: RolloutPolicy | None,
    previous: Obj | None,
    verdict: Verdict | None,
    started: float,
    now: float,
) -> Decision:
    """The next step of the endpoint's rollout (see the module docstring). `verdict` judges the
    canary over [`started`, `now`]; None without a canary."""
    if canary is None:
        return Decision(_ended(previous, model_ref))
    if verdict is None:
        raise ValueError("a canary needs a verdict")
    plan = policy.plan() if policy is not None else []
    status: Obj = {
        "phase": "Manual" if policy is None else "Progressing",
        "canary": canary.canary,
        "baseline": canary.baseline,
        "steps": plan,
        "step": position(plan, canary.weight),
        "weight": canary.weight,
        "stepStartedAt": iso(started),
        "nextStepAt": None,
        "windowSeconds": round(now - started),
        "comparison": verdict.comparison(),
        "verdict": verdict.outcome,
        "reason": verdict.reason,
    }
    if policy is None:
        status["reason"] = f"no rollout policy: the split is the operators' ({verdict.reason})"
        return Decision(status)
    before = previous.get("phase") if same_rollout(canary, previous) and previous else None
    if verdict.outcome == "fail":
        if policy.autoRollback:
            status |= {"phase": "RolledBack", "weight": 0, "stepStartedAt": iso(now)}
            message = (
                f"canary {canary.canary} rolled back from {canary.weight}% to 0%: {verdict.reason}"
            )
            return Decision(status, "rollback", event=("CanaryRolledBack", message, True))
        status["phase"] = "Failed"
        event = None
        if before != "Failed":
            message = f"canary {canary.canary} failed at {canary.weight}% (autoRollback off): "
            event = ("CanaryFailed", message + verdict.reason, True)
        return Decision(status, event=event)
    if verdict.outcome == "hold":
        status["phase"] = "Holding"
        event = None
        if before != "Holding":
            message = f"canary {canary.canary} holds at {canary.weight}%: {verdict.reason}"
            event = ("CanaryHolding", message, True)
        return Decision(status, event=event)
    due = started + policy.stepIntervalSeconds
    if verdict.outcome == "pass" and now >= due:
        following = [s for s in plan if s > canary.weight]
        target = following[0] if following else 100
        if target >= 100:
            status |= {"phase": "Promoted", "weight": 100, "stepStartedAt": iso(now)}
            message = f"canary {canary.canary} promoted after {len(plan) - 1} steps: "
            return Decision(
                status, "promote", event=("CanaryPromoted", message + verdict.reason, False)
            )
        status |= {
            "weight": target,
            "step": position(plan, target),
            "stepStartedAt": iso(now),
            "nextStepAt": iso(now + policy.stepIntervalSeconds),
            "windowSeconds": 0,
        }
        message = (
            f"canary {canary.canary} {canary.weight}% -> {target}% "
            f"(step {position(plan, target) + 1}/{len(plan)}): {verdict.reason}"
        )
        return Decision(status, "advance", canary.split(target), ("CanaryAdvanced", message, False))
    status["nextStepAt"] = iso(due)
    return Decision(status)


def _ended(previous: Obj | None, model_ref: str) -> Obj | None:
    """The status once the split no longer names one canary: what became of the rollout."""
    if previous is None or previous.get("phase") not in ACTIVE:
        return previous
    promoted = model_ref == previous.get("canary")
    return previous | {
        "phase": "Promoted" if promoted else "RolledBack",
        "weight": 100 if promoted else 0,
        "verdict": None,
        "reason": "promoted by an operator" if promoted else "the split was dropped or changed",
    }
