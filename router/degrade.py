"""Degradation rules from Policy: when the way to the chosen target is slow, hedge or stay local.

A rule fires for a request when every condition it gives holds for the link from the request's
origin to its first-ranked target: `linkClass` matches, the link's RTT is above `rttAboveMs`.
A rule that gives neither fires when the RTT exceeds the policy's `rttBudgetMs`. Loss is not
measured by the router, so a rule that only names `lossAbovePercent` never fires here.
Inference acts on `hedge` (hedge this request even where hedging is off) and `local-only` (keep
to the origin's domain when it has a replica); the other actions are for training. Rules on SLO
state are the control plane's to judge (store/delivery/degrade.py): the router reads the actions
they switched on from the endpoint's status (`RouterView.slo_degrade`), never fires them here.
"""

from __future__ import annotations

from collections.abc import Iterable

from infermesh.model.policy import DegradeRule

INFERENCE_ACTIONS = frozenset({"hedge", "local-only"})


def triggered(
    rules: Iterable[DegradeRule],
    link_class: str | None,
    rtt_ms: float,
    rtt_budget_ms: float | None,
) -> frozenset[str]:
    """The inference actions of the rules that fire for this link."""
    actions: set[str] = set()
    for rule in rules:
        if rule.on_slo:
            continue
        if rule.linkClass is not None and rule.linkClass != link_class:
            continue
        if rule.rttAboveMs is not None and not rtt_ms > rule.rttAboveMs:
            continue
        if rule.linkClass is None and rule.rttAboveMs is None:
            if rule.lossAbovePercent is not None or rtt_budget_ms is None:
                continue
            if not rtt_ms > rtt_budget_ms:
                continue
        actions.update(rule.actions)
    return frozenset(actions & INFERENCE_ACTIONS)
