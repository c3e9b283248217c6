"""Free GPU slots, indexed so that a gang is placed without a fleet scan.

Nodes that are alike for every constraint (zone, region, node class, domain, residency) form a
`Cell`. Inside a cell, capacity comes in units: a node, or all nodes of one NVLink island (a TP
group may span an island's nodes, never an island's edge). Each cell keeps its units in buckets by
free GPU count, so "the fullest unit with at least tp free" is a few dictionary lookups, and the
number of TP groups a cell can still hold is a sum over a few buckets. A TP group takes exactly
one group's worth from one unit, so that count is exact: whether a gang fits is known before any
GPU is picked, and placement never backs out.

A `FreeMap` describes one `Snapshot`: every GPU of a running placement is taken; only schedulable
nodes with a worker offer free slots. `sync(snapshot)` brings a map kept between passes up to
date by touching only what changed (nodes and placements are compared by identity, nodes then by
value), so a pass over a large, mostly unchanged fleet does not pay for the whole fleet. Within a
pass, `begin()` starts a journal of takes and gives that `rollback()` undoes.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from infermesh.scheduler.snapshot import GpuNode, JobDemand, JobKey, NodeKey, Placement, Snapshot

Slot = tuple[NodeKey, int]  # (node, GPU index on it)
NO_POOL = ""  # the pool of jobs that name none
_Charge = tuple[JobDemand | None, str, dict[str, int]]  # a gang's demand, pool, GPUs per class


def pool_of(demand: JobDemand | None) -> str:
    return (demand.pool if demand is not None else None) or NO_POOL


@dataclass(frozen=True, slots=True)
class Cell:
    """Nodes interchangeable for every placement constraint."""

    project: str  # a job only ever runs on its own project's nodes (tenants stay apart)
    zone: str
    region: str
    node_class: str
    domain: str | None
    residency: str | None


class FreeMap:
    """Free GPU slots by node, unit, cell and zone; see the module's docstring."""

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.snapshot = Snapshot(nodes={})
        self.cells: list[Cell] = []
        self.class_gpus: dict[str, int] = {}  # all nodes' GPUs per node class
        self.pool_classes: dict[str, dict[str, int]] = {}  # running gangs' GPUs: pool, class
        self._cell_ids: dict[Cell, int] = {}
        self._zones: dict[str, list[int]] = {}
        self._buckets: list[list[dict[int, None]]] = []  # [cell][k]: units with k free GPUs
        self._cell_free: list[int] = []  # [cell]: free GPUs on its usable nodes
        self._sizes: list[dict[int, int]] = []  # [cell]: unit size (all its nodes) -> units
        self._eligible: dict[tuple[object, ...], tuple[int, ...]] = {}
        self._possible: dict[tuple[object, ...], int] = {}  # replicas_when_empty, cached
        self._free: dict[NodeKey, list[int]] = {}  # every node's free GPU indices, ascending
        self._taken: dict[NodeKey, set[int]] = {}  # GPUs held by running gangs, node or not
        self._usable: set[NodeKey] = set()
        self._node_unit: dict[NodeKey, int] = {}
        self._unit_ids: dict[tuple[int, str], int] = {}  # (cell, NVLink island) -> unit
        self._unit_nodes: list[list[NodeKey]] = []  # its usable nodes
        self._unit_cell: list[int] = []
        self._unit_free: list[int] = []  # free GPUs on its usable nodes
        self._unit_size: list[int] = []  # GPUs of all its nodes
        self._held: dict[JobKey, Placement] = {}
        self._held_as: dict[JobKey, _Charge] = {}
        self._journal: list[tuple[int, list[Slot]]] | None = None  # (sign that undoes, slots)
        if snapshot is not None:
            self.sync(snapshot)

    # -- following the snapshot -----------------------------------------------------------------
    def sync(self, snapshot: Snapshot) -> None:
        """Describe `snapshot` from now on, changing only what differs from the last one.
        A snapshot is a value: dicts it shares with the last one (`is`) are taken as unchanged."""
        if self._journal is not None:  # a pass that never finished (it raised): undo it
            self.rollback()
        old, nodes, running = self.snapshot.nodes, snapshot.nodes, snapshot.running
        gangs_changed = running is not self.snapshot.running
        for job, placement in list(self._held.items()) if gangs_changed else ():
            if running.get(job) is not placement:
                for slot in placement.ranks:
                    self._taken.get(slot.node, set()).discard(slot.gpu)
                self._apply(((slot.node, slot.gpu) for slot in placement.ranks), 1)
                del self._held[job]
                self._charge(job, None)
        recount = False  # a node came, went or changed class under gangs already held
        attach: list[GpuNode] = []
        if nodes is not old:
            kept = 0
            for key, node in nodes.items():
                prev = old.get(key)
                if prev is None:
                    recount |= bool(self._taken.get(key))
                    attach.append(node)
                    continue
                kept += 1
                if prev is not node and prev != node:
                    self._detach(prev)
                    recount |= prev.node_class != node.node_class
                    attach.append(node)
            if kept < len(old):
                for key, prev in old.items():
                    if key not in nodes:
                        self._detach(prev)
                        recount = True
        for job, placement in running.items() if gangs_changed else ():
            if job not in self._held:  # nodes attached below count these from _taken
                for slot in placement.ranks:
                    self._taken.setdefault(slot.node, set()).add(slot.gpu)
                self._apply(((slot.node, slot.gpu) for slot in placement.ranks), -1)
                self._held[job] = placement
                demand = snapshot.jobs.get(job)
                self._charge(job, (demand, pool_of(demand), _classes(placement, nodes)))
        for node in attach:
            self._attach(node)
        if recount:  # rare
            for job, placement in self._held.items():
                demand = snapshot.jobs.get(job)
                self._charge(job, (demand, pool_of(demand), _classes(placement, nodes)))
        elif snapshot.jobs is not self.snapshot.jobs:  # a running job may have changed pool
            jobs = snapshot.jobs
            for job, (demand, _, classes) in list(self._held_as.items()):
                now = jobs.get(job)
                if now is not demand:
                    self._charge(job, (now, pool_of(now), classes))
        self.snapshot = snapshot

    def _charge(self, job: JobKey, held: _Charge | None) -> None:
        """Count a running gang's GPUs (per class) under its pool, instead of what it had."""
        before = self._held_as.pop(job, None)
        if before is not None:
            used = self.pool_classes[before[1]]
            for node_class, n in before[2].items():
                used[node_class] -= n
        if held is not None:
            self._held_as[job] = held
            used = self.pool_classes.setdefault(held[1], {})
            for node_class, n in held[2].items():
                used[node_class] = used.get(node_class, 0) + n

    def _attach(self, node: GpuNode) -> None:
        project = node.key.partition("/")[0]
        cell = Cell(project, node.zone, node.region, node.node_class, node.domain, node.residency)
        cid = self._cell_ids.get(cell)
        if cid is None:
            cid = self._cell_ids[cell] = len(self.cells)
            self.cells.append(cell)
            self._zones.setdefault(cell.zone, []).append(cid)
            self._buckets.append([{}])
            self._cell_free.append(0)
            self._sizes.append({})
            self._eligible.clear()
        uid = self._unit_ids.get((cid, node.nvlink_island))
        if uid is None:
            uid = self._unit_ids[(cid, node.nvlink_island)] = len(self._unit_nodes)
            self._unit_nodes.append([])
            self._unit_cell.append(cid)
            self._unit_free.append(0)
            self._unit_size.append(0)
            self._buckets[cid][0][uid] = None
        self._node_unit[node.key] = uid
        self._resize_unit(uid, node.gpus)
        taken = self._taken.get(node.key, ())
        free = self._free[node.key] = [g for g in range(node.gpus) if g not in taken]
        self.class_gpus[node.node_class] = self.class_gpus.get(node.node_class, 0) + node.gpus
        if node.schedulable and node.worker is not None:
            self._usable.add(node.key)
            self._unit_nodes[uid].append(node.key)
            self._move(uid, len(free))

    def _detach(self, node: GpuNode) -> None:
        uid = self._node_unit.pop(node.key)
        free = self._free.pop(node.key)
        if node.key in self._usable:
            self._usable.discard(node.key)
            self._unit_nodes[uid].remove(node.key)
            self._move(uid, -len(free))
        self._resize_unit(uid, -node.gpus)
        self.class_gpus[node.node_class] -= node.gpus

    def _resize_unit(self, uid: int, delta: int) -> None:
        self._possible.clear()
        cid = self._unit_cell[uid]
        sizes, old = self._sizes[cid], self._unit_size[uid]
        if old:
            sizes[old] -= 1
            if not sizes[old]:
                del sizes[old]
        new = self._unit_size[uid] = old + delta
        if new:
            sizes[new] = sizes.get(new, 0) + 1
        buckets = self._buckets[cid]
        while len(buckets) <= new:
            buckets.append({})

    # -- reading --------------------------------------------------------------------------------
    def eligible(self, demand: JobDemand) -> tuple[int, ...]:
        """Cells whose nodes meet the job's constraints and its pool's (cached per signature)."""
        pool = self.snapshot.pools.get(demand.pool) if demand.pool else None
        classes = (demand.node_classes, pool.node_classes if pool else ())
        domains = (demand.domains, pool.domains if pool else ())
        project = demand.key.partition("/")[0]
        sig = (project, classes, domains, demand.residency)
        found = self._eligible.get(sig)
        if found is None:
            found = self._eligible[sig] = tuple(
                cid
                for cid, cell in enumerate(self.cells)
                if cell.project == project
                and all(not allowed or cell.node_class in allowed for allowed in classes)
                and all(not allowed or cell.domain in allowed for allowed in domains)
                and (not demand.residency or cell.residency in demand.residency)
            )
        return found

    def groups(self, cid: int, tp: int) -> int:
        """How many TP groups of tp GPUs the cell can hold now."""
        if self._cell_free[cid] < tp:
            return 0
        buckets = self._buckets[cid]
        return sum(len(buckets[k]) * (k // tp) for k in range(tp, len(buckets)) if buckets[k])

    def zone_replicas(self, cells: Iterable[int], tp: int, pp: int) -> dict[str, int]:
        """How many replicas of pp TP groups of tp GPUs each zone's `cells` can hold now."""
        groups: dict[str, int] = {}
        for cid in cells:
            n = self.groups(cid, tp)
            if n:
                zone = self.cells[cid].zone
                groups[zone] = groups.get(zone, 0) + n
        return {zone: n // pp for zone, n in groups.items() if n >= pp}

    def count_replicas(self, cells: Iterable[int], tp: int, pp: int, cap: int) -> int:
        """How many replicas `cells` can hold now, counting no further than `cap`."""
        groups: dict[str, int] = {}
        total = 0
        for cid in cells:
            n = self.groups(cid, tp)
            if n:
                zone = self.cells[cid].zone
                before = groups.get(zone, 0)
                groups[zone] = before + n
                total += (before + n) // pp - before // pp
                if total >= cap:
                    return cap
        return total

    def replicas_when_empty(self, cells: tuple[int, ...], tp: int, pp: int) -> int:
        """How many replicas `cells` could hold with every node up and idle."""
        key = (cells, tp, pp)
        found = self._possible.get(key)
        if found is None:
            groups: dict[str, int] = {}
            for cid in cells:
                zone = self.cells[cid].zone
                n = sum(count * (size // tp) for size, count in self._sizes[cid].items())
                groups[zone] = groups.get(zone, 0) + n
            found = self._possible[key] = sum(n // pp for n in groups.values())
        return found

    def free_gpus(self, cells: Iterable[int] | None = None) -> int:
        """Free GPUs on usable nodes of `cells` (None: all)."""
        return sum(self._cell_free) if cells is None else sum(self._cell_free[c] for c in cells)

    def cell_of_node(self, node: NodeKey) -> int | None:
        """The cell of a usable node; None for any other."""
        return self._unit_cell[self._node_unit[node]] if node in self._usable else None

    def zone_cells(self, zone: str, allowed: Iterable[int]) -> list[int]:
        wanted = set(allowed)
        return [cid for cid in self._zones.get(zone, ()) if cid in wanted]

    # -- taking and giving ----------------------------------------------------------------------
    def begin(self) -> None:
        """Start journaling takes and gives, for `rollback()`."""
        self._journal = []

    def rollback(self) -> None:
        """Undo every take and give since `begin()`."""
        journal, self._journal = self._journal or [], None
        for sign, slots in reversed(journal):
            self._apply(slots, sign)

    def take_group(self, cells: list[int], tp: int, spread: bool) -> list[Slot]:
        """tp GPUs from one unit among `cells` (the caller knows one fits): the fullest unit that
        fits (bin-pack) or the emptiest (spread)."""
        best_uid, best_k = -1, -1
        for cid in cells:
            buckets = self._buckets[cid]
            ks = range(len(buckets) - 1, tp - 1, -1) if spread else range(tp, len(buckets))
            for k in ks:
                if buckets[k]:
                    if best_uid < 0 or (k > best_k if spread else k < best_k):
                        best_uid, best_k = next(iter(buckets[k])), k
                    break
        if best_uid < 0:
            raise LookupError(f"no unit with {tp} free GPUs in cells {cells}")
        slots = []
        for node, k in self._pick_nodes(best_uid, tp, spread):
            free = self._free[node]
            slots.extend((node, gpu) for gpu in free[:k])
            del free[:k]
        self._move(best_uid, -tp)
        if self._journal is not None:
            self._journal.append((1, slots))  # undone by giving them back
        return slots

    def _pick_nodes(self, uid: int, tp: int, spread: bool) -> list[tuple[NodeKey, int]]:
        """(node, GPUs) to take tp GPUs from a unit: one node if one fits (the fullest that fits,
        or the emptiest), else across the island's nodes, most free first."""
        nodes = self._unit_nodes[uid]
        if len(nodes) == 1:
            return [(nodes[0], tp)]
        fitting = [n for n in nodes if len(self._free[n]) >= tp]
        if fitting:
            pick = max if spread else min
            return [(pick(fitting, key=lambda n: len(self._free[n])), tp)]
        chosen, need = [], tp
        for node in sorted(nodes, key=lambda n: -len(self._free[n])):
            k = min(need, len(self._free[node]))
            if k:
                chosen.append((node, k))
                need -= k
            if not need:
                break
        return chosen

    def take(self, slots: Iterable[Slot]) -> None:
        """Mark these slots taken (those already taken, or on unknown nodes, are skipped)."""
        self._apply(slots, -1)

    def give(self, slots: Iterable[Slot]) -> None:
        """Mark these slots free (those already free, or on unknown nodes, are skipped)."""
        self._apply(slots, 1)

    def _apply(self, slots: Iterable[Slot], sign: int) -> None:
        done, moves = [], {}
        nodes, free_of, usable = self.snapshot.nodes, self._free, self._usable
        for node, gpu in slots:
            free = free_of.get(node)
            if free is None:
                continue
            if sign > 0:
                if gpu in free or gpu >= nodes[node].gpus:
                    continue
                insort(free, gpu)
            elif gpu in free:
                free.remove(gpu)
            else:
                continue
            done.append((node, gpu))
            if node in usable:
                uid = self._node_unit[node]
                moves[uid] = moves.get(uid, 0) + sign
        for uid, delta in moves.items():
            self._move(uid, delta)
        if self._journal is not None:
            self._journal.append((-sign, done))

    def _move(self, uid: int, delta: int) -> None:
        if not delta:
            return
        cid = self._unit_cell[uid]
        buckets = self._buckets[cid]
        old = self._unit_free[uid]
        del buckets[old][uid]
        self._unit_free[uid] = old + delta
        buckets[old + delta][uid] = None
        self._cell_free[cid] += delta


def _classes(placement: Placement, nodes: Mapping[NodeKey, GpuNode]) -> dict[str, int]:
    """A gang's GPUs per node class."""
    out: dict[str, int] = {}
    for slot in placement.ranks:
        node = nodes.get(slot.node)
        if node is not None:
            out[node.node_class] = out.get(node.node_class, 0) + 1
    return out
