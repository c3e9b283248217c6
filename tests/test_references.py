"""Reference resolution: what an object refers to, what is missing, who depends on what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infermesh.manifest import load_paths
from infermesh.model import Resource, parse_object
from infermesh.references import (
    Ref,
    exists_in,
    missing_references,
    references_of,
    referrers,
    resolved_refs_condition,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> Resource:
    (obj,) = load_paths([EXAMPLES / name])
    return obj


def obj(kind: str, name: str, project: str = "default", **spec: Any) -> Resource:
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": name, "project": project},
            "spec": spec,
        }
    )


def nothing_exists(kind: str, project: str, name: str) -> bool:
    return False


def test_what_the_seed_endpoint_refers_to() -> None:
    assert references_of(example("seed-endpoint.yaml")) == [
        Ref("Model", "chat-70b@q4_k_m"),
        Ref("Domain", "edge-eu"),
        Ref("Domain", "cloud-eu"),
        Ref("CapacityPool", "prod-gold"),
        Ref("Strategy", "hybrid_mesh@1.0"),
    ]


def test_what_the_seed_job_refers_to() -> None:
    assert references_of(example("seed-job.yaml")) == [
        Ref("NodeClass", "cloud-h100"),
        Ref("NodeClass", "hpc-h100-ib"),
        Ref("Domain", "cloud-us"),
        Ref("Domain", "cloud-eu"),
        Ref("CapacityPool", "train-gold"),
        Ref("Strategy", "net_aware_hier@1.0"),
    ]


def test_traffic_split_models_pins_nodes_pools_and_policies_are_references() -> None:
    ep = obj(
        "Endpoint",
        "chat",
        modelRef="chat-70b@q4_k_m",
        domains=[{"name": "edge-eu"}],
        pins=[{"domain": "edge-eu"}],
        trafficSplit=[
            {"modelRef": "chat-70b@q4_k_m", "weight": 80},
            {"modelRef": "chat-70b@fp8", "weight": 20},
        ],
    )
    assert references_of(ep) == [
        Ref("Model", "chat-70b@q4_k_m"),
        Ref("Model", "chat-70b@fp8"),
        Ref("Domain", "edge-eu"),
    ]
    node = obj("Node", "gpu-1", nodeClassRef="cloud-h100", domain="cloud-us")
    assert references_of(node) == [Ref("NodeClass", "cloud-h100"), Ref("Domain", "cloud-us")]
    pool = obj("CapacityPool", "p", nodeClasses=["cloud-h100"], domains=["cloud-us"])
    assert references_of(pool) == [Ref("NodeClass", "cloud-h100"), Ref("Domain", "cloud-us")]
    policy = obj(
        "Policy",
        "p",
        strategy={"ref": "tuned@2.0"},
        appliesTo=[
            {"kind": "Endpoint", "name": "chat"},
            {"kind": "Job", "matchLabels": {"a": "b"}},
        ],
    )
    assert references_of(policy) == [Ref("Strategy", "tuned@2.0"), Ref("Endpoint", "chat")]
    assert references_of(obj("Domain", "edge-eu")) == []


def test_with_nothing_applied_all_but_builtin_strategies_are_missing() -> None:
    missing = missing_references(example("seed-endpoint.yaml"), nothing_exists)
    assert Ref("Strategy", "hybrid_mesh@1.0") not in missing
    assert missing == [
        Ref("Model", "chat-70b@q4_k_m"),
        Ref("Domain", "edge-eu"),
        Ref("Domain", "cloud-eu"),
        Ref("CapacityPool", "prod-gold"),
    ]


def test_the_demo_mesh_resolves_every_seed_reference() -> None:
    objects = load_paths([EXAMPLES / "demo-mesh.yaml"])
    exists, names = exists_in(objects)
    for name in ("seed-endpoint.yaml", "seed-job.yaml", "seed-cheatsheet.yaml"):
        for o in load_paths([EXAMPLES / name]):
            assert missing_references(o, exists, names) == [], (name, o.metadata.name)
    for o in objects:
        assert missing_references(o, exists, names) == [], o.metadata.name


def test_a_bare_reference_matches_any_revision_or_the_exact_name() -> None:
    exists, names = exists_in([obj("Model", "chat-70b@q4_k_m"), obj("Model", "plain")])
    for ref, found in [
        ("chat-70b", True),
        ("chat-70b@q4_k_m", True),
        ("chat-70b@fp8", False),
        ("chat", False),
        ("plain", True),
        ("plain@1", False),
    ]:
        ep = obj("Endpoint", "e", modelRef=ref, domains=[{"name": "d"}])
        model_missing = Ref("Model", ref) in missing_references(ep, exists, names)
        assert model_missing is not found, ref


def test_bare_references_need_names_to_find_revisions() -> None:
    exists, _ = exists_in([obj("Model", "chat-70b@q4_k_m")])
    ep = obj("Endpoint", "e", modelRef="chat-70b", domains=[{"name": "d"}])
    assert Ref("Model", "chat-70b") in missing_references(ep, exists)


def test_builtin_strategies_resolve_by_exact_or_bare_name() -> None:
    for ref in ("ring@1.0", "ring", "net_aware_hier"):
        job = obj("Job", "j", strategy={"ref": ref})
        assert missing_references(job, nothing_exists) == [], ref
    job = obj("Job", "j", strategy={"ref": "ring@2.0"})
    assert missing_references(job, nothing_exists) == [Ref("Strategy", "ring@2.0")]


def test_references_resolve_within_the_objects_project() -> None:
    exists, names = exists_in([obj("Domain", "edge-eu", project="team-a")])
    in_a = obj("Endpoint", "e", project="team-a", modelRef="m", domains=[{"name": "edge-eu"}])
    in_b = obj("Endpoint", "e", project="team-b", modelRef="m", domains=[{"name": "edge-eu"}])
    assert Ref("Domain", "edge-eu") not in missing_references(in_a, exists, names)
    assert Ref("Domain", "edge-eu") in missing_references(in_b, exists, names)


def test_projects_are_found_from_any_project() -> None:
    exists, names = exists_in([obj("Project", "team-a")])
    policy = obj("Policy", "p", project="team-b", appliesTo=[{"kind": "Project", "name": "team-a"}])
    assert missing_references(policy, exists, names) == []


def test_the_resolved_refs_condition() -> None:
    cond = resolved_refs_condition(
        [Ref("Model", "chat-70b@q4_k_m"), Ref("CapacityPool", "prod-gold")]
    )
    assert (cond.type, cond.status, cond.reason) == ("ResolvedRefs", "False", "MissingReferences")
    assert cond.message == "Model chat-70b@q4_k_m, CapacityPool prod-gold not found"
    ok = resolved_refs_condition([])
    assert (ok.type, ok.status, ok.reason) == ("ResolvedRefs", "True", "AllResolved")


def test_referrers_finds_dependents_in_a_stable_order() -> None:
    objects = [
        *load_paths([EXAMPLES / "seed-cheatsheet.yaml"]),
        obj("Endpoint", "b-side", modelRef="chat-70b", domains=[{"name": "edge-eu"}]),
        obj(
            "Endpoint",
            "other-project",
            project="team-b",
            modelRef="chat-70b@q4_k_m",
            domains=[{"name": "edge-eu"}],
        ),
        obj("Endpoint", "unrelated", modelRef="chat-8b@fp16", domains=[{"name": "cloud-us"}]),
    ]
    found = referrers(objects, "Model", "chat-70b@q4_k_m", project="default")
    assert [(o.kind, o.metadata.name) for o in found] == [
        ("Endpoint", "b-side"),
        ("Endpoint", "chat-pro"),
    ]
    everywhere = referrers(reversed(objects), "Model", "chat-70b@q4_k_m")
    assert [(o.metadata.project, o.metadata.name) for o in everywhere] == [
        ("default", "b-side"),
        ("default", "chat-pro"),
        ("team-b", "other-project"),
    ]
    pool_users = referrers(objects, "CapacityPool", "prod-gold")
    assert [o.metadata.name for o in pool_users] == ["chat-pro"]
    cloud_us = referrers(objects, "Domain", "cloud-us")
    assert [(o.kind, o.metadata.name) for o in cloud_us] == [
        ("Endpoint", "unrelated"),
        ("Job", "ft-news-xxl"),
    ]
