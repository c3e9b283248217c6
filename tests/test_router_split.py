"""Traffic splits and domain weights: what operators set is what the request counts show."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermesh.model import Endpoint
from infermesh.router.split import (
    SmoothWeighted,
    Splits,
    domain_split,
    endpoint_key,
    revision_split,
)


@st.composite
def weights_adding_to_100(draw: st.DrawFn) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, 100), max_size=7)))
    bounds = [0, *cuts, 100]
    return [b - a for a, b in pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(weights_adding_to_100())
def test_every_100_picks_honour_the_weights(weights: list[int]) -> None:
    chooser = SmoothWeighted(list(enumerate(weights)))
    picks = np.array([chooser.pick() for _ in range(10_000)])
    totals = Counter(picks.tolist())
    for item, weight in enumerate(weights):
        assert abs(totals[item] - weight * 100) <= 200  # within 2 % of 10,000
        # Any 100 consecutive picks: exact to one request.
        hits = np.concatenate([[0], np.cumsum(picks == item)])
        windows = hits[100:] - hits[:-100]
        assert windows.min() >= weight - 1 and windows.max() <= weight + 1
        if weight == 0:
            assert totals[item] == 0


def test_a_canary_is_spread_out_not_bunched() -> None:
    chooser = SmoothWeighted([("stable", 90), ("canary", 10)])
    picks = [chooser.pick() for _ in range(1_000)]
    positions = [i for i, p in enumerate(picks) if p == "canary"]
    assert len(positions) == 100
    assert {b - a for a, b in pairwise(positions)} == {10}


def test_nothing_to_choose_from_is_an_error() -> None:
    with pytest.raises(ValueError, match="zero"):
        SmoothWeighted([("a", 0), ("b", 0)])
    with pytest.raises(ValueError):
        SmoothWeighted([])


def endpoint(split: list[dict[str, Any]] | None = None, version: str = "1") -> Endpoint:
    return Endpoint.model_validate(
        {
            "metadata": {"name": "chat", "project": "team-a", "resourceVersion": version},
            "spec": {
                "modelRef": "chat-70b@v1",
                "domains": [{"name": "edge-eu", "weight": 30}, {"name": "cloud-eu", "weight": 70}],
                "trafficSplit": split or [],
            },
        }
    )


CANARY = [{"modelRef": "chat-70b@v1", "weight": 80}, {"modelRef": "chat-70b@v2", "weight": 20}]


def test_splits_read_from_the_endpoint() -> None:
    assert revision_split(endpoint()) == [("chat-70b@v1", 100)]
    assert revision_split(endpoint(CANARY)) == [("chat-70b@v1", 80), ("chat-70b@v2", 20)]
    assert domain_split(endpoint()) == [("edge-eu", 30), ("cloud-eu", 70)]
    assert endpoint_key(endpoint()) == "team-a/chat"


def test_the_split_holds_across_requests_and_restarts_when_weights_change() -> None:
    splits = Splits()
    # A fresh Endpoint object per request, as a watch-fed view hands out: the chooser survives.
    counts = Counter(splits.pick_revision(endpoint(CANARY, version=str(i))) for i in range(100))
    assert counts == {"chat-70b@v1": 80, "chat-70b@v2": 20}
    assert Counter(splits.pick_domain(endpoint()) for _ in range(100)) == {
        "edge-eu": 30,
        "cloud-eu": 70,
    }
    promoted = [
        {"modelRef": "chat-70b@v1", "weight": 0},
        {"modelRef": "chat-70b@v2", "weight": 100},
    ]
    assert {splits.pick_revision(endpoint(promoted, version="200")) for _ in range(50)} == {
        "chat-70b@v2"
    }
    splits.forget("team-a/chat")
    assert splits.pick_revision(endpoint()) == "chat-70b@v1"
