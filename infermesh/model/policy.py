"""How the mesh decides: Policy (declarative constraints and behaviours) and Strategy (plugins)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from infermesh.model.common import LinkClass, Percent, PositiveMs, StrategyRef
from infermesh.model.meta import (
    Loc,
    Name,
    ObjectMeta,
    Resource,
    StrictModel,
    name_matches,
    raise_problems,
)

StrategyKind = Literal["inference", "training"]
PluginType = Literal["builtin", "python", "cdylib", "wasm"]
# Kinds a policy can be attached to; Policy and Strategy themselves are not targets.
TargetKind = Literal[
    "Domain", "NodeClass", "CapacityPool", "Model", "Endpoint", "Job", "Node", "Project"
]
NonNegative = Annotated[float, Field(ge=0)]


# Policy ------------------------------------------------------------------------------------


class PolicyTarget(StrictModel):
    """One object by name, or every object of a kind whose labels match."""

    kind: TargetKind
    name: Name | None = None
    matchLabels: dict[str, str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PolicyTarget:
        if (self.name is None) == (self.matchLabels is None):
            raise_problems("PolicyTarget", [((), "set exactly one of name or matchLabels")])
        return self


class PlacementTerm(StrictModel):
    """Where work may (affinity) or may not (antiAffinity) go; every given field must match."""

    domains: list[Name] = Field(default_factory=list)
    nodeClasses: list[Name] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)
    matchLabels: dict[str, str] = Field(default_factory=dict)  # node labels
    required: bool = True  # False: a preference, weighed by `weight`
    weight: int = Field(100, ge=1, le=100)

    @model_validator(mode="after")
    def _selects_something(self) -> PlacementTerm:
        if not (self.domains or self.nodeClasses or self.regions or self.zones or self.matchLabels):
            raise_problems(
                "PlacementTerm",
                [
                    (
                        (),
                        "a term needs at least one of domains, nodeClasses, regions, zones, "
                        "matchLabels",
                    )
                ],
            )
        return self


class Placement(StrictModel):
    affinity: list[PlacementTerm] = Field(default_factory=list)
    antiAffinity: list[PlacementTerm] = Field(default_factory=list)


class ResidencyPolicy(StrictModel):
    allowedRegions: list[str] = Field(default_factory=list)  # empty: anywhere
    deviceOnly: bool = False  # sensitive inputs never leave the caller's device


class NetworkPolicy(StrictModel):
    allowedLinkClasses: list[LinkClass] = Field(default_factory=list)  # empty: all
    # WAN cost per link class as strategies price it (1.0 = neutral).
    costMultipliers: dict[LinkClass, NonNegative] = Field(default_factory=dict)
    rttBudgetMs: PositiveMs | None = None


class CapacityPolicy(StrictModel):
    maxGpus: int | None = Field(None, ge=0)
    quotaGpuHours: NonNegative | None = None
    budgetUSD: NonNegative | None = None
    maxJobs: int | None = Field(None, ge=0)  # running at once


class PriorityPolicy(StrictModel):
    className: Name
    value: int = 0  # higher runs first and may preempt lower


class PreemptionPolicy(StrictModel):
    mode: Literal["never", "lower-priority"] = "lower-priority"
    gracePeriodSeconds: int = Field(300, ge=0)
    checkpointFirst: bool = True  # ask a job to checkpoint before taking its GPUs


class FailureGate(StrictModel):
    """Roll back when the canary's metric passes the threshold (error_rate: a share, 0.02 is
    2 %; p95_ms and ttft_ms: milliseconds)."""

    metric: Literal["error_rate", "p95_ms", "ttft_ms"]
    threshold: NonNegative


class RolloutPolicy(StrictModel):
    """A canary's step plan: each step holds `stepIntervalSeconds`, then the canary takes the
    next step's share when it was no worse than its baseline, or goes back to 0 % when it passed
    a failure gate (docs/slo.md "Canary analysis")."""

    canaryPercent: Percent = 10  # the first step when `steps` is empty (then 100)
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=list)
    stepIntervalSeconds: int = Field(300, ge=0)
    failureGates: list[FailureGate] = Field(default_factory=list)
    autoRollback: bool = True
    minRequests: int = Field(20, ge=1)  # canary requests a step needs before it is judged
    # "No worse": each metric within this share above the baseline's (error rate: points).
    tolerancePercent: Annotated[float, Field(ge=0, le=100)] = 10

    def plan(self) -> list[int]:
        """The canary's share at each step, ending at 100."""
        steps = self.steps or [int(self.canaryPercent) or 10]
        return steps if steps[-1] == 100 else [*steps, 100]

    @model_validator(mode="after")
    def _increasing(self) -> RolloutPolicy:
        if any(a >= b for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise_problems("RolloutPolicy", [(("steps",), "steps must strictly increase")])
        return self


HedgeDelayMode = Literal["fixed", "ttft-p95", "slo-fraction"]


class Hedging(StrictModel):
    """Send the same request to the next-ranked target when the first try is late."""

    enabled: bool = False
    # fixed: delayMs; ttft-p95: ttftMultiple x the target's recent TTFT p95 (delayMs until the
    # router has seen enough requests); slo-fraction: sloFraction x the endpoint's TTFT SLO.
    delayMode: HedgeDelayMode = "fixed"
    delayMs: PositiveMs = 50
    ttftMultiple: Annotated[float, Field(gt=0)] = 1.5
    sloFraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    maxHedges: int = Field(1, ge=1, le=3)
    budgetPercent: Percent = 10  # hedges may be at most this share of the endpoint's requests


DegradeAction = Literal[
    "hedge",
    "local-only",
    "relax-cost-cap",
    "reduce-batch",
    "switch-topology",
    "compress",
    "extend-fusion-window",
]


# What a rule on SLO state may do: the router applies these to every request of the endpoint.
SLO_DEGRADE_ACTIONS = ("hedge", "local-only", "relax-cost-cap")


class DegradeRule(StrictModel):
    """When a link class is slow or lossy, take these actions (inference or training); or, with
    `sloAlert`/`burnRateAbove`, while the endpoint's SLOs burn (the control plane decides that
    and records each switch as an event)."""

    linkClass: LinkClass | None = None  # None: any
    rttAboveMs: PositiveMs | None = None
    lossAbovePercent: Annotated[float, Field(ge=0, le=100)] | None = None
    # On SLO state: while an alert of this severity fires (page: only pages; ticket: any) ...
    sloAlert: Literal["page", "ticket"] | None = None
    # ... or while an SLO of the endpoint burns faster than this over both 5m and 1h.
    burnRateAbove: Annotated[float, Field(gt=0)] | None = None
    actions: list[DegradeAction] = Field(min_length=1)

    @property
    def on_slo(self) -> bool:
        return self.sloAlert is not None or self.burnRateAbove is not None

    @model_validator(mode="after")
    def _one_trigger(self) -> DegradeRule:
        problems: list[tuple[Loc, str]] = []
        link = (self.linkClass, self.rttAboveMs, self.lossAbovePercent)
        if self.on_slo and any(v is not None for v in link):
            problems.append(
                (
                    (),
                    "a rule reacts to a link (linkClass, rttAboveMs, lossAbovePercent) or to "
                    "SLO state (sloAlert, burnRateAbove), not both; make two rules",
                )
            )
        if self.on_slo and (bad := [a for a in self.actions if a not in SLO_DEGRADE_ACTIONS]):
            problems.append(
                (
                    ("actions",),
                    f"{', '.join(bad)}: not an action on SLO state; use "
                    f"{', '.join(SLO_DEGRADE_ACTIONS)}",
                )
            )
        raise_problems("DegradeRule", problems)
        return self


class DegradePolicy(StrictModel):
    hedging: Hedging = Field(default_factory=Hedging)
    rules: list[DegradeRule] = Field(default_factory=list)


class AdmissionPolicy(StrictModel):
    """How much traffic an endpoint takes before it answers 429 (per router)."""

    maxConcurrency: int | None = Field(None, ge=1)  # requests running at once; None: no limit
    queueSize: int = Field(0, ge=0)  # requests that may wait for a slot beyond maxConcurrency
    queueTimeoutMs: PositiveMs = 1000  # how long one may wait before it gets 429
    tenantRatePerSecond: Annotated[float, Field(gt=0)] | None = None  # token bucket per tenant
    tenantBurst: int | None = Field(None, ge=1)  # bucket size; default: one second's rate


class IdempotencyPolicy(StrictModel):
    """What a repeated Idempotency-Key gets."""

    ttlSeconds: int = Field(600, ge=1)  # how long a key and its result are kept
    onInFlight: Literal["reject", "wait"] = "reject"  # reject: 409; wait: the first call's result


class QuarantinePolicy(StrictModel):
    """When an agent takes its node out of service on its own."""

    eccDoubleBit: bool = True  # any double-bit ECC error
    maxTempC: Annotated[float, Field(gt=0)] | None = None
    tempSeconds: int = Field(60, ge=1)  # how long over maxTempC
    errorRatio: Annotated[float, Field(gt=0, le=1)] | None = None


class PolicySpec(StrictModel):
    appliesTo: list[PolicyTarget] = Field(default_factory=list)  # empty: the whole project
    placement: Placement | None = None
    residency: ResidencyPolicy | None = None
    network: NetworkPolicy | None = None
    capacity: CapacityPolicy | None = None
    priority: PriorityPolicy | None = None
    preemption: PreemptionPolicy | None = None
    rollout: RolloutPolicy | None = None
    degrade: DegradePolicy | None = None
    strategy: StrategyRef | None = None
    quarantine: QuarantinePolicy | None = None
    admission: AdmissionPolicy | None = None
    idempotency: IdempotencyPolicy | None = None


class Policy(Resource):
    plural = "policies"
    aliases = ("pol",)
    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec = Field(default_factory=PolicySpec)


# Strategy ----------------------------------------------------------------------------------

_BUILTINS: dict[str, tuple[StrategyKind, str]] = {
    "baseline_rr@1.0": ("inference", "round robin over healthy replicas"),
    "least_queue@1.0": ("inference", "the replica with the shortest queue"),
    "power_of_two@1.0": ("inference", "the less loaded of two random replicas"),
    "prefix_affinity@1.0": ("inference", "the replica likeliest to hold the prompt's KV cache"),
    "hybrid_mesh@1.0": ("inference", "queue, cache, network and cold-start cost combined"),
    "ring@1.0": ("training", "ring all-reduce"),
    "tree@1.0": ("training", "tree all-reduce"),
    "hierarchical@1.0": ("training", "intra-node then inter-node reduction"),
    "net_aware_hier@1.0": ("training", "hierarchical, grouped by measured link cost"),
}
_ENTRY_POINT_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def builtin_named(ref: str) -> str | None:
    """The built-in a reference names: exactly, or by its bare name (`hybrid_mesh`)."""
    return next((name for name in _BUILTINS if name_matches(ref, name)), None)


class StrategySpec(StrictModel):
    kind: StrategyKind
    plugin: PluginType
    # python: `module.path:attribute`; cdylib/wasm: path or URI of the module;
    # builtin: the built-in this one tunes (default: the strategy's own name).
    entryPoint: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Inference only: decide on every request of the project without acting, and export how
    # often it agrees with the live strategy and how often its pick looked faster.
    shadow: bool = False


class Strategy(Resource):
    """A routing (inference) or placement/topology (training) plugin and its parameters."""

    plural = "strategies"
    aliases = ("strat",)
    kind: Literal["Strategy"] = "Strategy"
    spec: StrategySpec

    @model_validator(mode="after")
    def _plugin_is_loadable(self) -> Strategy:
        raise_problems("Strategy", self._problems())
        return self

    def _problems(self) -> Iterator[tuple[Loc, str]]:
        spec, entry = self.spec, self.spec.entryPoint
        if spec.plugin == "builtin":
            wanted = entry or self.metadata.name
            builtin = builtin_named(wanted)
            if builtin is None:
                where: Loc = ("spec", "entryPoint") if entry else ("metadata", "name")
                yield (
                    where,
                    (
                        f"no built-in strategy is named {wanted!r}; built-ins: "
                        f"{', '.join(_BUILTINS)} (or use plugin python, cdylib or wasm)"
                    ),
                )
            elif _BUILTINS[builtin][0] != spec.kind:
                yield ("spec", "kind"), f"{builtin} is a {_BUILTINS[builtin][0]} strategy"
        elif not entry:
            yield ("spec", "entryPoint"), f"a {spec.plugin} plugin needs an entryPoint"
        elif spec.plugin == "python" and not _ENTRY_POINT_RE.fullmatch(entry):
            yield (
                ("spec", "entryPoint"),
                f"{entry!r} is not a Python entry point; write it as module.path:attribute",
            )


BUILTIN_STRATEGIES: dict[str, Strategy] = {
    name: Strategy(
        metadata=ObjectMeta(
            name=name,
            labels={"infermesh.io/builtin": "true"},
            annotations={"infermesh.io/description": description},
        ),
        spec=StrategySpec(kind=kind, plugin="builtin"),
    )
    for name, (kind, description) in _BUILTINS.items()
}
"""Strategies that exist in every project without being applied."""
