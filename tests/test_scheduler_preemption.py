"""Preemption and elastic scaling as job owners see them: who gives way, who grows, and when."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from infermesh.scheduler.placement import FreeMap, place
from infermesh.scheduler.plan import Evict, Resize, Start, Wait, plan
from infermesh.scheduler.snapshot import Pool
from tests.scheduler_fleet import by_kind, check, gang, job, node, nodes, snapshot, whole

FLEET = nodes(node("a"), node("b"), node("c"))


def test_the_lowest_priority_gang_gives_way_and_the_job_starts_once_it_is_gone() -> None:
    low, mid = job("low", tp=8, priority=1), job("mid", tp=8, priority=5)
    equal = job("equal", tp=8, priority=10)
    high = job("high", tp=8, priority=10, last_checkpoint=None)
    running = [(low, whole(low, "a")), (mid, whole(mid, "b")), (equal, whole(equal, "c"))]
    actions = by_kind(plan(snapshot(FLEET, [high], running), now=1000).actions)
    assert [(e.job, e.by) for e in actions["evict"]] == [("p/low", "p/high")]
    assert actions["evict"][0].reason == (
        "preempted by p/high (priority 10 > 1); no checkpoint yet"
    )
    assert [(w.job, w.reason) for w in actions["wait"]] == [("p/high", "preempting p/low")]
    assert not actions["start"]
    # next pass, while low checkpoints and stops: high waits for it, nobody else is evicted
    stopping = snapshot(FLEET, [high], running, stopping=frozenset({"p/low"}))
    actions = by_kind(plan(stopping, now=1001).actions)
    assert not actions["evict"]
    assert [w.reason for w in actions["wait"]] == ["waiting for p/low to stop"]
    # and once low is gone, high starts where it was
    gone = snapshot(FLEET, [high, low], running[1:])
    [start] = by_kind(plan(gone, now=1002).actions)["start"]
    assert start.job == "p/high" and start.placement.nodes() == {"p/a": 8}


def test_equal_or_higher_priorities_are_never_preempted() -> None:
    same = [job(n, tp=8, priority=3) for n in "xyz"]
    running = [(d, whole(d, n)) for d, n in zip(same, "abc", strict=True)]
    actions = by_kind(plan(snapshot(FLEET, [job("j", tp=8, priority=3)], running), now=0).actions)
    assert not actions["evict"] and actions["wait"][0].reason.startswith("waiting for capacity")


def test_the_most_recent_checkpoint_goes_first() -> None:
    old = job("old", tp=8, last_checkpoint=100.0)
    fresh = job("fresh", tp=8, last_checkpoint=900.0)
    never = job("never", tp=8)
    running = [(old, whole(old, "a")), (fresh, whole(fresh, "b")), (never, whole(never, "c"))]
    actions = by_kind(
        plan(snapshot(FLEET, [job("j", tp=8, priority=1)], running), now=1000).actions
    )
    assert [e.job for e in actions["evict"]] == ["p/fresh"]
    assert actions["evict"][0].reason.endswith("last checkpoint 100 s ago")
    two = by_kind(
        plan(snapshot(FLEET, [job("j", tp=8, replicas=2, priority=1)], running), now=0).actions
    )
    assert sorted(e.job for e in two["evict"]) == ["p/fresh", "p/old"]


def test_the_smallest_sufficient_set_and_no_more_gpus_than_needed() -> None:
    # two half-node gangs on different nodes free 4 + 4 GPUs but no 8 on one node: the larger
    # gang behind them in the order is needed anyway, and then they are not
    half_a = job("half-a", tp=4, last_checkpoint=300.0)
    half_b = job("half-b", tp=4, last_checkpoint=200.0)
    full = job("full", tp=8, last_checkpoint=100.0)
    running = [
        (half_a, gang(half_a, [("a", g) for g in range(4)])),
        (half_b, gang(half_b, [("b", g) for g in range(4)])),
        (full, whole(full, "c")),
    ]
    # the other halves of nodes a and b belong to a higher priority
    for name, where in (("keep-a", "a"), ("keep-b", "b")):
        keep = job(name, tp=4, priority=9)
        running.append((keep, gang(keep, [(where, g) for g in range(4, 8)])))
    actions = by_kind(plan(snapshot(FLEET, [job("j", tp=8, priority=5)], running), now=0).actions)
    assert [e.job for e in actions["evict"]] == ["p/full"]
    # a 4-GPU job needs one half, not both (the most recent checkpoint)
    actions = by_kind(plan(snapshot(FLEET, [job("j", tp=4, priority=5)], running), now=0).actions)
    assert [e.job for e in actions["evict"]] == ["p/half-a"]


def test_nobody_is_evicted_when_even_all_victims_would_not_make_room() -> None:
    low = job("low", tp=8, replicas=2)
    keep = job("keep", tp=8, priority=9)
    running = [(low, whole(low, "a", "b")), (keep, whole(keep, "c"))]
    actions = by_kind(
        plan(snapshot(FLEET, [job("j", tp=8, replicas=3, priority=5)], running), now=0).actions
    )
    assert not actions["evict"] and not actions["resize"]
    assert actions["wait"][0].reason.startswith("waiting for capacity")


def test_elastic_gangs_shrink_before_anyone_is_evicted() -> None:
    # the elastic gang has a higher priority than the rigid one, and still shrinks first
    elastic = job("elastic", tp=8, min_replicas=1, max_replicas=2, priority=3)
    rigid = job("rigid", tp=8, priority=1)
    running = [(elastic, whole(elastic, "a", "b")), (rigid, whole(rigid, "c"))]
    actions = by_kind(plan(snapshot(FLEET, [job("j", tp=8, priority=5)], running), now=0).actions)
    assert not actions["evict"]
    [resize] = actions["resize"]
    assert resize.job == "p/elastic" and resize.placement.dp == 1
    assert resize.placement.nodes() == {"p/a": 8}  # it keeps its first replica
    assert resize.reason == "shrunk from 2 to 1 replicas to make room for p/j (priority 5 > 3)"
    assert actions["wait"][0].reason == "shrinking p/elastic"
    # needing more than shrinking frees: shrink, then evict the rest
    actions = by_kind(
        plan(snapshot(FLEET, [job("j", tp=8, replicas=2, priority=5)], running), now=0).actions
    )
    assert [e.job for e in actions["evict"]] == ["p/rigid"]
    assert [r.job for r in actions["resize"]] == ["p/elastic"]


def test_two_jobs_in_one_pass_never_evict_the_same_gang_or_share_the_room() -> None:
    lows = [job(f"low{i}", tp=8, last_checkpoint=float(i)) for i in range(3)]
    running = [(d, whole(d, n)) for d, n in zip(lows, "abc", strict=True)]
    queued = [
        job("h1", tp=8, priority=5, submitted=1),
        job("h2", tp=8, priority=5, submitted=2),
        job("small", tp=4, priority=2, submitted=3),
        job("tiny", tp=4, submitted=4),  # priority 0: may preempt nobody
    ]
    actions = by_kind(plan(snapshot(FLEET, queued, running), now=0).actions)
    evicted = [(e.job, e.by) for e in actions["evict"]]
    assert evicted == [("p/low2", "p/h1"), ("p/low1", "p/h2"), ("p/low0", "p/small")]
    # the half of low0 that small does not need is not free until low0 is gone: tiny waits
    # for it rather than start on GPUs that are still busy
    assert not actions["start"]
    waits = {w.job: w.reason for w in actions["wait"]}
    assert waits["p/tiny"] == "waiting for p/low0 to stop"


def test_room_made_for_a_job_is_not_taken_by_a_lower_priority_job_in_the_same_pass() -> None:
    low = job("low", tp=4)
    running = [(low, gang(low, [("a", g) for g in range(4)]))]
    fleet = nodes(node("a"))
    queued = [job("high", tp=8, priority=9), job("mid", tp=4, priority=5)]
    actions = by_kind(plan(snapshot(fleet, queued, running), now=0).actions)
    assert [e.job for e in actions["evict"]] == ["p/low"]
    assert not actions["start"]  # mid does not get the 4 free GPUs high is waiting for
    assert {w.job for w in actions["wait"]} == {"p/high", "p/mid"}


def test_elastic_jobs_start_with_the_most_replicas_that_fit_and_grow_later() -> None:
    other = job("other", tp=8)
    elastic = job("e", tp=8, min_replicas=1, max_replicas=3)
    snap = snapshot(FLEET, [elastic], [(other, whole(other, "a"))])
    [start] = by_kind(plan(snap, now=0).actions)["start"]
    assert start.placement.dp == 2
    # other finished: e grows into node a, keeping its replicas where they were
    grown_snap = snapshot(FLEET, running=[(elastic, start.placement)])
    [resize] = by_kind(plan(grown_snap, now=0).actions)["resize"]
    assert resize.placement.dp == 3
    assert resize.placement.ranks[:16] == start.placement.ranks
    assert resize.reason == "grown from 2 to 3 replicas (max 3): capacity is free"
    check(resize.placement, snapshot(FLEET), elastic)
    # at max: nothing to do
    assert not plan(snapshot(FLEET, running=[(elastic, resize.placement)]), now=0).actions


def test_growth_waits_for_queued_jobs_of_equal_or_higher_priority() -> None:
    elastic = job("e", tp=8, min_replicas=1, max_replicas=3, priority=2)
    running = [(elastic, whole(elastic, "a"))]
    big = job("big", tp=8, replicas=3, priority=2)  # waits for capacity (2 free nodes)
    actions = by_kind(plan(snapshot(FLEET, [big], running), now=0).actions)
    assert not actions["resize"] and actions["wait"][0].job == "p/big"
    lower = replace(big, priority=1)
    actions = by_kind(plan(snapshot(FLEET, [lower], running), now=0).actions)
    assert [r.placement.dp for r in actions["resize"]] == [3]


def test_growth_respects_pool_quotas() -> None:
    elastic = job("e", tp=8, min_replicas=1, max_replicas=3, pool="capped")
    running = [(elastic, whole(elastic, "a"))]
    capped = {"capped": Pool("capped", max_gpus=16)}
    [resize] = by_kind(plan(snapshot(FLEET, running=running, pools=capped), now=0).actions)[
        "resize"
    ]
    assert resize.placement.dp == 2
    spent = {"capped": Pool("capped", budget_usd=10, spent_usd=10)}
    assert not plan(snapshot(FLEET, running=running, pools=spent), now=0).actions


def test_a_gang_above_its_lowered_max_shrinks() -> None:
    elastic = job("e", tp=8, min_replicas=1, max_replicas=1)
    actions = plan(snapshot(FLEET, running=[(elastic, whole(elastic, "a", "b"))]), now=0).actions
    [resize] = actions
    assert isinstance(resize, Resize) and resize.placement.nodes() == {"p/a": 8}


# -- properties ------------------------------------------------------------------------------
gangs = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 4, 8]),  # tp
        st.integers(1, 3),  # replicas running / wanted
        st.integers(0, 2),  # extra max replicas
        st.integers(0, 4),  # priority
        st.booleans(),  # running (else queued)
        st.one_of(st.none(), st.floats(0, 1000)),  # last checkpoint
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=150, deadline=None)
@given(gangs, st.integers(2, 6))
def test_a_pass_is_consistent(specs, n_nodes) -> None:
    fleet = nodes(*(node(f"n{i}", zone=f"z{i % 2}") for i in range(n_nodes)))
    snap0 = snapshot(fleet)
    free = FreeMap(snap0)
    queued, running = [], []
    for i, (tp, n, extra, prio, runs, ckpt) in enumerate(specs):
        demand = job(
            f"j{i}",
            tp=tp,
            min_replicas=n,
            max_replicas=n + extra,
            priority=prio,
            last_checkpoint=ckpt,
            submitted=float(i),
        )
        p = place(demand, snap0, n, free=free) if runs else None
        if p is not None:
            running.append((demand, p))
        else:
            queued.append(demand)
    snap = snapshot(fleet, queued, running)
    actions = plan(snap, now=2000).actions
    kinds = by_kind(actions)
    prio = {d.key: d.priority for d in [*queued, *(d for d, _ in running)]}
    # each job gets at most one action, a queued one never a Resize or Evict
    assert len({a.job for a in actions}) == len(actions)
    for a in actions:
        if isinstance(a, Evict):
            assert a.job in snap.running and prio[a.job] < prio[a.by]
        if isinstance(a, Resize):
            assert a.job in snap.running
            demand = snap.jobs[a.job]
            assert demand.min_replicas <= a.placement.dp <= demand.max_replicas
            check(a.placement, snapshot(fleet), demand)
        if isinstance(a, Start | Wait):
            assert a.job not in snap.running
    # GPUs after the pass: starts and resized gangs never overlap each other or gangs still
    # running (evicted gangs still hold theirs until they stop)
    after = {k: p for k, p in snap.running.items()}
    after.update({r.job: r.placement for r in kinds["resize"]})
    holders: Counter[tuple[str, int]] = Counter()
    for p in after.values():
        holders.update((s.node, s.gpu) for s in p.ranks)
    for s in kinds["start"]:
        check(s.placement, snapshot(fleet), snap.jobs[s.job])
        holders.update((r.node, r.gpu) for r in s.placement.ranks)
    assert not holders or max(holders.values()) == 1
