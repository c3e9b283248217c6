"""Who goes next, and who may not go at all: queue order, pool quotas, impossible constraints.

Queue order: priority (higher first); within a priority, dominant-resource fairness across
capacity pools (a pool's dominant share is the largest, over GPU classes, of its GPUs in use of
that class divided by the fleet's GPUs of that class; the pool with the lowest share goes first,
and shares move as the pass starts jobs); within a pool, submit time (FIFO), then the job's key.
Jobs without a pool share one anonymous pool (`NO_POOL`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from infermesh.scheduler.capacity import NO_POOL, FreeMap
from infermesh.scheduler.snapshot import JobDemand, Pool, Snapshot


class Ledger:
    """GPUs in use per pool and GPU class (the node class), and the fleet's GPUs per class."""

    def __init__(self, snapshot: Snapshot, free: FreeMap) -> None:
        self._nodes = snapshot.nodes
        self.total = free.class_gpus
        self.used = {pool: dict(classes) for pool, classes in free.pool_classes.items()}
        self.gpus = {pool: sum(classes.values()) for pool, classes in self.used.items()}
        self._shares: dict[str, float] = {}

    def charge(self, pool: str | None, gpus_by_node: Mapping[str, int], sign: int = 1) -> None:
        """Count GPUs (per node) as in use by `pool` (or no longer, with sign -1)."""
        classes: dict[str, int] = {}
        for key, n in gpus_by_node.items():
            node = self._nodes.get(key)
            if node is not None:
                classes[node.node_class] = classes.get(node.node_class, 0) + sign * n
        self._add(pool, classes)

    def _add(self, pool: str | None, classes: Mapping[str, int]) -> None:
        name = pool or NO_POOL
        used = self.used.setdefault(name, {})
        for node_class, n in classes.items():
            used[node_class] = used.get(node_class, 0) + n
            self.gpus[name] = self.gpus.get(name, 0) + n
        self._shares.pop(name, None)

    def share(self, pool: str | None) -> float:
        """The pool's dominant share (0 for a pool with nothing running)."""
        name = pool or NO_POOL
        share = self._shares.get(name)
        if share is None:
            used = self.used.get(name, {})
            share = max(
                (n / self.total[c] for c, n in used.items() if self.total.get(c)), default=0
            )
            self._shares[name] = share
        return share


class FairQueue:
    """Queued jobs in the order above; `pop` reads shares from the ledger at each call, so a
    start charged to the ledger moves its pool back in line."""

    def __init__(self, jobs: Iterable[JobDemand], ledger: Ledger) -> None:
        self._ledger = ledger
        levels: dict[int, dict[str, list[JobDemand]]] = {}
        for job in jobs:
            levels.setdefault(job.priority, {}).setdefault(job.pool or NO_POOL, []).append(job)
        self._levels: list[tuple[int, dict[str, deque[JobDemand]]]] = [
            (
                priority,
                {
                    pool: deque(sorted(queue, key=lambda j: (j.submitted, j.key)))
                    for pool, queue in sorted(pools.items())
                },
            )
            for priority, pools in sorted(levels.items(), reverse=True)
        ]

    def pop(self) -> JobDemand | None:
        while self._levels:
            pools = self._levels[0][1]
            if pools:
                pool = min(pools, key=lambda p: (self._ledger.share(p), p))
                queue = pools[pool]
                job = queue.popleft()
                if not queue:
                    del pools[pool]
                return job
            self._levels.pop(0)
        return None


def quota_reason(demand: JobDemand, pool: Pool | None) -> str | None:
    """Why the job's pool lets nothing more start now (GPU-hours or budget spent, or no such
    pool); None when it may."""
    if demand.pool is None:
        return None
    if pool is None:
        return f"capacity pool {demand.pool!r} does not exist"
    if pool.quota_gpu_hours is not None and pool.used_gpu_hours >= pool.quota_gpu_hours:
        return (
            f"capacity pool {pool.name!r} has used {pool.used_gpu_hours:g} of its "
            f"{pool.quota_gpu_hours:g} GPU-hour quota"
        )
    if pool.budget_usd is not None and pool.spent_usd >= pool.budget_usd:
        return (
            f"capacity pool {pool.name!r} has spent ${pool.spent_usd:,.2f} of its "
            f"${pool.budget_usd:,.2f} budget"
        )
    return None


def replica_limit(demand: JobDemand, pool: Pool | None, ledger: Ledger) -> int | None:
    """The most replicas the pool's max_gpus leaves room for (None: no limit)."""
    if pool is None or pool.max_gpus is None:
        return None
    room = pool.max_gpus - ledger.gpus.get(pool.name, 0)
    return max(0, room) // demand.replica_gpus


def max_gpus_reason(demand: JobDemand, pool: Pool, ledger: Ledger) -> str:
    return (
        f"capacity pool {pool.name!r} has {ledger.gpus.get(pool.name, 0)} of its "
        f"{pool.max_gpus} GPUs in use; the job needs "
        f"{demand.min_replicas * demand.replica_gpus} more"
    )


def never_fits_reason(demand: JobDemand, free: FreeMap) -> str | None:
    """Why the job can never run on this fleet, even idle (no node meets its constraints, or
    too few are large enough for its shape); None when it could."""
    cells = free.eligible(demand)
    pool = free.snapshot.pools.get(demand.pool) if demand.pool else None
    constraints = _constraints(demand, pool)
    if not cells:
        if not constraints:
            return "can never be placed: the fleet has no GPU nodes"
        return f"constraints can never be met: no node matches {constraints}"
    possible = free.replicas_when_empty(cells, demand.tp, demand.pp)
    if possible < demand.min_replicas:
        where = f"nodes matching {constraints}" if constraints else "the fleet"
        return (
            f"can never be placed: {demand.min_replicas} replica(s) of tp {demand.tp} x "
            f"pp {demand.pp} (each TP group in one node or NVLink island, each replica in one "
            f"zone) need more than the {possible} that {where} could hold even when idle"
        )
    return None


def _constraints(demand: JobDemand, pool: Pool | None) -> str:
    parts = []
    for what, values in (
        ("node classes", demand.node_classes),
        ("domains", demand.domains),
        ("residency", demand.residency),
    ):
        if values:
            parts.append(f"{what} {'|'.join(values)}")
    if pool is not None:
        for what, values in (("node classes", pool.node_classes), ("domains", pool.domains)):
            if values:
                parts.append(f"pool {pool.name!r} {what} {'|'.join(values)}")
    return ", ".join(parts)
