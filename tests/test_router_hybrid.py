"""hybrid_mesh as a user of the router sees it: which replica its score picks, and why."""

from __future__ import annotations

import dataclasses
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infermesh.agent.sim.wan import DEFAULT_RTT_MS
from infermesh.router.replica import Replica
from infermesh.router.replica_speed import ReplicaSpeed
from infermesh.router.strategies import CandidateSet, HybridMesh, LeastQueue
from infermesh.router.strategies.hybrid import FEW_MAX
from tests.test_router_strategies import EU, ctx, first_node, fleet, live_for, replica


def test_hybrid_avoids_a_slow_replica() -> None:
    replicas = fleet(3)
    live = live_for(replicas)
    live.base_ttft_ms[:] = [40.0, 900.0, 400.0]
    picks = {first_node(HybridMesh(), replicas, live) for _ in range(20)}
    assert picks == {"n0"}
    slow_by_report = [replica(0, ttft_p50_ms=800.0), replica(1, ttft_p50_ms=30.0)]
    assert first_node(HybridMesh(), slow_by_report, live_for(slow_by_report)) == "n1"


@pytest.mark.parametrize(
    "sick",
    [{"max_temp_c": 95.0}, {"ecc_dbe": 1}, {"throttled": True}, {"kv_cache_usage": 0.98}],
    ids=["hot", "ecc", "throttled", "kv-full"],
)
def test_hybrid_avoids_a_sick_replica(sick: dict[str, Any]) -> None:
    replicas = [replica(0, running=2, **sick), replica(1, running=2, max_temp_c=60.0)]
    assert first_node(HybridMesh(), replicas, live_for(replicas)) == "n1"


def test_hybrid_prefers_a_loaded_model_to_a_cold_start() -> None:
    replicas = [replica(0, loaded=False), replica(1, running=4)]
    assert first_node(HybridMesh(), replicas, live_for(replicas)) == "n1"


def test_hybrid_prefers_a_faster_gpu_at_equal_load() -> None:
    replicas = [replica(0, gpu="NVIDIA L4", running=6), replica(1, gpu="H100", running=6)]
    assert first_node(HybridMesh(), replicas, live_for(replicas), max_tokens=256) == "n1"


def test_hybrid_prefers_the_cheaper_replica_when_cost_is_weighed() -> None:
    replicas = [replica(i, peak_running=16, price_per_gpu_hour=p) for i, p in enumerate((4, 1))]
    live = live_for(replicas)
    strategy = HybridMesh(cost_weight=50.0, seed=8)  # 150 ms for the $3/GPU-hour between them
    assert {first_node(strategy, replicas, live) for _ in range(20)} == {"n1"}
    live.inflight[1], live.starting[1] = 40, 24  # but not at any price: n1 queues 24 deep
    assert {first_node(strategy, replicas, live) for _ in range(20)} == {"n0"}


def _near_and_far() -> list[Replica]:
    return [
        replica(0, running=4),
        replica(1, domain="cloud-us", region="us-east", zone="us-east-1a"),
    ]


def test_hybrid_keeps_a_request_near_its_origin_when_the_network_costs() -> None:
    replicas = _near_and_far()
    live = live_for(replicas)
    assert first_node(HybridMesh(net_penalty=2.0), replicas, live, origin=EU) == "n0"
    # Without a price on the network, the idle remote replica wins.
    assert first_node(HybridMesh(net_penalty=0.0), replicas, live, origin=EU) == "n1"


def test_hybrid_spills_to_a_remote_replica_when_the_local_one_is_saturated() -> None:
    replicas = _near_and_far()
    live = live_for(replicas)
    live.inflight[0], live.starting[0] = 400, 396  # queued behind its batch of 4
    assert (
        first_node(HybridMesh(net_penalty=2.0), replicas, live, origin=EU, max_tokens=256) == "n1"
    )


def test_hybrid_explains_every_part_of_its_score() -> None:
    replicas = _near_and_far()
    d = HybridMesh(net_penalty=0.7).decide(
        ctx(origin=EU, explain=True), CandidateSet(replicas), live_for(replicas)
    )
    assert d.explain is not None and len(d.explain) == 2
    parts = {"queue_ms", "jitter_ms", "ttft_ms", "kv", "network_ms", "cold", "health", "cost"}
    parts.add("total")
    for row in d.explain:
        assert parts <= set(row)
        assert row["total"] == pytest.approx(sum(row[p] for p in parts - {"total"}))
    assert d.explain[1]["network_ms"] == pytest.approx(0.7 * DEFAULT_RTT_MS["inter-region"])
    assert d.explain[0]["network_ms"] == pytest.approx(0.7 * DEFAULT_RTT_MS["intra-zone"])


def _full(i: int, waiting: int, **kw: Any) -> Replica:
    """A replica whose batch of 16 is full, `waiting` more in its queue."""
    return replica(i, running=16, peak_running=16, waiting=waiting, **kw)


def test_hybrid_prices_the_queue_from_each_replicas_service_rate() -> None:
    # n0 has the longer queue but answers 8x faster: its queue drains first.
    replicas = [_full(0, waiting=9), _full(1, waiting=4)]
    live = live_for(replicas)
    speed = ReplicaSpeed(live)
    for _ in range(10):
        speed.finished(0, 250.0, now=1.0)
        speed.finished(1, 2000.0, now=1.0)
    strategy = HybridMesh(seed=1)
    assert {first_node(strategy, replicas, live) for _ in range(50)} == {"n0"}
    assert first_node(LeastQueue(), replicas, live) == "n1"  # counting requests alone
    # Slower answers there, learnt from this router's own traffic, turn it around.
    for _ in range(40):
        speed.finished(0, 4000.0, now=2.0)
    assert {first_node(strategy, replicas, live) for _ in range(50)} == {"n1"}


def test_hybrid_prefers_a_free_batch_slot_to_a_queue() -> None:
    replicas = [_full(0, waiting=2), replica(1, running=12, peak_running=16)]
    live = live_for(replicas)
    live.inflight[1] = 14  # this router's own, started, not yet in the agent's report
    strategy = HybridMesh(seed=2)
    assert {first_node(strategy, replicas, live) for _ in range(50)} == {"n1"}
    live.inflight[1], live.starting[1] = 20, 4  # now it queues too, longer than n0 does
    assert {first_node(strategy, replicas, live) for _ in range(50)} == {"n0"}


def test_hybrid_counts_a_burst_still_waiting_for_its_first_bytes_as_a_queue() -> None:
    replicas = [replica(0, running=14, peak_running=16), replica(1, running=3, peak_running=16)]
    live = live_for(replicas)
    live.inflight[1] = 13
    live.starting[1] = 10  # just sent there, none started: they wait for slots or prefills
    assert {first_node(HybridMesh(seed=7), replicas, live) for _ in range(50)} == {"n0"}
    assert first_node(LeastQueue(), replicas, live) == "n1"  # counting requests alone
    live.starting[1] = 0  # they have started: both have room in their batches
    strategy = HybridMesh(seed=7)
    assert {first_node(strategy, replicas, live) for _ in range(50)} == {"n0", "n1"}


def test_hybrid_spreads_a_burst_over_equal_replicas() -> None:
    replicas = [replica(i, peak_running=16) for i in range(4)]
    live = live_for(replicas)
    cs, strategy = CandidateSet(replicas), HybridMesh(seed=3)
    got: Counter[str] = Counter()
    for _ in range(40):  # each decision sees the ones before it, all still starting
        chosen = cs.replicas[strategy.decide(ctx(), cs, live).ranked[0]]
        live.inflight[chosen.slot] += 1
        live.starting[chosen.slot] += 1
        got[chosen.node] += 1
    assert len(got) == 4 and min(got.values()) >= 8, got
    # Nor when nothing this router knows tells them apart (other routers' requests, say).
    live.inflight[:] = live.starting[:] = 0
    picks = Counter(first_node(strategy, replicas, live) for _ in range(40))
    assert len(picks) == 4 and min(picks.values()) >= 5, picks


def test_hybrid_shares_a_burst_by_speed() -> None:
    # An H100 beside an L4, both idle, and a burst (nothing started yet): the H100, whose
    # answers come 8x faster, takes most of it; the L4 some, once the H100's queue costs more.
    replicas = [replica(0, gpu="H100", peak_running=8), replica(1, gpu="L4", peak_running=8)]
    live = live_for(replicas)
    live.base_ttft_ms[:] = [30.0, 150.0]
    cs, strategy = CandidateSet(replicas), HybridMesh(seed=4)
    order = []
    for _ in range(24):
        chosen = cs.replicas[strategy.decide(ctx(), cs, live).ranked[0]]
        live.inflight[chosen.slot] += 1
        live.starting[chosen.slot] += 1
        order.append(chosen.node)
    assert order[:3] == ["n0"] * 3
    assert 1 <= order.count("n1") <= order.count("n0") / 3, order


def test_hybrid_counts_a_queue_once() -> None:
    # n0 had a backlog (its TTFT p95 still says so) that has drained; n1 is busy now.
    replicas = [replica(0, peak_running=16), replica(1, running=16, peak_running=16, waiting=6)]
    live = live_for(replicas)
    live.ttft_p95_ms[:] = [5000.0, 60.0]
    speed = ReplicaSpeed(live)
    speed.first_byte(0, 40.0, queued=False, now=1.0)
    speed.first_byte(0, 4900.0, queued=True, now=1.0)  # the backlog: not the replica's speed
    speed.first_byte(1, 40.0, queued=False, now=1.0)
    assert live.base_ttft_ms[0] == 40.0
    assert {first_node(HybridMesh(seed=5), replicas, live) for _ in range(20)} == {"n0"}


def test_a_replica_that_went_quiet_forgets_how_fast_it_was() -> None:
    replicas = [replica(0, peak_running=16), replica(1, running=16, peak_running=16)]
    live = live_for(replicas)
    speed = ReplicaSpeed(live, max_age_s=10.0)
    speed.first_byte(0, 3000.0, queued=False, now=100.0)  # slow then, and avoided since
    speed.first_byte(1, 40.0, queued=False, now=100.0)
    speed.finished(1, 300.0, now=109.0)
    assert first_node(HybridMesh(seed=6), replicas, live) == "n1"
    speed.expire(105.0)
    assert live.base_ttft_ms[0] == 3000.0  # recent: still news
    speed.expire(111.0)
    assert np.isnan(live.base_ttft_ms[0]) and live.base_ttft_ms[1] == 40.0
    # Unknown again, so worth a try rather than a wait behind n1's full batch.
    assert {first_node(HybridMesh(seed=6), replicas, live) for _ in range(20)} == {"n0"}


def test_hybrid_ranks_the_best_first_in_a_large_fleet() -> None:
    rng = random.Random(2)
    replicas = [
        replica(i, running=rng.randrange(30), kv_cache_usage=rng.random()) for i in range(500)
    ]
    d = HybridMesh(rank_depth=5).decide(
        ctx(explain=True), CandidateSet(replicas), live_for(replicas)
    )
    assert d.explain is not None
    totals = [row["total"] for row in d.explain]
    assert [totals[i] for i in d.ranked[:5]] == sorted(totals)[:5]


@pytest.mark.parametrize("seed", range(20))
def test_hybrid_ranks_a_few_candidates_as_it_ranks_many(seed: int) -> None:
    """Sets of up to FEW_MAX are scored in plain Python: the same score, the same order."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    from router_decide import fresh_live, requests, synthetic_fleet

    rng = random.Random(seed)
    n = rng.randrange(1, FEW_MAX + 1)
    cs, live = CandidateSet(synthetic_fleet(n, rng)), fresh_live(n, rng)
    live.base_ttft_ms[: n // 2] = [rng.uniform(10, 300) for _ in range(n // 2)]
    live.decode_ms[::2] = [rng.uniform(100, 3000) for _ in range(len(live.decode_ms[::2]))]
    live.starting[:n] = [rng.randrange(3) for _ in range(n)]
    if seed % 5 == 0:
        live.ejected[:n] = True  # every one ejected: all still ranked
    few, many = HybridMesh(seed=seed), HybridMesh(seed=seed)
    many.few_max = 0
    for request in requests(10, rng):
        request = dataclasses.replace(request, relax_cost=rng.random() < 0.5)
        assert few.decide(request, cs, live).ranked == many.decide(request, cs, live).ranked
