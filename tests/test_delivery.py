"""Canary analysis, the rollout step machine and SLO degradation, as pure functions."""

from __future__ import annotations

import pytest

from infermesh.cli.printers import rollout_summary
from infermesh.errors import MeshError
from infermesh.model.policy import DegradeRule, FailureGate, RolloutPolicy
from infermesh.sli import Histogram
from infermesh.store.delivery import degrade, rollout
from infermesh.store.delivery.analysis import judge
from infermesh.store.slo.counts import Counts

T0 = 1_800_000_000.0


def counts(requests: int, errors: int = 0, latency_ms: float = 100, ttft_ms: float = 40) -> Counts:
    lat, first = Histogram(), Histogram()
    for _ in range(requests - errors):
        lat.observe(latency_ms)
        first.observe(ttft_ms)
    return Counts.of(requests=requests, errors=errors, latency=lat, ttft=first)


POLICY = RolloutPolicy(
    steps=[5, 25, 50],
    stepIntervalSeconds=300,
    minRequests=20,
    failureGates=[FailureGate(metric="error_rate", threshold=0.05)],
)
GOOD = counts(200)


# analysis -----------------------------------------------------------------------------------


def test_a_canary_like_its_baseline_passes() -> None:
    verdict = judge(counts(50), counts(500), POLICY)
    assert verdict.outcome == "pass"
    assert verdict.comparison()["canary"]["requests"] == 50


def test_too_few_canary_requests_are_not_judged() -> None:
    verdict = judge(counts(5, errors=5), GOOD, POLICY)
    assert verdict.outcome == "wait"
    assert "5 of 20" in verdict.reason


def test_a_canary_over_its_gate_fails_with_the_numbers() -> None:
    verdict = judge(counts(100, errors=30), GOOD, POLICY)
    assert verdict.outcome == "fail"
    assert "error_rate 30.0% over its gate 5.0% (baseline 0.0%" in verdict.reason
    assert "over 100 vs 200 requests" in verdict.reason


def test_a_slower_canary_within_its_gates_holds() -> None:
    verdict = judge(counts(100, latency_ms=1000), counts(100, latency_ms=100), POLICY)
    assert verdict.outcome == "hold"
    assert "p95_ms" in verdict.reason


def test_within_the_tolerance_is_no_worse() -> None:
    policy = POLICY.model_copy(update={"tolerancePercent": 50})
    assert judge(counts(100, latency_ms=140), counts(100, latency_ms=100), policy).outcome == (
        "pass"
    )


# the step machine ---------------------------------------------------------------------------


SPEC = {
    "modelRef": "m@1",
    "trafficSplit": [{"modelRef": "m@1", "weight": 95}, {"modelRef": "m@2", "weight": 5}],
}


def test_the_canary_is_the_revision_that_is_not_the_model() -> None:
    assert rollout.canary_of(SPEC) == rollout.Canary("m@1", "m@2", 5)
    assert rollout.canary_of({"modelRef": "m@1", "trafficSplit": []}) is None
    three = {"modelRef": "m@1", "trafficSplit": [*SPEC["trafficSplit"], {"modelRef": "m@3"}]}
    assert rollout.canary_of(three) is None


def step(previous: dict | None, now: float, c: Counts, spec: dict = SPEC) -> rollout.Decision:
    canary = rollout.canary_of(spec)
    assert canary is not None
    started = rollout.step_started(canary, previous, now)
    return rollout.decide(canary, "m@1", POLICY, previous, judge(c, GOOD, POLICY), started, now)


def test_a_good_canary_waits_out_its_step_then_advances() -> None:
    first = step(None, T0, counts(0))
    assert first.action is None and first.status is not None
    assert first.status["phase"] == "Progressing" and first.status["step"] == 0
    early = step(first.status, T0 + 100, counts(40))
    assert early.action is None and early.status is not None
    assert early.status["nextStepAt"] is not None
    due = step(early.status, T0 + 300, counts(40))
    assert due.action == "advance"
    assert due.split == [{"modelRef": "m@1", "weight": 75}, {"modelRef": "m@2", "weight": 25}]
    assert due.event is not None and due.event[0] == "CanaryAdvanced"
    assert "5% -> 25% (step 2/4)" in due.event[1]


def test_the_last_step_promotes() -> None:
    at_50 = {
        **SPEC,
        "trafficSplit": [{"modelRef": "m@1", "weight": 50}, {"modelRef": "m@2", "weight": 50}],
    }
    first = step(None, T0, counts(0), at_50)
    done = step(first.status, T0 + 300, counts(100), at_50)
    assert done.action == "promote"
    assert done.status is not None and done.status["phase"] == "Promoted"


def test_a_failing_canary_rolls_back_at_once() -> None:
    first = step(None, T0, counts(0))
    bad = step(first.status, T0 + 20, counts(40, errors=20))
    assert bad.action == "rollback"
    assert bad.status is not None and bad.status["phase"] == "RolledBack"
    assert bad.event is not None and bad.event[2]  # a warning
    assert "rolled back from 5% to 0%: error_rate 50.0%" in bad.event[1]


def test_without_auto_rollback_a_failure_is_reported_once() -> None:
    policy = POLICY.model_copy(update={"autoRollback": False})
    canary = rollout.canary_of(SPEC)
    assert canary is not None
    verdict = judge(counts(40, errors=20), GOOD, policy)
    failed = rollout.decide(canary, "m@1", policy, None, verdict, T0, T0 + 10)
    assert failed.action is None and failed.event is not None
    assert failed.status is not None and failed.status["phase"] == "Failed"
    again = rollout.decide(canary, "m@1", policy, failed.status, verdict, T0, T0 + 20)
    assert again.event is None


def test_a_split_without_a_rollout_policy_is_judged_but_left_alone() -> None:
    canary = rollout.canary_of(SPEC)
    assert canary is not None
    verdict = judge(counts(40, errors=20), GOOD, RolloutPolicy())
    manual = rollout.decide(canary, "m@1", None, None, verdict, T0, T0 + 10)
    assert manual.action is None
    assert manual.status is not None and manual.status["phase"] == "Manual"


def test_a_rollout_ended_by_hand_says_how() -> None:
    live = step(None, T0, counts(0)).status
    assert rollout.decide(None, "m@2", POLICY, live, None, T0, T0).status["phase"] == "Promoted"
    assert rollout.decide(None, "m@1", POLICY, live, None, T0, T0).status["phase"] == "RolledBack"
    assert rollout_summary(live) == "5% 1/4 Progressing"


# degradation on SLO state ---------------------------------------------------------------------


def slo_status(firing: bool, burn_5m: float = 0.0, burn_1h: float = 0.0) -> dict:
    return {
        "alerts": [{"rule": "page-1h-5m", "severity": "page", "firing": firing}],
        "windows": [{"window": "5m", "burn": burn_5m}, {"window": "1h", "burn": burn_1h}],
    }


def test_a_page_switches_hedging_on_and_its_end_switches_it_off() -> None:
    rules = [DegradeRule(sloAlert="page", actions=["hedge"])]
    on, event = degrade.decide(rules, [("ep-availability", slo_status(True))], None, T0)
    assert on is not None and on["actions"] == ["hedge"]
    assert event is not None and event[0] == "DegradeApplied"
    assert "ep-availability: page-1h-5m firing" in event[1]
    same, quiet = degrade.decide(rules, [("ep-availability", slo_status(True))], on, T0 + 10)
    assert same == on and quiet is None
    off, event = degrade.decide(rules, [("ep-availability", slo_status(False))], on, T0 + 600)
    assert off is None
    assert event is not None and event[0] == "DegradeReverted"


def test_a_burn_rule_needs_both_windows() -> None:
    rules = [DegradeRule(burnRateAbove=6, actions=["local-only", "relax-cost-cap"])]
    blip = [("s", slo_status(False, burn_5m=50, burn_1h=2))]
    assert degrade.decide(rules, blip, None, T0) == (None, None)
    burning = [("s", slo_status(False, burn_5m=50, burn_1h=10))]
    status, _ = degrade.decide(rules, burning, None, T0)
    assert status is not None and status["actions"] == ["local-only", "relax-cost-cap"]


def test_link_rules_do_not_fire_on_slo_state() -> None:
    rules = [DegradeRule(rttAboveMs=50, actions=["hedge"])]
    assert degrade.decide(rules, [("s", slo_status(True))], None, T0) == (None, None)


@pytest.mark.parametrize(
    "rule",
    [
        {"sloAlert": "page", "rttAboveMs": 50, "actions": ["hedge"]},
        {"sloAlert": "page", "actions": ["compress"]},
    ],
)
def test_bad_slo_rules_are_refused_with_the_reason(rule: dict) -> None:
    with pytest.raises((MeshError, ValueError)) as info:
        DegradeRule(**rule)
    assert "SLO" in str(info.value)
