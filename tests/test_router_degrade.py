"""Degradation rules fire on the link to the chosen target."""

from __future__ import annotations

from infermesh.model.policy import DegradeRule
from infermesh.router.degrade import triggered


def rule(**fields: object) -> DegradeRule:
    return DegradeRule.model_validate(fields)


def test_a_rule_fires_when_its_link_class_and_rtt_match() -> None:
    rules = [rule(linkClass="inter-region", rttAboveMs=50, actions=["hedge", "local-only"])]
    assert triggered(rules, "inter-region", 70.0, None) == {"hedge", "local-only"}
    assert triggered(rules, "inter-region", 40.0, None) == set()
    assert triggered(rules, "inter-zone", 70.0, None) == set()


def test_a_bare_rule_fires_past_the_rtt_budget_and_training_actions_are_ignored() -> None:
    rules = [rule(actions=["local-only", "compress"])]
    assert triggered(rules, "public", 120.0, 60.0) == {"local-only"}
    assert triggered(rules, "public", 50.0, 60.0) == set()
    assert triggered(rules, "public", 500.0, None) == set()  # no budget: nothing to exceed
    assert triggered([rule(lossAbovePercent=5, actions=["hedge"])], "public", 500, 60) == set()
