"""`RoutingPolicy`: what the project's Policy objects say about one Endpoint, resolved once per
view change so the request path reads plain fields instead of walking policies.

Each section (admission, idempotency, degrade, residency, network, strategy) comes whole from the
most specific policy that has it: one naming the Endpoint beats one matching its labels, which
beats one naming its Model, which beats one for the whole project (no appliesTo, or naming the
Project). Sections are never merged field by field, so what a policy says is what applies. Ties go
to the policy whose name sorts first, so every router resolves the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from infermesh.model import Endpoint, Policy
from infermesh.model.common import StrategyRef
from infermesh.model.meta import name_matches
from infermesh.model.policy import (
    AdmissionPolicy,
    DegradePolicy,
    DegradeRule,
    Hedging,
    IdempotencyPolicy,
    NetworkPolicy,
    PolicySpec,
    PolicyTarget,
    ResidencyPolicy,
)

# How specifically a policy selects an endpoint; higher wins.
PROJECT, MODEL, ENDPOINT_LABELS, ENDPOINT_NAME = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    admission: AdmissionPolicy | None = None
    idempotency: IdempotencyPolicy = field(default_factory=IdempotencyPolicy)
    hedging: Hedging = field(default_factory=Hedging)
    degrade_rules: tuple[DegradeRule, ...] = ()
    allowed_regions: frozenset[str] | None = None  # None: anywhere
    device_only: bool = False  # residency: sensitive inputs never leave the caller's device
    allowed_link_classes: frozenset[str] = frozenset()  # empty: all
    link_cost_multipliers: Mapping[str, float] = field(default_factory=dict)
    rtt_budget_ms: float | None = None
    # The policy's strategy; the endpoint's own spec.strategy is the caller's to prefer.
    strategy: StrategyRef | None = None


def specificity(policy: Policy, endpoint: Endpoint) -> int | None:
    """How specifically `policy` selects `endpoint` (the best of its targets); None: not at all."""
    targets = policy.spec.appliesTo
    if not targets:
        return PROJECT
    found = [s for t in targets if (s := _target_specificity(t, endpoint)) is not None]
    return max(found, default=None)


def _target_specificity(target: PolicyTarget, endpoint: Endpoint) -> int | None:
    meta = endpoint.metadata
    if target.kind == "Endpoint":
        if target.name is not None:
            return ENDPOINT_NAME if target.name == meta.name else None
        selector = target.matchLabels or {}
        matched = all(meta.labels.get(k) == v for k, v in selector.items())
        return ENDPOINT_LABELS if matched else None
    if target.kind == "Model" and target.name is not None:
        # A bare model name (`chat-70b`) covers every revision of it.
        return MODEL if name_matches(target.name, endpoint.spec.modelRef) else None
    if target.kind == "Project" and target.name == meta.project:
        return PROJECT
    return None


def ranked_specs(policies: Iterable[Policy], endpoint: Endpoint) -> list[PolicySpec]:
    """The specs of the policies that apply to `endpoint`, most specific first; a section
    comes from the first that has it (see the module docstring)."""
    ranked = sorted(
        ((s, p) for p in policies if (s := specificity(p, endpoint)) is not None),
        key=lambda sp: (-sp[0], sp[1].metadata.name),
    )
    return [p.spec for _, p in ranked]


def resolve_policy(policies: Iterable[Policy], endpoint: Endpoint) -> RoutingPolicy:
    """The routing policy for `endpoint` from its project's policies (see the module docstring)."""
    specs = ranked_specs(policies, endpoint)
    admission = next((s.admission for s in specs if s.admission is not None), None)
    idempotency = next((s.idempotency for s in specs if s.idempotency is not None), None)
    degrade = next((s.degrade for s in specs if s.degrade is not None), DegradePolicy())
    residency = next((s.residency for s in specs if s.residency is not None), ResidencyPolicy())
    network = next((s.network for s in specs if s.network is not None), NetworkPolicy())
    strategy = next((s.strategy for s in specs if s.strategy is not None), None)
    return RoutingPolicy(
        admission=admission,
        idempotency=idempotency or IdempotencyPolicy(),
        hedging=degrade.hedging,
        degrade_rules=tuple(degrade.rules),
        allowed_regions=frozenset(residency.allowedRegions) or None,
        device_only=residency.deviceOnly,
        allowed_link_classes=frozenset(network.allowedLinkClasses),
        link_cost_multipliers=dict(network.costMultipliers),
        rtt_budget_ms=network.rttBudgetMs,
        strategy=strategy,
    )
