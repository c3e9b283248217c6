"""Topology hints as a job owner sees them in the ranks' environment and the Job's events."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from infermesh.scheduler.topology import (
    BUILTINS,
    MAX_FUSION_MS,
    RankReport,
    TopologyHint,
    TrainingStrategy,
    strategy_named,
)
from tests.scheduler_fleet import gang, job, node, nodes, snapshot

FLEET = nodes(
    *(node(f"a{i}", zone="us-1a") for i in range(6)),
    node("b0", zone="us-1b"),
    node("e0", zone="eu-1a", region="eu"),
    node("i0", gpus=4, island="nvl"),
    node("i1", gpus=4, island="nvl"),
)
NET_AWARE = strategy_named("net_aware_hier@1.0")


def hint_for(
    *names: str, params: dict[str, object] | None = None, strategy: TrainingStrategy = NET_AWARE
) -> TopologyHint:
    demand = job("j", tp=2, replicas=len(names))
    placement = gang(demand, *([(n, 0), (n, 1)] for n in names))
    return strategy.hint(placement, snapshot(FLEET), params or {})


def test_net_aware_hier_hints_by_the_gang_span() -> None:
    assert hint_for("a0").algorithm == "ring"  # one node
    assert hint_for("i0", "i1").algorithm == "ring"  # one NVLink island
    assert hint_for("a0", "a1").algorithm == "ring"  # a few nodes in one zone
    assert hint_for("a0", "a1", "a2", "a3").algorithm == "tree"  # many nodes in one zone
    zones = hint_for("a0", "b0")
    assert (zones.algorithm, zones.compression, zones.inter_fanout) == ("hierarchical", False, 4)
    wan = hint_for("a0", "e0", params={"inter_fanout": 8})
    assert (wan.algorithm, wan.compression, wan.inter_fanout) == ("hierarchical", True, 8)
    assert wan.fusion_window_ms > zones.fusion_window_ms  # WAN: larger messages
    assert hint_for("a0", params={"compression": True}).compression


def test_the_fixed_built_ins_hint_their_own_algorithm_and_never_adjust() -> None:
    for name in ("ring", "tree", "hierarchical"):
        hint = hint_for("a0", "e0", strategy=strategy_named(name))
        assert hint.algorithm == name
        assert (hint.inter_fanout is not None) == (name == "hierarchical")
        assert strategy_named(name).adjust(hint, degrading(20), {}) is None


def test_strategy_names_and_bad_params() -> None:
    assert strategy_named("net_aware_hier") is NET_AWARE
    assert set(BUILTINS) == {"ring@1.0", "tree@1.0", "hierarchical@1.0", "net_aware_hier@1.0"}
    with pytest.raises(ValueError, match=r"'ring@2\.0' is not a known training strategy; "):
        strategy_named("ring@2.0")
    with pytest.raises(ValueError, match="'hybrid_mesh' is an inference strategy"):
        strategy_named("hybrid_mesh")
    with pytest.raises(ValueError, match="inter_fanout must be an integer >= 2, not 'four'"):
        hint_for("a0", params={"inter_fanout": "four"})
    with pytest.raises(ValueError, match="compression must be true or false"):
        hint_for("a0", params={"compression": "yes"})


def test_hints_travel_as_json_and_back() -> None:
    hint = TopologyHint("hierarchical", True, 40, 4, since_step=120)
    data = json.loads(json.dumps(hint.as_dict()))
    assert data == {
        "algorithm": "hierarchical",
        "compression": True,
        "fusionWindowMs": 40,
        "interFanout": 4,
        "sinceStep": 120,
    }
    assert TopologyHint.from_dict(data) == hint
    with pytest.raises(ValueError, match="'mesh' is not one of"):
        TopologyHint.from_dict({"algorithm": "mesh"})


def degrading(steps: int, *, ranks: int = 4, start: int = 0, healthy: int = 6) -> list[RankReport]:
    """Steps of 100 ms: comm 10 ms for the first `healthy` steps, then a slow WAN link: 60 ms."""
    return [
        RankReport(
            rank=r, step=s, step_time_ms=100.0, comm_ms=10.0 if s < start + healthy else 60.0
        )
        for s in range(start, start + steps)
        for r in range(ranks)
    ]


def test_net_aware_hier_escalates_when_communication_degrades() -> None:
    ring = hint_for("a0", "a1")
    assert NET_AWARE.adjust(ring, degrading(6), {}) is None  # healthy
    assert NET_AWARE.adjust(ring, degrading(8), {}) is None  # too few slow steps to judge
    adjust = NET_AWARE.adjust(ring, degrading(12), {})
    assert adjust is not None and adjust.old == ring
    new = adjust.new
    assert (new.algorithm, new.compression, new.inter_fanout) == ("hierarchical", True, 4)
    assert new.fusion_window_ms > ring.fusion_window_ms
    assert new.since_step == 12
    assert adjust.reason == (
        "communication took 60% of step time over the last 5 steps, up from 10%"
    )
    # a tree escalates the same way
    tree = replace(ring, algorithm="tree")
    escalated = NET_AWARE.adjust(tree, degrading(12), {})
    assert escalated is not None and escalated.new.algorithm == "hierarchical"


def test_net_aware_hier_does_not_flap() -> None:
    ring = hint_for("a0", "a1")
    first = NET_AWARE.adjust(ring, degrading(12), {})
    assert first is not None
    # the same window again, or the window grown by steps still as slow under the new hint:
    # the new hint's baseline is the slow level, so nothing more happens
    assert NET_AWARE.adjust(first.new, degrading(12), {}) is None
    steady = degrading(40, healthy=6)
    assert NET_AWARE.adjust(first.new, steady, {}) is None
    # comm share under the new hint that itself rises again steps the fusion window up, never
    # back down; at the longest window it stops
    hint = first.new
    windows = [hint.fusion_window_ms]
    for _ in range(6):
        start = hint.since_step
        reports = [
            RankReport(r, s, 100.0, 20.0 if s < start + 6 else 70.0)
            for s in range(start, start + 12)
            for r in range(4)
        ]
        step = NET_AWARE.adjust(hint, reports, {})
        if step is None:
            break
        assert step.new.algorithm == "hierarchical" and step.new.compression
        hint = step.new
        windows.append(hint.fusion_window_ms)
    assert windows == sorted(windows) and windows[-1] == MAX_FUSION_MS
    assert len(windows) < 6


def test_low_comm_shares_never_escalate() -> None:
    ring = hint_for("a0", "a1")
    # doubled from 5 % to 20 %: a big rise, but communication is still a small part of a step
    reports = [RankReport(r, s, 100.0, 5.0 if s < 6 else 20.0) for s in range(12) for r in range(4)]
    assert NET_AWARE.adjust(ring, reports, {}) is None
