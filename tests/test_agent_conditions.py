"""The agent's decisions as pure functions: conditions from the operator's spec, the deadband
that keeps etcd writes down, and the auto-quarantine rules with their latch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infermesh.agent.conditions import (
    Deadband,
    NodeIdentity,
    QuarantineRules,
    RuleState,
    RuntimeErrors,
    evaluate_rules,
    node_conditions,
    quarantine_reason,
    quarantine_rules,
    write_due,
)
from infermesh.agent.report import (
    AgentInfo,
    Facts,
    GpuReading,
    NodeReport,
    ReportCondition,
    RuntimeReading,
)
from infermesh.model import NodeSpec, Policy

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def spec(**fields: object) -> NodeSpec:
    return NodeSpec.model_validate({"nodeClassRef": "h100", **fields})


def status(conditions: list[ReportCondition]) -> dict[str, str]:
    return {c.type: c.status for c in conditions}


def by_type(conditions: list[ReportCondition], type_: str) -> ReportCondition:
    return next(c for c in conditions if c.type == type_)


def test_a_healthy_node_without_operator_intent_is_ready() -> None:
    for node_spec in (None, spec()):
        got = node_conditions(node_spec, runtime_problem=None, in_flight=3, now=T0)
        assert status(got) == {
            "Ready": "True",
            "Cordoned": "False",
            "Draining": "False",
            "Drained": "False",
            "Quarantined": "False",
        }


def test_an_unhealthy_runtime_is_not_ready_and_says_why() -> None:
    got = node_conditions(
        None, runtime_problem="runtime at x is not answering", in_flight=0, now=T0
    )
    ready = by_type(got, "Ready")
    assert (ready.status, ready.reason) == ("False", "RuntimeUnhealthy")
    assert "not answering" in ready.message


def test_cordon_keeps_serving() -> None:
    got = node_conditions(spec(cordoned=True), runtime_problem=None, in_flight=2, now=T0)
    assert status(got)["Cordoned"] == "True" and status(got)["Ready"] == "True"


def test_quarantine_takes_reason_and_actor_from_the_spec() -> None:
    record = {"reason": "auto: rule ecc-dbe fired: GPU 0", "actor": "agent-n1", "since": T0}
    got = node_conditions(spec(quarantine=record), runtime_problem=None, in_flight=0, now=T0)
    quarantined = by_type(got, "Quarantined")
    assert (quarantined.status, quarantined.reason) == ("True", "AutoQuarantine")
    assert (quarantined.message, quarantined.actor) == (record["reason"], "agent-n1")
    assert status(got)["Ready"] == "False"
    by_hand = spec(quarantine={"reason": "flaky NIC", "actor": "alice"})
    got = node_conditions(by_hand, runtime_problem=None, in_flight=0, now=T0)
    assert by_type(got, "Quarantined").reason == "OperatorQuarantine"


def test_drain_waits_for_in_flight_then_stays_drained() -> None:
    drain = spec(cordoned=True, drain={"actor": "bob", "requestedAt": T0, "timeoutSeconds": 60})
    draining = node_conditions(drain, runtime_problem=None, in_flight=3, now=T0)
    assert status(draining)["Draining"] == "True" and status(draining)["Drained"] == "False"
    assert by_type(draining, "Draining").actor == "bob"
    assert "3 in-flight" in by_type(draining, "Draining").message

    later = T0 + timedelta(seconds=5)
    drained = node_conditions(
        drain, runtime_problem=None, in_flight=0, now=later, previous=draining
    )
    assert status(drained)["Draining"] == "False" and status(drained)["Drained"] == "True"
    assert by_type(drained, "Drained").lastTransitionTime == later

    # A stray request after the node emptied does not make it Draining again.
    stray = node_conditions(
        drain, runtime_problem=None, in_flight=1, now=later + timedelta(seconds=1), previous=drained
    )
    assert status(stray)["Drained"] == "True" and status(stray)["Draining"] == "False"
    assert by_type(stray, "Drained").lastTransitionTime == later


def test_drain_timeout_counts_as_drained() -> None:
    drain = spec(drain={"requestedAt": T0, "timeoutSeconds": 30})
    got = node_conditions(drain, runtime_problem=None, in_flight=5, now=T0 + timedelta(seconds=31))
    drained = by_type(got, "Drained")
    assert (drained.status, drained.reason) == ("True", "DrainTimeout")
    assert "5 requests" in drained.message


def test_transition_time_moves_only_on_a_flip() -> None:
    first = node_conditions(None, runtime_problem=None, in_flight=0, now=T0)
    later = T0 + timedelta(minutes=1)
    again = node_conditions(None, runtime_problem=None, in_flight=0, now=later, previous=first)
    assert by_type(again, "Ready").lastTransitionTime == T0
    flipped = node_conditions(
        spec(cordoned=True), runtime_problem=None, in_flight=0, now=later, previous=again
    )
    assert by_type(flipped, "Cordoned").lastTransitionTime == later
    assert by_type(flipped, "Ready").lastTransitionTime == T0


# deadband -----------------------------------------------------------------------------------


def gpu(util: float = 0.0, temp: float = 40.0, dbe: int = 0, index: int = 0) -> GpuReading:
    return GpuReading(
        index=index,
        uuid=f"GPU-{index}",
        name="NVIDIA H100 80GB HBM3",
        utilPct=util,
        memUsedMiB=1000,
        memTotalMiB=81920,
        tempC=temp,
        powerW=100,
        powerLimitW=700,
        eccVolatileDbe=dbe,
    )


def report(
    *, util: float = 0.0, temp: float = 40.0, running: int = 0, cordoned: bool = False
) -> NodeReport:
    conditions = node_conditions(
        spec(cordoned=cordoned), runtime_problem=None, in_flight=running, now=T0
    )
    return NodeReport(
        agent=AgentInfo(version="0", startedAt=T0, leaseTtlSeconds=5),
        facts=Facts(nodeClass="h100", gpu="H100", gpuCount=1),
        gpus=[gpu(util, temp)],
        runtime=RuntimeReading(kind="vllm", url="http://x", healthy=True, running=running),
        inFlight=running,
        conditions=conditions,
        heartbeat=T0,
    )


def test_deadband_holds_small_moves_and_passes_big_ones() -> None:
    band = Deadband(util_pct=5, temp_c=2, min_interval_s=1, max_interval_s=3)
    last = report(util=50, temp=60)
    assert write_due(None, last, 0, band) == "register"
    assert write_due(last, report(util=54, temp=61.5), 2.0, band) is None
    assert write_due(last, report(util=56, temp=60), 2.0, band) == "util"
    assert write_due(last, report(util=50, temp=62.5), 2.0, band) == "temperature"
    assert write_due(last, report(util=50, temp=60, running=1), 2.0, band) == "requests"
    assert write_due(last, report(util=50, temp=60), 3.0, band) == "interval"


def test_telemetry_moves_wait_for_the_min_interval_but_state_changes_do_not() -> None:
    band = Deadband(min_interval_s=1, max_interval_s=3)
    last = report(util=0)
    assert write_due(last, report(util=100), 0.2, band) is None
    assert write_due(last, report(cordoned=True), 0.2, band) == "state"


# quarantine rules ---------------------------------------------------------------------------

NODE = NodeIdentity(project="p", name="n1", node_class="h100", domain="edge-eu")


def policy(
    name: str, quarantine: dict[str, object], applies_to: list[dict] | None = None
) -> Policy:
    return Policy.model_validate(
        {
            "kind": "Policy",
            "metadata": {"name": name, "project": "p"},
            "spec": {"quarantine": quarantine, "appliesTo": applies_to or []},
        }
    )


def test_defaults_apply_without_a_quarantine_policy() -> None:
    rules = quarantine_rules([], NODE)
    assert rules == QuarantineRules()
    assert (rules.ecc_double_bit, rules.max_temp_c, rules.temp_seconds) == (True, 90, 30)
    assert rules.error_ratio == 0.5


def test_policies_that_target_the_node_merge_strictest_first() -> None:
    policies = [
        policy("thermal", {"maxTempC": 85, "tempSeconds": 20}),
        policy("others", {"maxTempC": 70}, [{"kind": "NodeClass", "name": "l4"}]),
        policy(
            "edge",
            {"eccDoubleBit": False, "errorRatio": 0.3},
            [{"kind": "Domain", "name": "edge-eu"}],
        ),
    ]
    rules = quarantine_rules(policies, NODE)
    assert (rules.max_temp_c, rules.temp_seconds) == (85, 20)  # "others" targets L4 nodes only
    assert rules.error_ratio == 0.3
    assert rules.ecc_double_bit  # "thermal" keeps the ECC rule on


def test_ecc_rule_fires_once_per_new_reading() -> None:
    rules = QuarantineRules()
    fired, state = evaluate_rules(rules, [gpu(dbe=0)], None, 0.0, RuleState())
    assert fired == []
    fired, state = evaluate_rules(rules, [gpu(dbe=1)], None, 1.0, state)
    assert [f.rule for f in fired] == ["ecc-dbe"]
    assert quarantine_reason(fired) == (
        "auto: rule ecc-dbe fired: GPU 0 GPU-0 volatile double-bit ECC errors 1"
    )
    fired, state = evaluate_rules(rules, [gpu(dbe=1)], None, 2.0, state)
    assert fired == []  # the same count again (e.g. after an operator unquarantined)
    fired, state = evaluate_rules(rules, [gpu(dbe=2)], None, 3.0, state)
    assert [f.rule for f in fired] == ["ecc-dbe"]


def test_temperature_rule_needs_a_hot_spell_and_rearms_below_the_limit() -> None:
    rules = QuarantineRules(max_temp_c=90, temp_seconds=30)
    fired, state = evaluate_rules(rules, [gpu(temp=95)], None, 100.0, RuleState())
    assert fired == []
    fired, state = evaluate_rules(rules, [gpu(temp=96)], None, 129.0, state)
    assert fired == []
    fired, state = evaluate_rules(rules, [gpu(temp=96)], None, 130.0, state)
    assert [f.rule for f in fired] == ["gpu-temperature"]
    assert "96.0 °C, over 90 °C for 30s" in fired[0].readings
    fired, state = evaluate_rules(rules, [gpu(temp=97)], None, 200.0, state)
    assert fired == []  # still the same hot spell
    fired, state = evaluate_rules(rules, [gpu(temp=80)], None, 210.0, state)
    fired, state = evaluate_rules(rules, [gpu(temp=95)], None, 220.0, state)
    fired, state = evaluate_rules(rules, [gpu(temp=95)], None, 250.0, state)
    assert [f.rule for f in fired] == ["gpu-temperature"]  # a new spell


def test_error_ratio_rule_needs_enough_requests_and_rearms() -> None:
    rules = QuarantineRules(error_ratio=0.5, error_min_requests=10)
    few = RuntimeErrors(ratio=1.0, requests=3)
    assert evaluate_rules(rules, [], few, 0.0, RuleState())[0] == []
    bad = RuntimeErrors(ratio=0.6, requests=50)
    fired, state = evaluate_rules(rules, [], bad, 1.0, RuleState())
    assert [f.rule for f in fired] == ["runtime-error-ratio"]
    assert "0.60 over 0.5" in fired[0].readings and "30 of 50" in fired[0].readings
    assert evaluate_rules(rules, [], bad, 2.0, state)[0] == []
    _, state = evaluate_rules(rules, [], RuntimeErrors(ratio=0.1, requests=50), 3.0, state)
    assert evaluate_rules(rules, [], bad, 4.0, state)[0] != []


def test_rules_turned_off_by_policy_do_not_fire() -> None:
    rules = quarantine_rules([policy("lax", {"eccDoubleBit": False})], NODE)
    assert rules.max_temp_c is None and rules.error_ratio is None
    fired, _ = evaluate_rules(
        rules, [gpu(dbe=5, temp=120)], RuntimeErrors(1.0, 100), 1000.0, RuleState()
    )
    assert fired == []
