"""Hedging: when the backup request goes out, how many the budget allows, and the TTFT p95
that drives the ttft-p95 delay."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from infermesh.model.policy import Hedging
from infermesh.router.hedging import HedgeBudget, TtftTracker, hedge_delay_ms

EP = "team-a/chat"


def hedging(**fields: Any) -> Hedging:
    return Hedging.model_validate({"enabled": True, **fields})


def test_fixed_delay() -> None:
    assert hedge_delay_ms(hedging(delayMs=40), ttft_p95_ms=900, slo_ttft_ms=300) == 40


def test_ttft_p95_delay_falls_back_until_the_p95_is_known() -> None:
    h = hedging(delayMode="ttft-p95", delayMs=50, ttftMultiple=2)
    assert hedge_delay_ms(h, ttft_p95_ms=120, slo_ttft_ms=None) == 240
    assert hedge_delay_ms(h, ttft_p95_ms=None, slo_ttft_ms=None) == 50
    assert hedge_delay_ms(h, ttft_p95_ms=math.nan, slo_ttft_ms=None) == 50  # LiveState's unknown


def test_slo_fraction_delay_falls_back_without_an_slo() -> None:
    h = hedging(delayMode="slo-fraction", delayMs=50, sloFraction=0.25)
    assert hedge_delay_ms(h, ttft_p95_ms=None, slo_ttft_ms=400) == 100
    assert hedge_delay_ms(h, ttft_p95_ms=120, slo_ttft_ms=None) == 50


def test_a_quiet_endpoint_may_still_hedge_once_per_window() -> None:
    budget = HedgeBudget()
    budget.record_request(EP, 0.0)
    assert budget.allow(EP, 10, 0.0)
    budget.record_hedge(EP, 0.0)
    budget.record_request(EP, 1.0)
    assert not budget.allow(EP, 10, 1.0)  # a second hedge of two requests would be 100 %
    assert budget.allow(EP, 10, 10.5)  # the first hedge has left the window
    assert budget.allow("team-a/other", 10, 1.0)  # budgets are per endpoint


def test_a_busy_endpoint_hedges_at_most_its_share() -> None:
    budget = HedgeBudget()
    sent = requests = 0
    for i in range(3_000):  # 100 requests a second for 30 s, every one slow enough to hedge
        now = i / 100
        budget.record_request(EP, now)
        requests += 1
        if budget.allow(EP, 10, now):
            budget.record_hedge(EP, now)
            sent += 1
    assert 0.09 * requests <= sent <= 0.10 * requests + 1
    assert not budget.allow(EP, 0, 30.0)  # a budget of 0 never hedges


def test_ttft_p95_appears_after_eight_answers_and_only_for_that_replica() -> None:
    p95 = np.full(4, np.nan)
    tracker = TtftTracker(p95)
    for ms in range(1, 8):
        tracker.observe(2, float(ms))
    assert np.isnan(p95).all()
    tracker.observe(2, 8.0)
    assert 7.0 < p95[2] <= 8.0
    assert np.isnan(p95[[0, 1, 3]]).all()


def test_ttft_p95_follows_the_recent_answers() -> None:
    p95 = np.full(1, np.nan)
    tracker = TtftTracker(p95)
    for _ in range(64):
        tracker.observe(0, 100.0)
    assert p95[0] == 100.0
    for _ in range(64):
        tracker.observe(0, 500.0)  # the replica got slow: the old samples are gone
    assert p95[0] == 500.0
    for _ in range(7):
        tracker.observe(0, 50.0)
    assert p95[0] == 500.0  # recomputed every eighth sample, not on each one


def test_a_replica_that_went_quiet_forgets_its_ttft() -> None:
    p95 = np.full(4, np.nan)
    tracker = TtftTracker(p95, max_age_s=5.0)
    for i in range(8):
        tracker.observe(2, 4000.0, now=100.0 + i * 0.1)  # a backlog once made it slow
    assert p95[2] == 4000.0
    tracker.expire(103.0)
    assert p95[2] == 4000.0  # recent: still news
    tracker.expire(106.0)
    assert np.isnan(p95[2])  # no answer for 5 s: strategies fall back to the agent's TTFT
