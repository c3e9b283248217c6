"""The agent's decisions, as pure functions of a snapshot: the node's conditions, whether a
report is worth writing (deadband), and which auto-quarantine rules fire.

Quarantine latch: a rule fires once per fault. The ECC rule remembers the double-bit count it
fired on, per GPU, and fires again only when that count grows; the temperature rule fires once
per GPU per hot spell and re-arms when the GPU is back at or under the limit; the error-ratio
rule re-arms when the ratio is back at or under its limit (or no requests came in the last
minute). Readings are latched whether or not the node is quarantined at the time, so after an
operator lifts a quarantine only a new reading (a higher ECC count, a new hot spell) fires again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from infermesh.agent.report import (
    ConditionType,
    GpuReading,
    NodeReport,
    ReportCondition,
)
from infermesh.model import NodeSpec, Policy

AUTO_PREFIX = "auto:"
DEFAULT_TEMP_SECONDS = 30.0

# Conditions ---------------------------------------------------------------------------------


def _condition(
    type_: ConditionType,
    true: bool,
    reason: str = "",
    message: str = "",
    actor: str = "",
) -> ReportCondition:
    return ReportCondition(
        type=type_,
        status="True" if true else "False",
        reason=reason,
        message=message,
        actor=actor,
    )


def _drain_conditions(
    spec: NodeSpec, in_flight: int, now: datetime, previous: Mapping[str, ReportCondition]
) -> tuple[ReportCondition, ReportCondition]:
    """(Draining, Drained). Drained sticks for the drain request it was reached under: a stray
    request arriving after the node emptied does not make it Draining again."""
    drain = spec.drain
    if drain is None:
        return _condition("Draining", False), _condition("Drained", False)
    since = drain.requestedAt
    before = previous.get("Drained")
    if (
        before is not None
        and before.status == "True"
        and (since is None or (before.lastTransitionTime or now) >= since)
    ):
        return _condition("Draining", False), before
    if in_flight == 0:
        drained = _condition("Drained", True, "Drained", "no requests in flight", drain.actor)
        return _condition("Draining", False), drained
    if since is not None and now >= since + timedelta(seconds=drain.timeoutSeconds):
        message = f"{in_flight} requests still in flight after the {drain.timeoutSeconds}s timeout"
        return _condition("Draining", False), _condition(
            "Drained", True, "DrainTimeout", message, drain.actor
        )
    message = f"waiting for {in_flight} in-flight requests" + (
        f" (timeout {drain.timeoutSeconds}s)" if since is not None else ""
    )
    return _condition("Draining", True, "DrainRequested", message, drain.actor), _condition(
        "Drained", False
    )


def node_conditions(
    spec: NodeSpec | None,
    *,
    runtime_problem: str | None,
    in_flight: int,
    now: datetime,
    previous: Sequence[ReportCondition] = (),
    has_runtime: bool = True,
) -> list[ReportCondition]:
    """Ready, Cordoned, Draining, Drained and Quarantined from the operator's spec (None: no Node
    object yet) and what the agent sees; `runtime_problem` is None while the runtime is healthy
    (or, without `has_runtime`, when the agent watches none). lastTransitionTime moves only
    when a status flips."""
    before = {c.type: c for c in previous}
    quarantine = spec.quarantine if spec else None
    if quarantine is not None:
        auto = quarantine.reason.startswith(AUTO_PREFIX)
        quarantined = _condition(
            "Quarantined",
            True,
            "AutoQuarantine" if auto else "OperatorQuarantine",
            quarantine.reason,
            quarantine.actor,
        )
        ready = _condition("Ready", False, "Quarantined", quarantine.reason, quarantine.actor)
    else:
        quarantined = _condition("Quarantined", False)
        if runtime_problem is not None:
            ready = _condition("Ready", False, "RuntimeUnhealthy", runtime_problem)
        else:
            ready = _condition("Ready", True, "RuntimeHealthy" if has_runtime else "Reporting")
    if spec is not None and spec.cordoned:
        cordoned = _condition("Cordoned", True, "Cordoned", "no new placements; serving continues")
    else:
        cordoned = _condition("Cordoned", False)
    if spec is not None:
        draining, drained = _drain_conditions(spec, in_flight, now, before)
    else:
        draining, drained = _condition("Draining", False), _condition("Drained", False)
    out = []
    for cond in (ready, cordoned, draining, drained, quarantined):
        old = before.get(cond.type)
        flipped = old is None or old.status != cond.status
        when = now if flipped or old is None else old.lastTransitionTime
        out.append(cond.model_copy(update={"lastTransitionTime": when}))
    return out


# Deadband -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deadband:
    """When a report is written: at once when something an operator or a router acts on
    changes, on a telemetry move larger than the band (at most once per `min_interval_s`), and
    at least every `max_interval_s`.

    The lease, not the report, says a node is alive, so the forced rewrite only refreshes what
    drifted inside the band: every 10 s, 2,000 idle nodes make ~200 etcd writes a second."""

    util_pct: float = 5.0
    temp_c: float = 2.0
    min_interval_s: float = 1.0
    max_interval_s: float = 10.0


def _state(report: NodeReport) -> tuple[object, ...]:
    """What must reach etcd at once when it changes. Messages are left out: a Draining message
    counts down with every finished request, and the next regular write carries it."""
    rt = report.runtime
    return (
        tuple((c.type, c.status, c.reason, c.actor) for c in report.conditions),
        report.observedGeneration,
        report.facts,
        report.agent.address,
        (rt.healthy, tuple(rt.models)) if rt else None,
        tuple((g.uuid, g.eccVolatileSbe, g.eccVolatileDbe) for g in report.gpus),
    )


def _moved(last: NodeReport, current: NodeReport, band: Deadband) -> str | None:
    """A telemetry move out of the band (the GPUs are the same ones: `_state` says so)."""
    for old, new in zip(last.gpus, current.gpus, strict=True):
        if abs(new.utilPct - old.utilPct) > band.util_pct:
            return "util"
        if abs(new.tempC - old.tempC) > band.temp_c:
            return "temperature"
    old_rt, new_rt = last.runtime, current.runtime
    if old_rt and new_rt and (old_rt.running, old_rt.waiting) != (new_rt.running, new_rt.waiting):
        return "requests"
    return None


def write_due(
    last: NodeReport | None, current: NodeReport, since_last_write: float, band: Deadband
) -> str | None:
    """Why `current` must be written now (the reason counts writes), or None to wait."""
    if last is None:
        return "register"
    if _state(last) != _state(current):
        return "state"
    if since_last_write >= band.max_interval_s:
        return "interval"
    if since_last_write < band.min_interval_s:
        return None
    return _moved(last, current, band)


# Quarantine rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuarantineRules:
    """Auto-quarantine thresholds. The defaults apply where no Policy of the project says
    otherwise."""

    ecc_double_bit: bool = True
    max_temp_c: float | None = 90.0
    temp_seconds: float = DEFAULT_TEMP_SECONDS
    error_ratio: float | None = 0.5
    error_min_requests: int = 10  # a ratio over fewer answers says little


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What Policy targets select a node by."""

    project: str
    name: str
    node_class: str | None = None
    domain: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    node_class_labels: Mapping[str, str] = field(default_factory=dict)


def _matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return selector is not None and all(labels.get(k) == v for k, v in selector.items())


def policy_applies(policy: Policy, node: NodeIdentity) -> bool:
    """A policy with no targets covers its whole project; otherwise one target must name the
    node, its NodeClass, its Domain or the project, or match their labels."""
    targets = policy.spec.appliesTo
    if not targets:
        return True
    for t in targets:
        if t.kind == "Node" and (t.name == node.name or _matches(t.matchLabels, node.labels)):
            return True
        if t.kind == "NodeClass" and (
            (t.name is not None and t.name == node.node_class)
            or _matches(t.matchLabels, node.node_class_labels)
        ):
            return True
        if t.kind == "Domain" and t.name is not None and t.name == node.domain:
            return True
        if t.kind == "Project" and t.name == node.project:
            return True
    return False


def quarantine_rules(policies: Iterable[Policy], node: NodeIdentity) -> QuarantineRules:
    """The rules for `node`: the defaults when no applicable policy has a `quarantine` section;
    otherwise those sections merged, strictest wins (a rule is on if any policy turns it on,
    with the lowest threshold and the shortest duration given)."""
    found = [
        p.spec.quarantine
        for p in policies
        if p.spec.quarantine is not None and policy_applies(p, node)
    ]
    if not found:
        return QuarantineRules()
    hot = [q for q in found if q.maxTempC is not None]
    ratios = [q.errorRatio for q in found if q.errorRatio is not None]
    return QuarantineRules(
        ecc_double_bit=any(q.eccDoubleBit for q in found),
        max_temp_c=min(q.maxTempC for q in hot if q.maxTempC is not None) if hot else None,
        temp_seconds=min(q.tempSeconds for q in hot) if hot else DEFAULT_TEMP_SECONDS,
        error_ratio=min(ratios) if ratios else None,
    )


@dataclass(frozen=True, slots=True)
class RuleFiring:
    rule: str  # ecc-dbe | gpu-temperature | runtime-error-ratio
    readings: str


def quarantine_reason(firings: Sequence[RuleFiring]) -> str:
    """`auto: rule ecc-dbe fired: GPU 0 GPU-… volatile double-bit ECC errors 1`."""
    return f"{AUTO_PREFIX} " + "; ".join(f"rule {f.rule} fired: {f.readings}" for f in firings)


@dataclass(frozen=True, slots=True)
class RuleState:
    """The latch (see the module docstring). Times are monotonic seconds."""

    ecc_seen: Mapping[str, int] = field(default_factory=dict)  # DBE count acted on, by GPU uuid
    hot_since: Mapping[str, float] = field(default_factory=dict)  # by GPU uuid
    hot_fired: frozenset[str] = frozenset()
    errors_fired: bool = False


@dataclass(frozen=True, slots=True)
class RuntimeErrors:
    ratio: float | None  # failed / all answers over the last minute
    requests: float  # all answers over the last minute


def evaluate_rules(
    rules: QuarantineRules,
    gpus: Sequence[GpuReading],
    errors: RuntimeErrors | None,
    now: float,
    state: RuleState,
) -> tuple[list[RuleFiring], RuleState]:
    """The rules that fire on this snapshot, and the latch after it."""
    firings: list[RuleFiring] = []
    ecc_seen = dict(state.ecc_seen)
    if rules.ecc_double_bit:
        for g in gpus:
            if g.eccVolatileDbe > ecc_seen.get(g.uuid, 0):
                ecc_seen[g.uuid] = g.eccVolatileDbe
                firings.append(
                    RuleFiring(
                        "ecc-dbe",
                        f"GPU {g.index} {g.uuid} volatile double-bit ECC errors {g.eccVolatileDbe}",
                    )
                )
    hot_since: dict[str, float] = {}
    hot_fired: set[str] = set()
    limit = rules.max_temp_c
    for g in gpus:
        if limit is None or g.tempC <= limit:
            continue  # cooled down (or no rule): re-armed
        since = hot_since[g.uuid] = state.hot_since.get(g.uuid, now)
        if g.uuid in state.hot_fired:
            hot_fired.add(g.uuid)
        elif now - since >= rules.temp_seconds:
            hot_fired.add(g.uuid)
            firings.append(
                RuleFiring(
                    "gpu-temperature",
                    f"GPU {g.index} {g.uuid} at {g.tempC:.1f} °C, over {limit:g} °C "
                    f"for {now - since:.0f}s (limit {rules.temp_seconds:g}s)",
                )
            )
    over = (
        rules.error_ratio is not None
        and errors is not None
        and errors.ratio is not None
        and errors.requests >= rules.error_min_requests
        and errors.ratio > rules.error_ratio
    )
    if over and not state.errors_fired and errors is not None and errors.ratio is not None:
        failed = round(errors.ratio * errors.requests)
        firings.append(
            RuleFiring(
                "runtime-error-ratio",
                f"runtime error ratio {errors.ratio:.2f} over {rules.error_ratio:g} in the last "
                f"minute ({failed} of {errors.requests:.0f} requests failed)",
            )
        )
    new_state = RuleState(ecc_seen, hot_since, frozenset(hot_fired), bool(over))
    return firings, new_state
