"""Elastic gangs after the queue is served: grow into free capacity, shrink to a lowered max.

Only DP scales, by whole replicas. A running gang below its max grows when, after the queue's
pass, capacity it may use is free, no queued job of equal or higher priority is left waiting for
capacity (that job would have wanted the room), and its pool's quotas allow it (GPU-hours and
budget not spent, max_gpus not reached). Gangs grow in queue order (priority, then the pool's
dominant share, then submit time), each as far as it can: the new replicas are placed in the
zones the gang already uses when they have room. A gang above its max (the job was scaled down)
gives up its last replicas. Either way the result is a new placement; the executor checkpoints,
stops and relaunches the gang at the new size.
"""

from __future__ import annotations

from dataclasses import dataclass

from infermesh.scheduler.admission import Ledger, quota_reason, replica_limit
from infermesh.scheduler.capacity import FreeMap
from infermesh.scheduler.placement import assemble, place_replicas, replica_slots
from infermesh.scheduler.preemption import Leaving
from infermesh.scheduler.snapshot import JobDemand, Placement, Snapshot


@dataclass(frozen=True, slots=True)
class Scale:
    """A running gang's new placement and why."""

    demand: JobDemand
    placement: Placement
    reason: str


def rescale(
    snapshot: Snapshot,
    free: FreeMap,
    ledger: Ledger,
    leaving: Leaving,
    blocked_below: int | None,
) -> list[Scale]:
    """New placements for running gangs that grow or shrink, in the order they were decided.
    `blocked_below`: the highest priority of a queued job left waiting for capacity (gangs of
    that priority or lower do not grow); None when none is."""
    gangs = [
        (demand, placement)
        for job, placement in snapshot.running.items()
        if job not in leaving.touched
        and (demand := snapshot.jobs.get(job)) is not None
        and not demand.paused
        and placement.dp != demand.max_replicas
    ]
    gangs.sort(key=lambda g: (-g[0].priority, ledger.share(g[0].pool), g[0].submitted, g[0].key))
    out = []
    for demand, placement in gangs:
        if placement.dp > demand.max_replicas:
            out.append(_shrink(demand, placement, leaving, ledger))
        elif blocked_below is None or demand.priority > blocked_below:
            grown = _grow(demand, placement, snapshot, free, ledger)
            if grown is not None:
                out.append(grown)
    return out


def _shrink(demand: JobDemand, placement: Placement, leaving: Leaving, ledger: Ledger) -> Scale:
    replicas = replica_slots(placement)
    keep, drop = replicas[: demand.max_replicas], replicas[demand.max_replicas :]
    leaving.add(demand.key, (slot for r in drop for slot in r))
    new = assemble(demand, keep)
    ledger.charge(demand.pool, _count(drop), -1)
    return Scale(
        demand,
        new,
        f"scaled down from {placement.dp} to {new.dp} replicas (max {demand.max_replicas})",
    )


def _grow(
    demand: JobDemand, placement: Placement, snapshot: Snapshot, free: FreeMap, ledger: Ledger
) -> Scale | None:
    pool = snapshot.pools.get(demand.pool) if demand.pool else None
    if quota_reason(demand, pool) is not None:
        return None
    room = demand.max_replicas - placement.dp
    limit = replica_limit(demand, pool, ledger)
    if limit is not None:
        room = min(room, limit)
    if room <= 0:
        return None
    extra = free.count_replicas(free.eligible(demand), demand.tp, demand.pp, room)
    if not extra:
        return None
    near = placement.nodes()
    added = place_replicas(demand, free, extra, near=near)
    assert added is not None  # count_replicas counted them
    ledger.charge(demand.pool, _count(added))
    new = assemble(demand, [*replica_slots(placement), *added])
    return Scale(
        demand,
        new,
        f"grown from {placement.dp} to {new.dp} replicas (max {demand.max_replicas}): "
        "capacity is free",
    )


def _count(replicas: list[list[tuple[str, int]]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for replica in replicas:
        for node, _ in replica:
            out[node] = out.get(node, 0) + 1
    return out
