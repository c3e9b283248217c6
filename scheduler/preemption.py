"""Making room for a job that does not fit: the cheapest set of lower-priority gangs to give way.

Steps are tried in this order until the job's minimum gang fits:

1. GPUs of gangs already on their way out (stopping in the snapshot, or evicted or shrunk earlier
   in this pass) that no other job has claimed: waiting for them costs nothing more;
2. shrinking lower-priority elastic gangs toward their minimum, one DP replica at a time (the
   replica holding most GPUs the job may use first), lowest priority first;
3. evicting lower-priority gangs, lowest priority first, then the most recent checkpoint first
   (least work lost; never checkpointed last), then the smaller gang.

Then every step the job can do without is dropped again, latest first (so the lowest priorities
give way, and a later, larger victim makes earlier small ones unnecessary): the set is minimal,
and no gang gives up GPUs the job does not need. If even every step together is not enough,
nothing happens. Only strictly lower priorities give way; paused gangs are the service's.

All of it works on the pass's `FreeMap`: slots are given back to try a fit and taken again, and
on success the job's gang is placed there (reserved for it, so later jobs in the pass do not
take the room), and freed slots it does not use are taken again: until the victims are gone,
their GPUs are not free for anyone else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from infermesh.scheduler.capacity import FreeMap, Slot
from infermesh.scheduler.placement import assemble, place_replicas, replica_slots
from infermesh.scheduler.snapshot import JobDemand, JobKey, Placement, Snapshot


@dataclass(slots=True, eq=False)  # steps are compared by identity
class Step:
    kind: str  # "wait" | "shrink" | "evict"
    job: JobKey
    slots: list[Slot]
    cells: dict[int, int]  # the slots per cell the job may use (usable nodes only)
    replica: int = -1  # shrink: the DP index given up

    @property
    def useful(self) -> int:
        return sum(self.cells.values())


class Room:
    """How many replicas of one shape the job's cells hold, kept current as steps give and
    take slots: only the cells a step touches are counted again."""

    def __init__(self, free: FreeMap, cells: tuple[int, ...], tp: int, pp: int) -> None:
        self.free, self.tp, self.pp = free, tp, pp
        self.groups = {cid: free.groups(cid, tp) for cid in cells}
        self.zones: dict[str, int] = {}
        for cid, n in self.groups.items():
            zone = free.cells[cid].zone
            self.zones[zone] = self.zones.get(zone, 0) + n

    def update(self, step: Step) -> None:
        for cid in step.cells:
            n = self.free.groups(cid, self.tp)
            zone = self.free.cells[cid].zone
            self.zones[zone] += n - self.groups[cid]
            self.groups[cid] = n

    def replicas(self) -> int:
        return sum(n // self.pp for n in self.zones.values())


@dataclass(frozen=True, slots=True)
class Preemption:
    """What making room for a job takes; its gang is reserved in the pass's FreeMap."""

    replicas: list[list[Slot]]  # the job's reserved gang
    waits_for: tuple[JobKey, ...]  # gangs already stopping
    evict: tuple[JobKey, ...]
    shrink: dict[JobKey, Placement]  # the new, smaller placements

    def reason(self) -> str:
        parts = []
        if self.evict:
            parts.append(f"preempting {', '.join(self.evict)}")
        if self.shrink:
            parts.append(f"shrinking {', '.join(self.shrink)}")
        if self.waits_for:
            parts.append(f"waiting for {', '.join(self.waits_for)} to stop")
        return "; ".join(parts)


class Leaving:
    """The pass's record of gangs that give GPUs back: the slots they hold that no job has
    claimed yet, and the running gangs not to be shrunk or evicted again (already acted on)."""

    def __init__(self) -> None:
        self.touched: set[JobKey] = set()
        self._slots: dict[JobKey, dict[Slot, None]] = {}  # insertion-ordered sets
        self._owner: dict[Slot, JobKey] = {}
        self._cells: dict[JobKey, dict[int, int]] = {}  # per-cell counts, cached

    @classmethod
    def of(cls, snapshot: Snapshot) -> Leaving:
        out = cls()
        for job in snapshot.stopping:
            placement = snapshot.running.get(job)
            if placement is not None:
                out.add(job, [(s.node, s.gpu) for s in placement.ranks])
        return out

    def add(self, job: JobKey, slots: Iterable[Slot]) -> None:
        """These slots of `job` will be free once it stops (or relaunches smaller)."""
        self.touched.add(job)
        mine = self._slots.setdefault(job, {})
        for slot in slots:
            mine[slot] = None
            self._owner[slot] = job
        self._cells.pop(job, None)

    def claim(self, slots: Iterable[Slot]) -> None:
        """A gang reserved these slots: they are no longer anyone's to wait for."""
        for slot in slots:
            job = self._owner.pop(slot, None)
            if job is not None:
                del self._slots[job][slot]
                self._cells.pop(job, None)

    def jobs(self) -> Iterator[tuple[JobKey, list[Slot]]]:
        return ((job, list(slots)) for job, slots in self._slots.items() if slots)

    def cells(self, job: JobKey, free: FreeMap) -> dict[int, int]:
        """The job's unclaimed slots per cell of usable nodes."""
        found = self._cells.get(job)
        if found is None:
            found = self._cells[job] = {}
            for node, _ in self._slots[job]:
                cid = free.cell_of_node(node)
                if cid is not None:
                    found[cid] = found.get(cid, 0) + 1
        return found


class Preemptor:
    """Finds preemptions for the jobs of one pass; victim orders are sorted, and each victim's
    replicas counted per cell, once per pass."""

    def __init__(self, snapshot: Snapshot, free: FreeMap, leaving: Leaving) -> None:
        self.snapshot, self.free, self.leaving = snapshot, free, leaving
        candidates = [
            (demand, placement)
            for job, placement in snapshot.running.items()
            if (demand := snapshot.jobs.get(job)) is not None and not demand.paused
        ]
        self._evict_order = sorted(
            candidates,
            key=lambda c: (
                c[0].priority,
                -(c[0].last_checkpoint if c[0].last_checkpoint is not None else -math.inf),
                c[1].gpus,
                c[0].key,
            ),
        )
        self._shrink_order = sorted(
            (c for c in candidates if c[1].dp > c[0].min_replicas),
            key=lambda c: (c[0].priority, -(c[1].dp - c[0].min_replicas), c[0].key),
        )
        self._replicas: dict[JobKey, tuple[list[list[Slot]], list[dict[int, int]]]] = {}
        self._hopeless: dict[tuple[object, ...], int] = {}  # (cells, shape, priority) -> GPUs

    def find(self, demand: JobDemand, replicas: int) -> Preemption | None:
        """Room for `replicas` replicas of `demand`, or None (and nothing changed)."""
        free = self.free
        cells = free.eligible(demand)
        need = replicas * demand.replica_gpus
        memo = (cells, demand.tp, demand.pp, demand.priority)
        if self._hopeless.get(memo, math.inf) <= need:
            return None
        have = free.free_gpus(cells)
        room: Room | None = None  # counted once the GPUs alone could be enough
        chosen: list[Step] = []
        given = 0  # chosen[:given] are given back to the map; the rest only counted so far
        for step in self._steps(demand, set(cells)):
            if step.kind == "evict":  # an eviction makes the job's shrink steps moot
                moot = [s for s in chosen if s.job == step.job]
                if moot:
                    have -= sum(s.useful for s in moot)
                    given -= sum(1 for s in chosen[:given] if s.job == step.job)
                    chosen = [s for s in chosen if s.job != step.job]
            chosen.append(step)
            have += step.useful
            if have < need:
                continue
            for pending in chosen[given:]:
                free.give(pending.slots)
                if room is not None:
                    room.update(pending)
            given = len(chosen)
            if room is None:
                room = Room(free, cells, demand.tp, demand.pp)
            if room.replicas() >= replicas:
                break
        else:
            free.take(slot for step in chosen[:given] for slot in step.slots)
            self._hopeless[memo] = min(need, self._hopeless.get(memo, need))
            return None
        assert room is not None
        for step in reversed(chosen[:-1]):  # drop what the job can do without, latest first
            if have - step.useful < need:
                continue  # too few GPUs without it: needed
            free.take(step.slots)
            room.update(step)
            if room.replicas() >= replicas:
                chosen.remove(step)
                have -= step.useful
            else:
                free.give(step.slots)
                room.update(step)
        gang = place_replicas(demand, free, replicas)
        assert gang is not None  # the room said so
        used = {slot for replica in gang for slot in replica}
        free.take(slot for step in chosen for slot in step.slots if slot not in used)
        return self._commit(demand, gang, used, chosen)

    def _replica_cells(self, placement: Placement) -> tuple[list[list[Slot]], list[dict[int, int]]]:
        """A running gang's replicas, and each one's GPUs per cell of usable nodes."""
        found = self._replicas.get(placement.job)
        if found is None:
            replicas = replica_slots(placement)
            counts = []
            for replica in replicas:
                count: dict[int, int] = {}
                for node, _ in replica:
                    cid = self.free.cell_of_node(node)
                    if cid is not None:
                        count[cid] = count.get(cid, 0) + 1
                counts.append(count)
            found = self._replicas[placement.job] = (replicas, counts)
        return found

    def _steps(self, demand: JobDemand, allowed: set[int]) -> Iterator[Step]:
        touched = self.leaving.touched

        def mine(count: dict[int, int]) -> dict[int, int]:
            return {cid: n for cid, n in count.items() if cid in allowed}

        for job, slots in self.leaving.jobs():
            cells = mine(self.leaving.cells(job, self.free))
            if cells:
                yield Step("wait", job, slots, cells)
        for victim, placement in self._shrink_order:
            if victim.priority >= demand.priority:
                break
            if victim.key in touched:
                continue
            replicas, counts = self._replica_cells(placement)
            worth = [(mine(c), i) for i, c in enumerate(counts)]
            worth.sort(key=lambda w: (-sum(w[0].values()), -w[1]))  # most useful, then the last
            for cells, index in worth[: placement.dp - victim.min_replicas]:
                if cells:
                    yield Step("shrink", victim.key, replicas[index], cells, index)
        for victim, placement in self._evict_order:
            if victim.priority >= demand.priority:
                break
            if victim.key in touched:
                continue
            replicas, counts = self._replica_cells(placement)
            cells: dict[int, int] = {}
            for count in counts:
                for cid, n in mine(count).items():
                    cells[cid] = cells.get(cid, 0) + n
            if cells:
                yield Step("evict", victim.key, [slot for r in replicas for slot in r], cells)

    def _commit(
        self, demand: JobDemand, gang: list[list[Slot]], used: set[Slot], chosen: list[Step]
    ) -> Preemption:
        leaving, snapshot = self.leaving, self.snapshot
        leaving.claim(used)
        dropped: dict[JobKey, list[int]] = {}
        for step in chosen:
            if step.kind == "shrink":
                dropped.setdefault(step.job, []).append(step.replica)
            if step.kind != "wait":
                leaving.add(step.job, (slot for slot in step.slots if slot not in used))
        shrink = {}
        for job, indices in dropped.items():
            placement = snapshot.running[job]
            keep = [r for i, r in enumerate(replica_slots(placement)) if i not in indices]
            shrink[job] = assemble(snapshot.jobs[job], keep)
        return Preemption(
            replicas=gang,
            waits_for=tuple(s.job for s in chosen if s.kind == "wait"),
            evict=tuple(s.job for s in chosen if s.kind == "evict"),
            shrink=shrink,
        )
