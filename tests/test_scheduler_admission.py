"""Admission as job owners and pool admins see it: queue order, quotas, and clear reasons."""

from __future__ import annotations

from infermesh.scheduler.plan import Start, Wait, plan
from infermesh.scheduler.snapshot import Pool, Snapshot
from tests.scheduler_fleet import by_kind, job, node, nodes, snapshot, whole

FLEET = nodes(node("a"), node("b"), node("c"), node("d"))


def started(snap: Snapshot) -> list[str]:
    return [a.job for a in plan(snap, now=0).actions if isinstance(a, Start)]


def reasons(snap: Snapshot) -> dict[str, str]:
    return {a.job: a.reason for a in plan(snap, now=0).actions if isinstance(a, Wait)}


def test_higher_priority_first_then_fifo() -> None:
    fleet = nodes(node("a"), node("b"))
    queued = [
        job("old-low", tp=8, submitted=1),
        job("high", tp=8, priority=5, submitted=3),
        job("new-low", tp=8, submitted=2),
    ]
    assert started(snapshot(fleet, queued)) == ["p/high", "p/old-low"]
    assert "waiting for capacity" in reasons(snapshot(fleet, queued))["p/new-low"]


def test_pools_take_turns_by_dominant_share() -> None:
    # pool "busy" already runs 16 of 32 GPUs; "idle" runs nothing: idle's job goes first though
    # it was submitted later, and then the pools alternate as their shares move
    busy = job("busy-running", tp=8, replicas=2, pool="busy")
    queued = [
        job("busy-1", tp=8, pool="busy", submitted=1),
        job("idle-1", tp=8, pool="idle", submitted=2),
        job("idle-2", tp=8, pool="idle", submitted=3),
    ]
    snap = snapshot(
        FLEET,
        queued,
        [(busy, whole(busy, "a", "b"))],
        pools={"busy": Pool("busy"), "idle": Pool("idle")},
    )
    # idle-1 (share 0 < 16/32), then idle (8/32) < busy (16/32): idle-2; no room left for busy-1
    assert started(snap) == ["p/idle-1", "p/idle-2"]
    assert "waiting for capacity" in reasons(snap)["p/busy-1"]


def test_dominant_share_is_per_gpu_class() -> None:
    # "a100s" holds 8 of 16 A100s (share 0.5); "h100s" holds 16 of 48 H100s (share 0.33): the
    # H100 pool has more GPUs but the lower dominant share, so its job goes first
    fleet = nodes(
        node("a1", node_class="a100"),
        node("a2", node_class="a100"),
        *(node(f"h{i}") for i in range(6)),
    )
    on_a100 = job("a-run", tp=8, pool="a100s")
    on_h100 = job("h-run", tp=8, replicas=2, pool="h100s")
    queued = [job("a-next", tp=8, pool="a100s", submitted=1)]
    queued.append(job("h-next", tp=8, pool="h100s", submitted=2))
    snap = snapshot(
        fleet,
        queued,
        [(on_a100, whole(on_a100, "a1")), (on_h100, whole(on_h100, "h0", "h1"))],
        pools={"a100s": Pool("a100s"), "h100s": Pool("h100s")},
    )
    assert started(snap) == ["p/h-next", "p/a-next"]


def test_priority_beats_fair_share() -> None:
    busy = job("busy-running", tp=8, replicas=3, pool="busy")
    queued = [job("idle-1", tp=8, pool="idle"), job("busy-1", tp=8, pool="busy", priority=1)]
    snap = snapshot(
        FLEET, queued, [(busy, whole(busy, "a", "b", "c"))], pools={"busy": Pool("busy")}
    )
    snap.pools["idle"] = Pool("idle")
    assert started(snap) == ["p/busy-1"]


def test_spent_gpu_hours_or_budget_keep_a_job_queued_with_the_pool_named() -> None:
    pools = {
        "hours": Pool("hours", quota_gpu_hours=100, used_gpu_hours=100.5),
        "money": Pool("money", budget_usd=5000, spent_usd=5000),
        "fine": Pool("fine", quota_gpu_hours=100, used_gpu_hours=10, budget_usd=10, spent_usd=1),
    }
    queued = [job("h", pool="hours"), job("m", pool="money"), job("f", pool="fine")]
    queued.append(job("nowhere", pool="missing"))
    snap = snapshot(FLEET, queued, pools=pools)
    why = reasons(snap)
    assert why["p/h"] == "capacity pool 'hours' has used 100.5 of its 100 GPU-hour quota"
    assert why["p/m"] == "capacity pool 'money' has spent $5,000.00 of its $5,000.00 budget"
    assert why["p/nowhere"] == "capacity pool 'missing' does not exist"
    assert started(snap) == ["p/f"]


def test_max_gpus_admits_fewer_elastic_replicas_or_keeps_the_job_waiting() -> None:
    pools = {"capped": Pool("capped", max_gpus=20)}
    running = job("r", tp=8, pool="capped")
    elastic = job("e", tp=4, min_replicas=1, max_replicas=6, pool="capped")
    snap = snapshot(FLEET, [elastic], [(running, whole(running, "a"))], pools=pools)
    [start] = [a for a in plan(snap, now=0).actions if isinstance(a, Start)]
    assert start.placement.dp == 3  # 8 + 3 x 4 = 20
    rigid = job("rigid", tp=8, replicas=2, pool="capped")
    why = reasons(snapshot(FLEET, [rigid], [(running, whole(running, "a"))], pools=pools))
    assert why["p/rigid"] == (
        "capacity pool 'capped' has 8 of its 20 GPUs in use; the job needs 16 more"
    )


def test_constraints_that_can_never_be_met_are_told_apart_from_a_full_fleet() -> None:
    full = job("full", tp=8, replicas=4)
    running = [(full, whole(full, "a", "b", "c", "d"))]
    queued = [
        job("gpu-class", node_classes=("b200",)),
        job("residency", residency=("EU",)),
        job("too-wide", tp=16),
        job("pool-domain", pool="eu", domains=("cloud-us",)),
        job("later", tp=8),
    ]
    snap = snapshot(FLEET, queued, running, pools={"eu": Pool("eu", domains=("cloud-eu",))})
    why = reasons(snap)
    assert why["p/gpu-class"] == "constraints can never be met: no node matches node classes b200"
    assert why["p/residency"] == "constraints can never be met: no node matches residency EU"
    assert why["p/pool-domain"] == (
        "constraints can never be met: no node matches domains cloud-us, pool 'eu' domains cloud-eu"
    )
    assert why["p/too-wide"].startswith("can never be placed: 1 replica(s) of tp 16 x pp 1")
    assert why["p/later"].startswith("waiting for capacity: needs 1 replica(s) of 8 GPUs")
    # a cordoned node may come back: that is waiting, not never
    cordoned = nodes(node("a", schedulable=False))
    assert reasons(snapshot(cordoned, [job("j")]))["p/j"].startswith("waiting for capacity")


def test_a_job_whose_strategy_params_are_bad_waits_with_the_message() -> None:
    from infermesh.scheduler.topology import strategy_named

    snap = snapshot(FLEET, [job("bad"), job("good")])
    actions = plan(
        snap,
        now=0,
        strategy_for=lambda key: (
            strategy_named("hierarchical"),
            {"inter_fanout": 1} if key == "p/bad" else {},
        ),
    ).actions
    kinds = by_kind(actions)
    assert [a.job for a in kinds["start"]] == ["p/good"]
    assert kinds["wait"][0].reason == (
        "topology strategy: strategy param inter_fanout must be an integer >= 2, not 1"
    )
    # the GPUs it did not get went to the next job: good starts on node a, GPU 0
    assert kinds["start"][0].placement.ranks[0].gpu == 0
