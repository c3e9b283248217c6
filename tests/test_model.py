"""The object model: what validates, what is refused, and how the refusal reads."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from infermesh.errors import Invalid, NotFound
from infermesh.model import (
    BUILTIN_STRATEGIES,
    KINDS,
    Condition,
    Endpoint,
    Job,
    Model,
    Node,
    ObjectMeta,
    Project,
    Status,
    kind_for,
    parse_object,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def seed(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def errors_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(Invalid) as info:
        parse_object(data)
    out: dict[str, str] = {}
    for e in info.value.details["errors"]:
        out[e["field"]] = "; ".join(filter(None, [out.get(e["field"]), e["message"]]))
    return out


ENDPOINT = seed("seed-endpoint.yaml")
JOB = seed("seed-job.yaml")


def with_spec(doc: dict[str, Any], **spec: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["spec"].update(spec)
    return out


# seed examples ------------------------------------------------------------------------------


def test_seed_nodeclass_keeps_every_field_as_written() -> None:
    nc = parse_object(seed("seed-nodeclass.yaml"))
    assert nc.kind == "NodeClass"
    hw = nc.spec.hardware
    assert (hw.gpu, hw.vramGB, hw.mig, hw.nvlink) == ("H100-80G", 80, "enabled", True)
    assert nc.spec.environment.kind == "edge"
    assert nc.spec.environment.provider == "isp-x"
    assert nc.spec.network.linkClasses == ["intra-zone", "inter-zone"]
    assert nc.spec.network.rttBudgetMs == 15
    assert nc.spec.constraints.spot is False
    assert nc.spec.constraints.residency == "EU"


def test_seed_endpoint_keeps_domain_slos_strategy_params_and_auth() -> None:
    ep = parse_object(ENDPOINT)
    assert isinstance(ep, Endpoint)
    assert ep.spec.modelRef == "chat-70b@q4_k_m"
    assert [(d.name, d.weight) for d in ep.spec.domains] == [("edge-eu", 60), ("cloud-eu", 40)]
    assert ep.spec.domains[1].slo is not None and ep.spec.domains[1].slo.ttft_ms == 140
    assert ep.spec.strategy is not None
    assert ep.spec.strategy.params == {"net_penalty": 0.7, "cold_penalty": 0.2}
    assert ep.spec.auth.required is True and ep.spec.auth.audience == ["chat-app"]
    assert ep.metadata.project == "default"


def test_seed_job_with_256_gpus_and_elastic_128_to_256_is_valid() -> None:
    job = parse_object(JOB)
    assert isinstance(job, Job)
    assert job.spec.parallelism.gpus == 256
    assert job.spec.elastic is not None and job.spec.elastic.max_gpus == 256
    assert job.spec.checkpoint is not None and job.spec.checkpoint.interval_steps == 500
    assert job.spec.constraints.residency == "US|EU"
    assert job.spec.strategy is not None and job.spec.strategy.params["compression"] is True


def test_an_object_survives_its_json_form() -> None:
    ep = parse_object(ENDPOINT)
    assert parse_object(ep.to_dict()) == ep


# names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["hybrid_mesh@1.0", "chat-70b@q4_k_m", "net_aware_hier@1.0", "edge-eu", "a", "x" * 253]
)
def test_valid_names(name: str) -> None:
    assert ObjectMeta(name=name).name == name


@pytest.mark.parametrize("name", ["Edge-eu", "-edge", "edge-", "a@b@c", "chat 70b", "a/b", ""])
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    doc = copy.deepcopy(ENDPOINT)
    doc["metadata"]["name"] = name
    message = errors_of(doc)["metadata.name"]
    assert "not a valid name" in message and "lowercase" in message


def test_a_name_over_253_characters_says_the_limit() -> None:
    doc = copy.deepcopy(ENDPOINT)
    doc["metadata"]["name"] = "a" * 254
    assert "253" in errors_of(doc)["metadata.name"]


def test_references_are_names_too() -> None:
    assert "not a valid name" in errors_of(with_spec(ENDPOINT, modelRef="Chat"))["spec.modelRef"]


# errors -------------------------------------------------------------------------------------


def test_errors_name_each_field_path_and_the_object() -> None:
    doc = copy.deepcopy(ENDPOINT)
    doc["spec"]["domains"][0]["weight"] = 160
    doc["spec"]["domains"][1]["slo"]["p95_ms"] = "fast"
    with pytest.raises(Invalid) as info:
        parse_object(doc)
    err = info.value
    assert err.status == 422
    assert "Endpoint chat-pro" in err.message
    fields = [e["field"] for e in err.details["errors"]]
    assert fields == ["spec.domains[0].weight", "spec.domains[1].slo.p95_ms"]
    assert "less than or equal to 100" in err.details["errors"][0]["message"]
    assert "160" in err.details["errors"][0]["message"]


def test_an_unknown_field_is_refused_with_the_near_miss() -> None:
    doc = with_spec(ENDPOINT, capacityPool="prod-gold")
    assert errors_of(doc)["spec.capacityPool"] == (
        "unknown field 'capacityPool' (did you mean 'capacityPoolRef'?)"
    )


def test_an_unknown_field_without_a_near_miss_lists_the_allowed_ones() -> None:
    doc = with_spec(ENDPOINT, auth={"required": True, "zzz": 1})
    message = errors_of(doc)["spec.auth.zzz"]
    assert "unknown field 'zzz'" in message and "required, audience" in message


def test_unknown_kind_suggests_the_right_spelling() -> None:
    doc = {**ENDPOINT, "kind": "endpoint"}
    assert "did you mean 'Endpoint'" in errors_of(doc)["kind"]


def test_missing_kind_and_api_version_are_reported() -> None:
    doc = {k: v for k, v in ENDPOINT.items() if k != "apiVersion"}
    assert "apiVersion: v1" in errors_of(doc)["apiVersion"]
    assert "valid kinds" in errors_of({"metadata": {"name": "x"}})["kind"]


def test_only_api_version_v1_is_accepted() -> None:
    assert "'v1'" in errors_of({**ENDPOINT, "apiVersion": "v2"})["apiVersion"]


@pytest.mark.parametrize(
    ("patch", "field", "expected"),
    [
        ({"hardware": {"mig": True}}, "spec.hardware.mig", "'enabled' or 'disabled'"),
        ({"environment": {"kind": "fog"}}, "spec.environment.kind", "'device', 'edge' or 'cloud'"),
        ({"network": {"linkClasses": ["wan"]}}, "spec.network.linkClasses[0]", "'intra-zone'"),
    ],
)
def test_nodeclass_enumerations(patch: dict[str, Any], field: str, expected: str) -> None:
    doc = seed("seed-nodeclass.yaml")
    for key, value in patch.items():
        doc["spec"][key] = {**doc["spec"][key], **value}
    assert expected in errors_of(doc)[field]


# kinds --------------------------------------------------------------------------------------


def test_every_kind_has_its_plural() -> None:
    assert {kind: cls.plural for kind, cls in KINDS.items()} == {
        "Domain": "domains",
        "NodeClass": "nodeclasses",
        "CapacityPool": "capacitypools",
        "Model": "models",
        "Endpoint": "endpoints",
        "Job": "jobs",
        "Policy": "policies",
        "Strategy": "strategies",
        "Node": "nodes",
        "Project": "projects",
        "SLO": "slos",
    }
    assert [cls for cls in KINDS.values() if cls.cluster_scoped] == [Project]


@pytest.mark.parametrize(
    ("word", "kind"),
    [
        ("Endpoint", "Endpoint"),
        ("endpoint", "Endpoint"),
        ("endpoints", "Endpoint"),
        ("ep", "Endpoint"),
        ("no", "Node"),
        ("dom", "Domain"),
        ("nc", "NodeClass"),
        ("pool", "CapacityPool"),
        ("pools", "CapacityPool"),
        ("mo", "Model"),
        ("job", "Job"),
        ("pol", "Policy"),
        ("strat", "Strategy"),
        ("proj", "Project"),
        ("NodeClasses", "NodeClass"),
        ("slo", "SLO"),
        ("slos", "SLO"),
    ],
)
def test_kind_for_accepts_kinds_plurals_and_aliases(word: str, kind: str) -> None:
    assert kind_for(word) is KINDS[kind]


def test_kind_for_an_unknown_word_lists_the_valid_kinds() -> None:
    with pytest.raises(NotFound) as info:
        kind_for("gadgets")
    assert "gadgets" in info.value.message
    for kind in KINDS:
        assert kind in info.value.message
    assert "ep" in info.value.message


# endpoint rules -----------------------------------------------------------------------------


def test_domain_weights_must_add_up_to_100() -> None:
    doc = copy.deepcopy(ENDPOINT)
    doc["spec"]["domains"][1]["weight"] = 30
    assert errors_of(doc)["spec.domains"] == "domain weights add up to 90; they must add up to 100"


def test_a_single_domain_takes_all_traffic_by_default() -> None:
    ep = parse_object(with_spec(ENDPOINT, domains=[{"name": "edge-eu"}]))
    assert ep.spec.domains[0].weight == 100


def test_a_domain_listed_twice_is_refused() -> None:
    doc = with_spec(ENDPOINT, domains=[{"name": "edge-eu", "weight": 50}] * 2)
    assert "'edge-eu' is listed more than once" in errors_of(doc)["spec.domains"]


def test_traffic_split_weights_add_up_to_100_over_distinct_models() -> None:
    good = [
        {"modelRef": "chat-70b@q4_k_m", "weight": 90},
        {"modelRef": "chat-70b@fp8", "weight": 10},
    ]
    assert len(parse_object(with_spec(ENDPOINT, trafficSplit=good)).spec.trafficSplit) == 2
    bad = [{"modelRef": "chat-70b@fp8", "weight": 50}, {"modelRef": "chat-70b@fp8", "weight": 40}]
    message = errors_of(with_spec(ENDPOINT, trafficSplit=bad))["spec.trafficSplit"]
    assert "listed more than once" in message and "add up to 90" in message


def test_a_pin_names_a_node_or_one_of_the_endpoints_domains() -> None:
    errors = errors_of(with_spec(ENDPOINT, pins=[{"node": "gpu-1", "domain": "edge-eu"}]))
    assert errors["spec.pins[0]"] == "set exactly one of node or domain"
    errors = errors_of(with_spec(ENDPOINT, pins=[{"domain": "cloud-us"}]))
    assert "'cloud-us' is not one of the endpoint's domains" in errors["spec.pins[0].domain"]


def test_endpoint_action_state_round_trips() -> None:
    ep = parse_object(
        with_spec(
            ENDPOINT,
            pins=[{"domain": "edge-eu"}],
            drain={"reason": "maintenance", "actor": "sre@corp", "timeoutSeconds": 60},
            quarantinedNodes=[{"node": "gpu-7", "reason": "ecc", "actor": "agent"}],
        )
    )
    assert ep.spec.drain is not None and ep.spec.drain.reason == "maintenance"
    assert ep.spec.quarantinedNodes[0].node == "gpu-7"


# job rules ----------------------------------------------------------------------------------


def test_parallelism_degrees_are_at_least_one() -> None:
    assert (
        "greater than or equal to 1"
        in errors_of(with_spec(JOB, parallelism={"dp": 0, "tp": 4, "pp": 2}))["spec.parallelism.dp"]
    )


def test_min_gpus_above_max_gpus_is_refused() -> None:
    doc = with_spec(JOB, elastic={"min_gpus": 512, "max_gpus": 256})
    assert errors_of(doc)["spec.elastic.min_gpus"] == "min_gpus 512 is more than max_gpus 256"


def test_parallelism_must_fit_the_elastic_range() -> None:
    doc = with_spec(JOB, parallelism={"dp": 64, "tp": 4, "pp": 2})
    assert errors_of(doc)["spec.parallelism"] == "dp*tp*pp = 512 GPUs lies outside elastic 128..256"


def test_elastic_bounds_are_whole_replicas() -> None:
    doc = with_spec(JOB, elastic={"min_gpus": 100, "max_gpus": 256})
    assert "not a multiple of tp*pp = 8" in errors_of(doc)["spec.elastic.min_gpus"]


def test_target_gpus_lies_within_the_elastic_range() -> None:
    assert parse_object(with_spec(JOB, targetGpus=192)).spec.targetGpus == 192
    assert (
        "outside elastic 128..256" in errors_of(with_spec(JOB, targetGpus=512))["spec.targetGpus"]
    )
    assert "multiple of tp*pp" in errors_of(with_spec(JOB, targetGpus=130))["spec.targetGpus"]


def test_a_job_without_elastic_cannot_be_scaled() -> None:
    doc = with_spec(JOB, targetGpus=128)
    del doc["spec"]["elastic"]
    assert "not elastic" in errors_of(doc)["spec.targetGpus"]


def test_job_action_state_defaults() -> None:
    job = parse_object(JOB)
    assert (job.spec.paused, job.spec.targetGpus, job.spec.checkpointRequests) == (False, None, 0)
    assert job.spec.priority == 0 and job.spec.priorityClass is None


# model, strategy, policy, node --------------------------------------------------------------


def model_doc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Model", "metadata": {"name": name}, "spec": spec}


def test_model_revision_comes_from_the_name() -> None:
    model = parse_object(model_doc("chat-70b@q4_k_m", quant="q4_k_m"))
    assert isinstance(model, Model)
    assert model.spec.revision == "q4_k_m" and model.spec.published is False


def test_model_revision_that_contradicts_the_name_is_refused() -> None:
    assert (
        "differs from the name's 'q4_k_m'"
        in errors_of(model_doc("chat-70b@q4_k_m", revision="fp8"))["spec.revision"]
    )


def test_model_runtime_and_artifacts() -> None:
    model = parse_object(
        model_doc(
            "chat-8b@fp16",
            runtime={"name": "vllm", "minVramGB": 20, "gpuTypes": ["L4-24G"]},
            artifacts=[{"type": "hf", "uri": "hf://org/chat-8b"}],
        )
    )
    assert model.spec.runtime is not None and model.spec.runtime.name == "vllm"
    assert "'vllm'" in errors_of(model_doc("m", runtime={"name": "vlm"}))["spec.runtime.name"]


def strategy_doc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Strategy", "metadata": {"name": name}, "spec": spec}


def test_builtin_strategies_exist_with_their_kinds() -> None:
    kinds = {name: s.spec.kind for name, s in BUILTIN_STRATEGIES.items()}
    assert kinds == {
        "baseline_rr@1.0": "inference",
        "least_queue@1.0": "inference",
        "power_of_two@1.0": "inference",
        "prefix_affinity@1.0": "inference",
        "hybrid_mesh@1.0": "inference",
        "ring@1.0": "training",
        "tree@1.0": "training",
        "hierarchical@1.0": "training",
        "net_aware_hier@1.0": "training",
    }
    assert all(s.spec.plugin == "builtin" for s in BUILTIN_STRATEGIES.values())


def test_a_builtin_plugin_must_name_a_builtin_of_its_kind() -> None:
    errors = errors_of(strategy_doc("fancy@1.0", kind="inference", plugin="builtin"))
    assert "no built-in strategy is named 'fancy@1.0'" in errors["metadata.name"]
    errors = errors_of(strategy_doc("ring@1.0", kind="inference", plugin="builtin"))
    assert errors["spec.kind"] == "ring@1.0 is a training strategy"
    tuned = strategy_doc(
        "hybrid-tuned@1.0",
        kind="inference",
        plugin="builtin",
        entryPoint="hybrid_mesh",
        params={"net_penalty": 1.5},
    )
    assert parse_object(tuned).spec.params == {"net_penalty": 1.5}


def test_plugin_strategies_need_an_entry_point() -> None:
    assert (
        "needs an entryPoint"
        in errors_of(strategy_doc("mine@1.0", kind="training", plugin="wasm"))["spec.entryPoint"]
    )
    assert (
        "module.path:attribute"
        in errors_of(
            strategy_doc("mine@1.0", kind="inference", plugin="python", entryPoint="mymod")
        )["spec.entryPoint"]
    )
    ok = strategy_doc("mine@1.0", kind="inference", plugin="python", entryPoint="my.mod:Route")
    assert parse_object(ok).spec.entryPoint == "my.mod:Route"
    assert (
        "'builtin', 'python', 'cdylib' or 'wasm'"
        in errors_of(strategy_doc("x", kind="inference", plugin="rust"))["spec.plugin"]
    )


def policy_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Policy", "metadata": {"name": "p"}, "spec": spec}


def test_policy_sections_validate() -> None:
    policy = parse_object(
        policy_doc(
            appliesTo=[
                {"kind": "Endpoint", "name": "chat-pro"},
                {"kind": "Domain", "matchLabels": {"tier": "edge"}},
            ],
            network={
                "allowedLinkClasses": ["intra-zone"],
                "costMultipliers": {"public": 3.0},
                "rttBudgetMs": 40,
            },
            priority={"className": "high", "value": 1000},
            rollout={
                "canaryPercent": 5,
                "steps": [5, 25, 100],
                "failureGates": [{"metric": "p95_ms", "threshold": 400}],
            },
            quarantine={"eccDoubleBit": True, "maxTempC": 90, "tempSeconds": 30, "errorRatio": 0.1},
            strategy={"ref": "least_queue@1.0"},
        )
    )
    assert policy.spec.network is not None
    assert policy.spec.network.costMultipliers == {"public": 3.0}


@pytest.mark.parametrize(
    ("spec", "field", "expected"),
    [
        ({"appliesTo": [{"kind": "Endpoint"}]}, "spec.appliesTo[0]", "exactly one of name"),
        ({"appliesTo": [{"kind": "Strategy", "name": "x"}]}, "spec.appliesTo[0].kind", "'Domain'"),
        (
            {"network": {"costMultipliers": {"wan": 2}}},
            "spec.network.costMultipliers.wan",
            "'inter-region'",
        ),
        ({"rollout": {"canaryPercent": 150}}, "spec.rollout.canaryPercent", "100"),
        ({"rollout": {"steps": [50, 10]}}, "spec.rollout.steps", "strictly increase"),
        ({"quarantine": {"errorRatio": 2}}, "spec.quarantine.errorRatio", "1"),
    ],
)
def test_policy_mistakes(spec: dict[str, Any], field: str, expected: str) -> None:
    assert expected in errors_of(policy_doc(**spec))[field]


def test_node_status_keeps_agent_telemetry_but_spec_stays_strict() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "gpu-1"},
        "spec": {
            "nodeClassRef": "cloud-h100",
            "domain": "cloud-us",
            "cordoned": True,
            "drain": {"reason": "kernel update", "force": True},
        },
        "status": {"conditions": [], "gpus": [{"uuid": "GPU-1", "tempC": 61}]},
    }
    node = parse_object(doc)
    assert isinstance(node, Node)
    assert node.to_dict()["status"]["gpus"] == [{"uuid": "GPU-1", "tempC": 61}]
    assert node.spec.drain is not None and node.spec.drain.force is True
    doc["spec"]["gpus"] = 8
    assert "unknown field 'gpus'" in errors_of(doc)["spec.gpus"]


def test_project_defaults_to_the_default_tenant_and_organization() -> None:
    project = parse_object({"apiVersion": "v1", "kind": "Project", "metadata": {"name": "team-a"}})
    assert (project.spec.tenant, project.spec.organization) == ("default", "default")


def test_labels_follow_the_selector_syntax() -> None:
    doc = copy.deepcopy(ENDPOINT)
    doc["metadata"]["labels"] = {"team": "chat", "app.kubernetes.io/part-of": "mesh"}
    assert parse_object(doc).metadata.labels["team"] == "chat"
    doc["metadata"]["labels"] = {"team": "a=b"}
    assert "invalid value 'a=b'" in errors_of(doc)["metadata.labels"]


# SLO rules ----------------------------------------------------------------------------------

SLO_DOC: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "SLO",
    "metadata": {"name": "chat-availability"},
    "spec": {"target": {"kind": "Endpoint", "name": "chat-pro"}, "sli": "availability"},
}


def slo_with(**spec: Any) -> dict[str, Any]:
    return with_spec(SLO_DOC, **spec)


def test_an_slo_defaults_its_objective_per_sli_and_its_window_to_30d() -> None:
    availability = parse_object(slo_with(objective=99.5))
    assert (availability.spec.objective, availability.spec.window) == (99.5, "30d")
    assert parse_object(SLO_DOC).spec.objective == 99.9
    latency = parse_object(slo_with(sli="latency", thresholdMs=300, window="28d"))
    assert (latency.spec.objective, latency.spec.window) == (99.0, "28d")
    assert latency.spec.rateLimitedIsBad is False


@pytest.mark.parametrize(
    ("spec", "field", "expected"),
    [
        ({"sli": "latency"}, "spec.thresholdMs", "sli 'latency' needs thresholdMs"),
        ({"sli": "ttft"}, "spec.thresholdMs", "sli 'ttft' needs thresholdMs"),
        ({"thresholdMs": 300}, "spec.thresholdMs", "sli 'availability' takes no thresholdMs"),
        (
            {"objective": 100},
            "spec.objective",
            "strictly between 0 and 100, such as 99.5 (got 100)",
        ),
        ({"objective": 0}, "spec.objective", "strictly between 0 and 100"),
        ({"window": "7d"}, "spec.window", "'28d' or '30d'"),
        ({"sli": "latency_p95"}, "spec.sli", "'availability', 'latency', 'ttft'"),
        ({"sli": "step_time", "thresholdMs": 900}, "spec.sli", "not apply to Endpoint targets"),
        (
            {"target": {"kind": "Job", "name": "ft"}, "sli": "latency", "thresholdMs": 1},
            "spec.sli",
            "use one of step_time, throughput",
        ),
        (
            {"target": {"kind": "Job", "name": "ft"}, "sli": "throughput"},
            "spec.thresholdTps",
            "needs thresholdTps",
        ),
        ({"target": {"kind": "Model", "name": "m"}}, "spec.target.kind", "'Endpoint' or 'Job'"),
        ({"rateLimitedIsBad": "often"}, "spec.rateLimitedIsBad", "valid boolean"),
    ],
)
def test_slo_mistakes_name_the_field(spec: dict[str, Any], field: str, expected: str) -> None:
    assert expected in errors_of(slo_with(**spec))[field]


# conditions ---------------------------------------------------------------------------------


def test_set_condition_keeps_the_transition_time_while_status_holds() -> None:
    status = Status()
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    t1 = datetime(2024, 1, 2, tzinfo=UTC)
    missing = Condition(
        type="ResolvedRefs", status="False", reason="MissingReferences", message="Model a not found"
    )
    assert status.set_condition(missing, now=t0) is True
    assert status.set_condition(missing, now=t1) is False
    other = missing.model_copy(update={"message": "Model b not found"})
    assert status.set_condition(other, now=t1) is True
    cond = status.get_condition("ResolvedRefs")
    assert cond is not None
    assert cond.lastTransitionTime == t0 and cond.message == "Model b not found"
    resolved = Condition(type="ResolvedRefs", status="True", reason="AllResolved")
    assert status.set_condition(resolved, now=t1) is True
    assert status.get_condition("ResolvedRefs") == resolved.model_copy(
        update={"lastTransitionTime": t1}
    )
    assert len(status.conditions) == 1


def test_condition_status_is_true_false_or_unknown() -> None:
    with pytest.raises(ValueError, match="'True', 'False' or 'Unknown'"):
        Condition(type="Ready", status="yes")  # type: ignore[arg-type]
