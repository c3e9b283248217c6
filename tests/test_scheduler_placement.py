"""Gang placement as a job owner sees it: where the ranks of a gang land, and when it gets none."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermesh.scheduler.placement import FreeMap, max_replicas_that_fit, place
from infermesh.scheduler.plan import Start, plan
from infermesh.scheduler.snapshot import Pool
from infermesh.scheduler.topology import TrainingStrategy
from tests.scheduler_fleet import by_kind, check, gang, job, node, nodes, snapshot, whole


def test_a_job_runs_only_on_its_own_projects_nodes() -> None:
    fleet = nodes(node("mine", gpus=2), node("theirs", key="q/theirs"))
    snap = snapshot(fleet)
    assert place(job("j", replicas=2), snap, 2) is not None  # fits on p/mine
    assert place(job("k", tp=4), snap, 1) is None  # q/theirs has 8 free GPUs, not for p
    waits = plan(snapshot(fleet, [job("k", tp=4)]), now=0).actions
    assert [type(a).__name__ for a in waits] == ["Wait"] and "never" in waits[0].reason


def test_a_gang_that_does_not_fit_gets_nothing() -> None:
    fleet = nodes(node("a"), node("b"))
    snap = snapshot(fleet)
    free = FreeMap(snap)
    big = job("big", tp=8, replicas=3)  # 24 GPUs on 16
    assert place(big, snap, 3, free=free) is None
    assert free.free_gpus() == 16  # nothing was taken
    assert max_replicas_that_fit(big, snap, free=free) == 0
    other = job("other", tp=8)
    held = snapshot(fleet, [job("big", tp=8, replicas=2)], [(other, whole(other, "a"))])
    actions = plan(held, now=0).actions
    assert [type(a).__name__ for a in actions] == ["Wait"]
    assert "waiting for capacity" in actions[0].reason


def test_ranks_are_numbered_replica_stage_tp() -> None:
    fleet = nodes(node("a"), node("b"))
    demand = job("j", tp=4, pp=2, replicas=2)
    p = place(demand, snapshot(fleet), 2)
    assert p is not None
    check(p, snapshot(fleet), demand)
    # each TP group (4 consecutive ranks) on one node; bin-pack: a replica fills one node
    assert {s.node for s in p.ranks[:8]} == {"p/a"} and {s.node for s in p.ranks[8:]} == {"p/b"}
    assert [s.local_rank for s in p.ranks[:8]] == list(range(8))
    assert [s.gpu for s in p.ranks[8:]] == list(range(8))


def test_gpus_of_running_gangs_are_taken() -> None:
    fleet = nodes(node("a"))
    other = job("other", tp=2)
    running = gang(other, [("a", 0), ("a", 5)])
    snap = snapshot(fleet, running=[(other, running)])
    demand = job("j", tp=6)
    p = place(demand, snap, 1)
    assert p is not None
    assert sorted(s.gpu for s in p.ranks) == [1, 2, 3, 4, 6, 7]
    assert place(job("k", tp=7), snap, 1) is None


def test_tp_groups_stay_inside_one_node_or_nvlink_island() -> None:
    # two islands of four 4-GPU nodes; tp 8 needs two nodes of one island, never two islands
    fleet = nodes(
        *(node(f"x{i}", gpus=4, island="x") for i in range(4)),
        *(node(f"y{i}", gpus=4, island="y") for i in range(4)),
    )
    demand = job("j", tp=8, replicas=4)
    snap = snapshot(fleet)
    p = place(demand, snap, 4)
    assert p is not None
    check(p, snap, demand)
    # tp 8 with 3 free GPUs left in each of two islands cannot fit, though 6 are free in all
    held = job("held", tp=1)
    slots = [("x0", g) for g in range(4)] + [("x1", g) for g in range(4)] + [("x2", 0)]
    slots += [("y0", g) for g in range(4)] + [("y1", g) for g in range(4)] + [("y2", 0)]
    slots += [("x3", g) for g in range(4)] + [("y3", g) for g in range(4)]
    snap = snapshot(fleet, running=[(held, gang(held, *[[s] for s in slots]))])
    assert FreeMap(snap).free_gpus() == 6
    assert place(job("k", tp=6), snap, 1) is None
    p = place(job("k", tp=3), snap, 2)
    assert p is not None and {s.node for s in p.ranks[:3]} == {"p/x2"}


def test_pipeline_stages_of_a_replica_stay_in_one_zone() -> None:
    # 4 free GPUs in each of two zones: pp 2 x tp 4 fits in neither, though 8 are free
    fleet = nodes(node("a", gpus=4, zone="us-1a"), node("b", gpus=4, zone="us-1b"))
    demand = job("j", tp=4, pp=2)
    assert place(demand, snapshot(fleet), 1) is None
    fleet = nodes(*fleet.values(), node("c", gpus=4, zone="us-1b"))
    p = place(demand, snapshot(fleet), 1)
    assert p is not None and {s.node for s in p.ranks} == {"p/b", "p/c"}


def test_binpack_fills_partly_used_nodes_and_spread_takes_the_emptiest() -> None:
    fleet = nodes(node("a"), node("b"), node("c"))
    other = job("other", tp=1)
    snap = snapshot(fleet, running=[(other, gang(other, [(n, g) for n in "ab" for g in range(6)]))])
    packed = place(job("j", tp=2, replicas=2), snap, 2)
    assert packed is not None and set(packed.nodes()) == {"p/a", "p/b"}
    spread = place(job("j", tp=2, replicas=2, spread="spread"), snap, 2)
    assert spread is not None and spread.nodes() == {"p/c": 4}
    wide = place(job("j", tp=1, replicas=3, spread="spread"), snapshot(fleet), 3)
    assert wide is not None and wide.nodes() == {"p/a": 1, "p/b": 1, "p/c": 1}


def test_binpack_keeps_a_gang_in_one_zone_when_one_holds_it() -> None:
    fleet = nodes(node("a1", zone="us-1a"), node("b1", zone="us-1b"), node("b2", zone="us-1b"))
    p = place(job("j", tp=8, replicas=2), snapshot(fleet), 2)
    assert p is not None and set(p.nodes()) == {"p/b1", "p/b2"}
    p = place(job("j", tp=8, replicas=3), snapshot(fleet), 3)
    assert p is not None and len(p.nodes()) == 3  # needs both zones


def test_unusable_nodes_get_nothing() -> None:
    fleet = nodes(
        node("cordoned", schedulable=False),
        node("no-worker", worker=None),
        node("ok", gpus=2),
    )
    snap = snapshot(fleet)
    assert place(job("j", tp=4), snap, 1) is None
    p = place(job("j", tp=1, replicas=2), snap, 2)
    assert p is not None and p.nodes() == {"p/ok": 2}


def test_constraints_on_class_domain_residency_and_pool() -> None:
    fleet = nodes(
        node("h-us"),
        node("a-us", node_class="a100"),
        node("h-eu", zone="eu-1a", region="eu", domain="cloud-eu", residency="EU"),
        node("h-edge", zone="eu-1b", region="eu", domain="edge-eu", residency="EU"),
        node("h-none", zone="ap-1a", region="ap", domain="cloud-ap", residency=None),
    )
    snap = snapshot(fleet, pools={"eu-only": Pool("eu-only", domains=("cloud-eu",))})

    def where(**kw: object) -> set[str]:
        demand = job("j", tp=8, max_replicas=5, **kw)
        n = max_replicas_that_fit(demand, snap)
        p = place(demand, snap, n)
        assert p is not None
        check(p, snap, demand)
        return {k.removeprefix("p/") for k in p.nodes()}

    assert where(node_classes=("a100",)) == {"a-us"}
    assert where(domains=("cloud-eu", "edge-eu")) == {"h-eu", "h-edge"}
    assert where(residency=("EU",)) == {"h-eu", "h-edge"}
    assert where(residency=("US", "EU"), node_classes=("h100",)) == {"h-us", "h-eu", "h-edge"}
    assert where(pool="eu-only") == {"h-eu"}
    assert max_replicas_that_fit(job("j", pool="eu-only", domains=("edge-eu",)), snap) == 0


def test_most_replicas_that_fit_between_min_and_max() -> None:
    fleet = nodes(node("a"), node("b"), node("c", gpus=4))
    snap = snapshot(fleet)
    assert max_replicas_that_fit(job("j", tp=4, min_replicas=2, max_replicas=10), snap) == 5
    assert max_replicas_that_fit(job("j", tp=4, min_replicas=2, max_replicas=3), snap) == 3
    assert max_replicas_that_fit(job("j", tp=4, min_replicas=6, max_replicas=8), snap) == 0
    assert max_replicas_that_fit(job("j", tp=4, max_replicas=10), snap, limit=2) == 2
    assert max_replicas_that_fit(job("j", tp=4, pp=2, max_replicas=10), snap) == 2


# -- properties ------------------------------------------------------------------------------
fleets = st.lists(
    st.tuples(
        st.sampled_from([2, 4, 8]),  # GPUs
        st.sampled_from(["z1", "z2", "z3"]),
        st.sampled_from(["", "", "i1", "i2"]),  # NVLink island ("" = its own)
        st.booleans(),  # schedulable
        st.sampled_from(["h100", "a100"]),
    ),
    min_size=1,
    max_size=12,
)
shapes = st.tuples(
    st.sampled_from([1, 2, 4, 8, 16]),  # tp
    st.sampled_from([1, 2, 3]),  # pp
    st.integers(1, 6),  # max replicas
    st.sampled_from(["binpack", "spread"]),
    st.sampled_from([(), ("h100",)]),
)


@settings(max_examples=150, deadline=None)
@given(fleets, st.lists(shapes, min_size=1, max_size=8), st.integers(0, 3))
def test_placements_keep_the_rules_and_never_overcommit(spec, shapes, busy) -> None:
    fleet = nodes(
        *(
            node(
                f"n{i}",
                gpus=g,
                zone=z,
                island=f"{z}-{isl}" if isl else "",
                schedulable=ok,
                node_class=c,
            )
            for i, (g, z, isl, ok, c) in enumerate(spec)
        )
    )
    # some GPUs already held by a running gang
    holder = job("holder")
    held = [[(k.removeprefix("p/"), g)] for k, n in fleet.items() for g in range(min(busy, n.gpus))]
    running = [(holder, gang(holder, *held))] if held else []
    demands = [
        job(f"j{i}", tp=tp, pp=pp, max_replicas=m, spread=sp, node_classes=cls)
        for i, (tp, pp, m, sp, cls) in enumerate(shapes)
    ]
    snap = snapshot(fleet, demands, running)
    free = FreeMap(snap)
    taken: Counter[tuple[str, int]] = Counter(s for r in held for s in r)
    for demand in demands:
        n = max_replicas_that_fit(demand, snap, free=free)
        before = free.free_gpus()
        p = place(demand, snap, n or demand.max_replicas, free=free)
        if not n:  # all or nothing
            assert p is None
            assert free.free_gpus() == before
            continue
        assert p is not None and p.dp == n
        check(p, snapshot(fleet, running=running), demand)
        taken.update((s.node.removeprefix("p/"), s.gpu) for s in p.ranks)
        assert max(taken.values()) == 1, "a GPU placed twice"
        assert free.free_gpus() == before - p.gpus

    # the same through plan(): starts never overlap each other or running gangs
    actions = by_kind(plan(snap, now=0).actions)
    used = Counter(s for r in held for s in r)
    for start in actions["start"]:
        used.update((s.node.removeprefix("p/"), s.gpu) for s in start.placement.ranks)
    assert not used or max(used.values()) == 1


def view(free: FreeMap) -> tuple[object, ...]:
    """What placement can observe of a map: capacity by zone and shape, idle capacity, totals."""
    cells = free.eligible(job("any"))
    return (
        {tp: free.zone_replicas(cells, tp, 1) for tp in (1, 2, 3, 4, 8, 16)},
        {tp: free.replicas_when_empty(cells, tp, 1) for tp in (1, 4, 8, 16)},
        free.free_gpus(),
        {c: n for c, n in free.class_gpus.items() if n},
        {
            pool: u
            for pool, used in free.pool_classes.items()
            if (u := {c: n for c, n in used.items() if n})
        },
    )


node_changes = st.lists(
    st.tuples(
        st.integers(0, 7),  # which node
        st.sampled_from(["cordon", "uncordon", "lose-worker", "resize", "move", "drop", "add"]),
    ),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(node_changes, st.integers(0, 5), st.integers(0, 5)), max_size=6))
def test_a_map_kept_between_passes_matches_a_fresh_one(steps) -> None:
    fleet = {
        n.key: n
        for n in (
            node(f"n{i}", gpus=4 if i % 3 else 8, zone=f"z{i % 2}", island="nvl" if i < 2 else "")
            for i in range(6)
        )
    }
    running: dict[str, tuple] = {}
    kept = FreeMap()
    for t, (changes, starts, stops) in enumerate(steps):
        for i, change in changes:
            key = f"p/n{i}"
            n = fleet.get(key)
            if change == "add" and n is None:
                fleet[key] = node(f"n{i}", gpus=2)
            elif n is None:
                continue
            elif change == "drop":
                del fleet[key]
            else:
                fleet[key] = {
                    "cordon": lambda n: replace(n, schedulable=False),
                    "uncordon": lambda n: replace(n, schedulable=True, worker="w"),
                    "lose-worker": lambda n: replace(n, worker=None),
                    "resize": lambda n: replace(n, gpus=n.gpus + 4),
                    "move": lambda n: replace(n, zone="z9", node_class="a100"),
                    "add": lambda n: n,
                }[change](n)
        for key in sorted(running)[:stops]:
            del running[key]
        snap = snapshot(dict(fleet), running=list(running.values()))
        free = FreeMap(snap)
        for s in range(starts):
            demand = job(f"t{t}-{s}", tp=[1, 2, 4][s % 3], min_replicas=1, max_replicas=2)
            n = max_replicas_that_fit(demand, snap, free=free)
            if n:
                running[demand.key] = (demand, place(demand, snap, n, free=free))
        snap = snapshot(dict(fleet), [job("q", tp=4, max_replicas=3)], list(running.values()))
        kept.sync(snap)
        assert view(kept) == view(FreeMap(snap))
        fresh_plan = plan(snap, now=0).actions
        kept_plan = plan(snap, now=0, free=kept).actions
        assert [
            (type(a), a.job, getattr(a, "placement", None) and a.placement.dp) for a in kept_plan
        ] == [
            (type(a), a.job, getattr(a, "placement", None) and a.placement.dp) for a in fresh_plan
        ]
        assert view(kept) == view(FreeMap(snap))  # the pass left it as it found it


def test_a_pass_that_raises_leaves_the_kept_map_usable() -> None:
    fleet = nodes(node("a"), node("b"))
    snap = snapshot(fleet, [job("j", tp=8)])
    kept = FreeMap(snap)

    def broken(key: str) -> tuple[TrainingStrategy, dict[str, object]]:
        raise KeyError(key)

    with pytest.raises(KeyError):
        plan(snap, now=0, strategy_for=broken, free=kept)
    assert [type(a) for a in plan(snap, now=0, free=kept).actions] == [Start]
    assert view(kept) == view(FreeMap(snap))


def test_a_kept_map_follows_a_running_job_into_another_pool() -> None:
    fleet = nodes(node("a"), node("b"))
    running = job("r", tp=8, pool="one")
    snap = snapshot(fleet, running=[(running, whole(running, "a"))])
    kept = FreeMap(snap)
    moved = snapshot(fleet, running=[(replace(running, pool="two"), whole(running, "a"))])
    kept.sync(moved)
    assert view(kept) == view(FreeMap(moved))
    assert kept.pool_classes["two"] == {"h100": 8} and not kept.pool_classes["one"]["h100"]
