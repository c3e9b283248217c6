"""One planning pass: the queue's jobs started, preempted for or left waiting; elastic gangs
grown or shrunk. The service calls `plan(snapshot, now=...)` and carries out the actions.

The queue is every job of the snapshot that is neither running nor paused, served in
`admission.FairQueue` order. For each job: constraints that can never be met, a spent pool, or a
pool at max_gpus -> Wait with the reason; else the most DP replicas that fit (between min and max)
-> Start; else, if lower-priority gangs can make room for its minimum -> Evict and Resize
(shrink) actions for them and Wait("preempting ...") for the job, whose gang is reserved for the
rest of the pass and which starts in a later pass once the victims are gone; else Wait for
capacity. Then `elastic.rescale`. Decisions within the pass are consistent: every start and
reservation takes its GPUs from the pass's `FreeMap`, and GPUs of gangs that are stopping are not
free until the snapshot says they are gone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infermesh.scheduler.admission import (
    FairQueue,
    Ledger,
    max_gpus_reason,
    never_fits_reason,
    quota_reason,
    replica_limit,
)
from infermesh.scheduler.capacity import FreeMap
from infermesh.scheduler.elastic import rescale
from infermesh.scheduler.placement import assemble, max_replicas_that_fit, place_replicas
from infermesh.scheduler.preemption import Leaving, Preemptor
from infermesh.scheduler.snapshot import JobDemand, JobKey, Placement, Snapshot
from infermesh.scheduler.topology import TopologyHint, TrainingStrategy, strategy_named

StrategyFor = Callable[[JobKey], tuple[TrainingStrategy, Mapping[str, Any]]]
DEFAULT_STRATEGY = "net_aware_hier"


@dataclass(frozen=True, slots=True)
class Start:
    job: JobKey
    placement: Placement
    topology: TopologyHint


@dataclass(frozen=True, slots=True)
class Resize:
    """Grow or shrink a running gang: checkpoint, stop, relaunch on `placement`."""

    job: JobKey
    placement: Placement
    topology: TopologyHint
    reason: str


@dataclass(frozen=True, slots=True)
class Evict:
    """Preempt: checkpoint, then stop; the job goes back to the queue."""

    job: JobKey
    reason: str
    by: JobKey


@dataclass(frozen=True, slots=True)
class Wait:
    job: JobKey
    reason: str


Action = Start | Resize | Evict | Wait


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)


def plan(
    snapshot: Snapshot,
    *,
    now: float,
    strategy_for: StrategyFor | None = None,
    free: FreeMap | None = None,
) -> Plan:
    """The actions of one pass over `snapshot` at time `now` (seconds since the epoch).
    `strategy_for(job)` gives a job's TrainingStrategy and params (default: net_aware_hier, no
    params); a ValueError from it or from the strategy leaves the job waiting with its message.
    `free`: a FreeMap kept between passes (`FreeMap()` at first); the pass syncs it to
    `snapshot`, which costs only what changed since the last pass, and leaves it describing
    `snapshot`. Without it each pass indexes the whole fleet afresh."""
    return Planner(snapshot, now=now, strategy_for=strategy_for, free=free).run()


class Planner:
    """`plan()` step by step: `step()` decides the next queued job (False when none is left),
    `finish()` rescales elastic gangs and returns the plan."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        now: float,
        strategy_for: StrategyFor | None = None,
        free: FreeMap | None = None,
    ) -> None:
        self.snapshot, self.now = snapshot, now
        self._kept = free is not None
        if free is None:
            free = FreeMap(snapshot)
        else:  # a map kept between passes: bring it up to date; finish() leaves it so
            free.sync(snapshot)
            free.begin()
        self.free = free
        self.ledger = Ledger(snapshot, free)
        self.leaving = Leaving.of(snapshot)
        self._preemptor: Preemptor | None = None  # built on first need
        self._strategy_for = strategy_for or _default_strategy
        queued = (d for k, d in snapshot.jobs.items() if k not in snapshot.running and not d.paused)
        self.queue = FairQueue(queued, self.ledger)
        self.actions: list[Action] = []
        self.blocked_below: int | None = None  # highest priority left waiting for capacity

    def run(self) -> Plan:
        while self.step():
            pass
        return self.finish()

    def step(self) -> bool:
        demand = self.queue.pop()
        if demand is None:
            return False
        self._decide(demand)
        return True

    def finish(self) -> Plan:
        for scale in rescale(
            self.snapshot, self.free, self.ledger, self.leaving, self.blocked_below
        ):
            hint = self._hint(scale.demand, scale.placement)
            if isinstance(hint, TopologyHint):
                self.actions.append(Resize(scale.demand.key, scale.placement, hint, scale.reason))
        if self._kept:
            self.free.rollback()
        return Plan(self.actions)

    def _decide(self, demand: JobDemand) -> None:
        snapshot, free = self.snapshot, self.free
        pool = snapshot.pools.get(demand.pool) if demand.pool else None
        reason = never_fits_reason(demand, free) or quota_reason(demand, pool)
        if reason is not None:
            self.actions.append(Wait(demand.key, reason))
            return
        limit = replica_limit(demand, pool, self.ledger)
        if pool is not None and limit is not None and limit < demand.min_replicas:
            self.actions.append(Wait(demand.key, max_gpus_reason(demand, pool, self.ledger)))
            return
        n = max_replicas_that_fit(demand, snapshot, free=free, limit=limit)
        if n:
            gang = place_replicas(demand, free, n)
            assert gang is not None  # max_replicas_that_fit counted them
            placement = assemble(demand, gang)
            hint = self._hint(demand, placement)
            if isinstance(hint, TopologyHint):
                self.ledger.charge(demand.pool, placement.nodes())
                self.actions.append(Start(demand.key, placement, hint))
            else:
                free.give(slot for replica in gang for slot in replica)
                self.actions.append(Wait(demand.key, hint))
            return
        self._make_room(demand)

    def _make_room(self, demand: JobDemand) -> None:
        if self._preemptor is None:
            self._preemptor = Preemptor(self.snapshot, self.free, self.leaving)
        found = self._preemptor.find(demand, demand.min_replicas)
        if found is None:
            if self.blocked_below is None or demand.priority > self.blocked_below:
                self.blocked_below = demand.priority
            cells = self.free.eligible(demand)
            self.actions.append(
                Wait(
                    demand.key,
                    f"waiting for capacity: needs {demand.min_replicas} replica(s) of "
                    f"{demand.replica_gpus} GPUs (tp {demand.tp} x pp {demand.pp}); "
                    f"{self.free.free_gpus(cells)} GPUs free on nodes it may use",
                )
            )
            return
        for job in found.evict:
            victim = self.snapshot.jobs[job]
            self.actions.append(Evict(job, self._evict_reason(demand, victim), by=demand.key))
        for job, placement in found.shrink.items():
            victim = self.snapshot.jobs[job]
            hint = self._hint(victim, placement)
            if isinstance(hint, TopologyHint):
                reason = (
                    f"shrunk from {self.snapshot.running[job].dp} to {placement.dp} replicas "
                    f"to make room for {demand.key} (priority {demand.priority} > "
                    f"{victim.priority})"
                )
                self.actions.append(Resize(job, placement, hint, reason))
            else:  # it cannot be relaunched smaller: evict it instead
                self.leaving.add(job, ((s.node, s.gpu) for s in placement.ranks))
                reason = self._evict_reason(demand, victim)
                self.actions.append(Evict(job, reason, by=demand.key))
        self.actions.append(Wait(demand.key, found.reason()))

    def _evict_reason(self, demand: JobDemand, victim: JobDemand) -> str:
        if victim.last_checkpoint is None:
            since = "no checkpoint yet"
        else:
            since = f"last checkpoint {max(0.0, self.now - victim.last_checkpoint):.0f} s ago"
        return (
            f"preempted by {demand.key} (priority {demand.priority} > {victim.priority}); {since}"
        )

    def _hint(self, demand: JobDemand, placement: Placement) -> TopologyHint | str:
        """The job's topology hint, or the reason it has none (a bad strategy or params)."""
        try:
            strategy, params = self._strategy_for(demand.key)
            return strategy.hint(placement, self.snapshot, params)
        except ValueError as e:
            return f"topology strategy: {e}"


def _default_strategy(job: JobKey) -> tuple[TrainingStrategy, Mapping[str, Any]]:
    return strategy_named(DEFAULT_STRATEGY), {}
