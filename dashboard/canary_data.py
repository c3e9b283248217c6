"""Canaries as the dashboard shows them: an endpoint's revisions and weights (`spec.modelRef`,
`spec.trafficSplit`), its rollout (`status.rollout` when a rollout controller reports one, else
the plan of the Policy that applies), and the splits an operator may set. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from infermesh.cli.printers import dig

Obj = dict[str, Any]

COMPARED = (
    ("requests", "Requests"),
    ("error_rate", "Error ratio"),
    ("p95_ms", "Latency p95 (ms)"),
    ("ttft_ms", "TTFT p95 (ms)"),
)


def name_of(obj: Obj) -> str:
    return str(dig(obj, "metadata.name") or "")


def baseline(endpoint: Obj) -> str:
    return str(dig(endpoint, "spec.modelRef") or "")


def revisions(endpoint: Obj) -> list[tuple[str, int, str]]:
    """(model reference, weight %, role) of each revision taking traffic: the split's entries,
    or the endpoint's model with all of it. Role: `baseline` (spec.modelRef) or `canary`."""
    model = baseline(endpoint)
    split = dig(endpoint, "spec.trafficSplit") or []
    if not split:
        return [(model, 100, "baseline")]
    out = [
        (str(s.get("modelRef")), int(s.get("weight") or 0), _role(str(s.get("modelRef")), model))
        for s in split
    ]
    out.sort(key=lambda r: (r[2] != "baseline", r[0]))
    return out


def _role(ref: str, model: str) -> str:
    return "baseline" if ref == model else "canary"


def canaries(endpoint: Obj) -> list[str]:
    """The split's revisions other than the endpoint's model, heaviest first."""
    return [
        r for r, _, role in sorted(revisions(endpoint), key=lambda x: -x[1]) if role != "baseline"
    ]


def split_text(endpoint: Obj) -> str:
    split = dig(endpoint, "spec.trafficSplit") or []
    return ", ".join(f"{s.get('modelRef')}={s.get('weight')}%" for s in split)


def endpoints_frame(endpoints: list[Obj]) -> pd.DataFrame:
    rows = []
    for ep in sorted(endpoints, key=name_of):
        rollout = dig(ep, "status.rollout") or {}
        rows.append(
            {
                "Endpoint": name_of(ep),
                "Model": baseline(ep),
                "Split": split_text(ep) or "all to model",
                "Canaries": len(canaries(ep)),
                "Rollout": rollout.get("phase") or "",
                "Domains": ", ".join(
                    f"{d.get('name')}={d.get('weight', 100)}%"
                    for d in dig(ep, "spec.domains") or []
                ),
            }
        )
    columns = ["Endpoint", "Model", "Split", "Canaries", "Rollout", "Domains"]
    return pd.DataFrame(rows, columns=columns)


# --- rollout -------------------------------------------------------------------------------


@dataclass
class Rollout:
    """What the page shows of a rollout: from `status.rollout` (`source="status"`) or, when
    no controller reports one, the plan of the applying Policy (`source="policy"`)."""

    source: str  # status | policy
    steps: list[int]
    phase: str | None = None
    step: int | None = None  # index into steps of the current step
    weight: int | None = None
    canary: str | None = None
    baseline: str | None = None
    step_started_at: str | None = None
    next_step_at: str | None = None
    verdict: str | None = None
    reason: str | None = None
    policy: str | None = None
    interval_s: int | None = None
    gates: list[str] = field(default_factory=list)
    comparison: Obj = field(default_factory=dict)


def policy_applies(policy: Obj, endpoint: Obj) -> bool:
    """Whether a Policy's `appliesTo` covers an endpoint: no targets (the whole project), the
    endpoint by name or labels, one of its domains, or its model."""
    targets = dig(policy, "spec.appliesTo") or []
    if not targets:
        return True
    labels = dig(endpoint, "metadata.labels") or {}
    domains = {d.get("name") for d in dig(endpoint, "spec.domains") or []}
    for t in targets:
        kind, name, match = t.get("kind"), t.get("name"), t.get("matchLabels")
        if kind == "Endpoint" and (
            name == name_of(endpoint)
            or (match and all(labels.get(k) == v for k, v in match.items()))
        ):
            return True
        if (kind == "Domain" and name in domains) or (
            kind == "Model" and name == baseline(endpoint)
        ):
            return True
    return False


def _specificity(policy: Obj, endpoint: Obj) -> tuple[int, str]:
    targets = dig(policy, "spec.appliesTo") or []
    named = any(t.get("kind") == "Endpoint" and t.get("name") == name_of(endpoint) for t in targets)
    return (0 if named else 1 if targets else 2), name_of(policy)


def rollout_policy(endpoint: Obj, policies: list[Obj]) -> Obj | None:
    """The Policy whose rollout plan applies to the endpoint (the most specific one)."""
    candidates = [
        p for p in policies if dig(p, "spec.rollout") is not None and policy_applies(p, endpoint)
    ]
    candidates.sort(key=lambda p: _specificity(p, endpoint))
    return candidates[0] if candidates else None


def rollout(endpoint: Obj, policies: list[Obj]) -> Rollout | None:
    status = dig(endpoint, "status.rollout")
    policy = rollout_policy(endpoint, policies)
    plan = dig(policy, "spec.rollout") or {}
    gates = [f"{g.get('metric')} > {g.get('threshold')}" for g in plan.get("failureGates") or []]
    if isinstance(status, dict) and status:
        return Rollout(
            source="status",
            steps=[int(s) for s in status.get("steps") or plan.get("steps") or []],
            phase=status.get("phase"),
            step=status.get("step"),
            weight=status.get("weight"),
            canary=status.get("canary"),
            baseline=status.get("baseline"),
            step_started_at=status.get("stepStartedAt"),
            next_step_at=status.get("nextStepAt"),
            verdict=status.get("verdict"),
            reason=status.get("reason"),
            policy=name_of(policy) if policy else None,
            interval_s=plan.get("stepIntervalSeconds"),
            gates=gates,
            comparison=status.get("comparison") or {},
        )
    if policy is None:
        return None
    steps = [int(s) for s in plan.get("steps") or []] or [int(plan.get("canaryPercent") or 10), 100]
    weight = canary_weight(endpoint)
    return Rollout(
        source="policy",
        steps=steps,
        step=position(steps, weight) if weight else None,
        weight=weight or None,
        policy=name_of(policy),
        interval_s=plan.get("stepIntervalSeconds"),
        gates=gates,
    )


def canary_weight(endpoint: Obj) -> int:
    """The share of the endpoint's traffic its canaries take now (%)."""
    return sum(w for _, w, role in revisions(endpoint) if role == "canary")


def position(steps: list[int], weight: int) -> int | None:
    """The index of the last step of the plan a canary weight has reached (None: not the
    first)."""
    reached = [i for i, s in enumerate(steps) if s <= weight]
    return reached[-1] if reached else None


def comparison_frame(comparison: Obj) -> pd.DataFrame:
    """`status.rollout.comparison` side by side: one row per metric, canary, baseline and
    the canary's difference."""
    canary, base = comparison.get("canary") or {}, comparison.get("baseline") or {}
    rows = []
    for key, label in COMPARED:
        c, b = canary.get(key), base.get(key)
        delta = None if c is None or b is None else round(float(c) - float(b), 4)
        rows.append({"Metric": label, "Canary": c, "Baseline": b, "Canary − baseline": delta})
    return pd.DataFrame(rows, columns=["Metric", "Canary", "Baseline", "Canary − baseline"])


def degrade_text(endpoint: Obj) -> str | None:
    """`status.degrade` in a sentence, None when the endpoint is not degraded."""
    degrade = dig(endpoint, "status.degrade")
    if not isinstance(degrade, dict) or not degrade.get("actions"):
        return None
    text = f"degraded: {', '.join(str(a) for a in degrade['actions'])}"
    if degrade.get("since"):
        text += f" since {degrade['since']}"
    if degrade.get("reason"):
        text += f" ({degrade['reason']})"
    return text


# --- setting a split -----------------------------------------------------------------------


def reference(revision: str, endpoint: Obj) -> str:
    """A bare revision (`fp8`) means that revision of the endpoint's model, as `mesh endpoint
    traffic-split` reads it; a full reference (`chat-70b@fp8`) is taken as is."""
    revision = revision.strip()
    if "@" in revision:
        return revision
    return f"{baseline(endpoint).partition('@')[0]}@{revision}"


def build_split(weights: dict[str, int], endpoint: Obj) -> tuple[list[Obj], str | None]:
    """The `:trafficSplit` body's split from revision -> weight, and what is wrong with it
    (None when it can be sent)."""
    split: list[Obj] = []
    seen: set[str] = set()
    for revision, weight in weights.items():
        if not revision.strip():
            continue
        ref = reference(revision, endpoint)
        if ref in seen:
            return [], f"{ref} is listed twice"
        seen.add(ref)
        split.append({"modelRef": ref, "weight": int(weight)})
    if not split:
        return [], "give at least one revision and its weight"
    total = sum(s["weight"] for s in split)
    if total != 100:
        return split, f"weights add up to {total}%; they must add up to 100%"
    return split, None


def zeroes(split: list[Obj]) -> list[str]:
    """The revisions a split sends no traffic (a split to 0 % is confirmed like a rollback)."""
    return [str(s["modelRef"]) for s in split if int(s.get("weight") or 0) == 0]
