"""Which Policy objects govern an endpoint's routing: the most specific one per section."""

from __future__ import annotations

import random
from typing import Any

from infermesh.model import Endpoint, Policy
from infermesh.router.policy import RoutingPolicy, resolve_policy


def endpoint(name: str = "chat", labels: dict[str, str] | None = None) -> Endpoint:
    return Endpoint.model_validate(
        {
            "metadata": {"name": name, "project": "team-a", "labels": labels or {}},
            "spec": {"modelRef": "chat-70b@q4_k_m", "domains": [{"name": "cloud-eu"}]},
        }
    )


def policy(name: str, applies_to: list[dict[str, Any]] | None = None, **sections: Any) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"name": name, "project": "team-a"},
            "spec": {"appliesTo": applies_to or [], **sections},
        }
    )


def concurrency(resolved: RoutingPolicy) -> int | None:
    assert resolved.admission is not None
    return resolved.admission.maxConcurrency


def test_no_policies_means_no_limits_and_defaults() -> None:
    resolved = resolve_policy([], endpoint())
    assert resolved == RoutingPolicy()
    assert resolved.admission is None
    assert resolved.allowed_regions is None
    assert resolved.allowed_link_classes == frozenset()
    assert not resolved.hedging.enabled
    assert resolved.idempotency.ttlSeconds == 600


def test_project_wide_policy_applies_to_every_endpoint() -> None:
    p = policy("defaults", admission={"maxConcurrency": 8})
    assert concurrency(resolve_policy([p], endpoint("a"))) == 8
    assert concurrency(resolve_policy([p], endpoint("b"))) == 8


def test_most_specific_policy_wins_each_section() -> None:
    policies = [
        policy("project", [{"kind": "Project", "name": "team-a"}], admission={"maxConcurrency": 1}),
        policy("model", [{"kind": "Model", "name": "chat-70b"}], admission={"maxConcurrency": 2}),
        policy(
            "labels",
            [{"kind": "Endpoint", "matchLabels": {"tier": "gold"}}],
            admission={"maxConcurrency": 3},
        ),
        policy("named", [{"kind": "Endpoint", "name": "chat"}], admission={"maxConcurrency": 4}),
    ]
    gold = endpoint("chat", {"tier": "gold"})
    for most_specific in range(4):
        applicable = policies[: most_specific + 1]
        random.Random(most_specific).shuffle(applicable)
        assert concurrency(resolve_policy(applicable, gold)) == most_specific + 1


def test_sections_come_from_different_policies() -> None:
    resolved = resolve_policy(
        [
            policy("eu-only", residency={"allowedRegions": ["eu-west", "eu-central"]}),
            policy(
                "chat-limits",
                [{"kind": "Endpoint", "name": "chat"}],
                admission={"maxConcurrency": 5, "queueSize": 10},
                idempotency={"ttlSeconds": 60, "onInFlight": "wait"},
            ),
            policy(
                "wan",
                [{"kind": "Model", "name": "chat-70b@q4_k_m"}],
                network={"allowedLinkClasses": ["intra-zone", "inter-zone"], "rttBudgetMs": 80},
                degrade={
                    "hedging": {"enabled": True, "delayMs": 30},
                    "rules": [{"linkClass": "inter-region", "actions": ["local-only"]}],
                },
                strategy={"ref": "least_queue@1.0"},
            ),
        ],
        endpoint(),
    )
    assert resolved.allowed_regions == frozenset({"eu-west", "eu-central"})
    assert resolved.admission is not None and resolved.admission.queueSize == 10
    assert resolved.idempotency.onInFlight == "wait"
    assert resolved.allowed_link_classes == frozenset({"intra-zone", "inter-zone"})
    assert resolved.rtt_budget_ms == 80
    assert resolved.hedging.enabled and resolved.hedging.delayMs == 30
    assert [r.actions for r in resolved.degrade_rules] == [["local-only"]]
    assert resolved.strategy is not None and resolved.strategy.ref == "least_queue@1.0"


def test_a_section_is_taken_whole_not_merged() -> None:
    resolved = resolve_policy(
        [
            policy("broad", admission={"maxConcurrency": 5, "tenantRatePerSecond": 2}),
            policy("narrow", [{"kind": "Endpoint", "name": "chat"}], admission={"queueSize": 3}),
        ],
        endpoint(),
    )
    assert resolved.admission is not None
    assert resolved.admission.queueSize == 3
    assert resolved.admission.maxConcurrency is None
    assert resolved.admission.tenantRatePerSecond is None


def test_policies_for_other_objects_do_not_apply() -> None:
    resolved = resolve_policy(
        [
            policy("other-ep", [{"kind": "Endpoint", "name": "embed"}], admission={"queueSize": 1}),
            policy("other-model", [{"kind": "Model", "name": "llama"}], admission={"queueSize": 2}),
            policy(
                "silver",
                [{"kind": "Endpoint", "matchLabels": {"tier": "silver"}}],
                admission={"queueSize": 3},
            ),
            policy("other-project", [{"kind": "Project", "name": "team-b"}], admission={}),
            policy("nodes", [{"kind": "Node", "name": "gpu-1"}], admission={"queueSize": 4}),
        ],
        endpoint("chat", {"tier": "gold"}),
    )
    assert resolved.admission is None


def test_equal_specificity_resolves_by_name_whatever_the_order() -> None:
    a = policy("a-limits", admission={"maxConcurrency": 1})
    b = policy("b-limits", admission={"maxConcurrency": 2})
    for order in ([a, b], [b, a]):
        assert concurrency(resolve_policy(order, endpoint())) == 1


def test_a_policy_counts_at_its_most_specific_matching_target() -> None:
    both = policy(
        "both",
        [{"kind": "Model", "name": "chat-70b"}, {"kind": "Endpoint", "name": "chat"}],
        admission={"maxConcurrency": 9},
    )
    labels = policy(
        "a-labels", [{"kind": "Endpoint", "matchLabels": {}}], admission={"maxConcurrency": 1}
    )
    assert concurrency(resolve_policy([labels, both], endpoint())) == 9
