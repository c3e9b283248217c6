"""Gang placement, all or nothing: dp replicas of pp stages of tp GPUs each.

Rules: each TP group (tp consecutive ranks) lies inside one node or one NVLink island; the pp
stages of a replica lie inside one zone; only eligible cells count (the job's node classes,
domains and residency, and its pool's classes and domains). Bin-pack (the default) puts the gang
in as few zones as possible and each TP group on the fullest node that still fits it, so holes
fill first and whole nodes stay free for wide jobs; `spread` takes the emptiest nodes instead.

Because `FreeMap` counts exactly how many replicas each zone can hold, the decision "fits or
not" costs a few bucket sums, and `max_replicas_that_fit` needs no search over replica counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from infermesh.scheduler.capacity import FreeMap, Slot
from infermesh.scheduler.snapshot import JobDemand, NodeKey, Placement, RankSlot, Snapshot

__all__ = [
    "FreeMap",
    "assemble",
    "max_replicas_that_fit",
    "place",
    "place_replicas",
    "replica_slots",
]


def max_replicas_that_fit(
    demand: JobDemand,
    snapshot: Snapshot,
    *,
    free: FreeMap | None = None,
    limit: int | None = None,
) -> int:
    """The most DP replicas, between `demand.min_replicas` and `demand.max_replicas` (and at most
    `limit`), that fit now; 0 when not even the minimum does."""
    free = FreeMap(snapshot) if free is None else free
    high = demand.max_replicas if limit is None else min(demand.max_replicas, limit)
    n = free.count_replicas(free.eligible(demand), demand.tp, demand.pp, high)
    return n if n >= demand.min_replicas and n > 0 else 0


def place(
    demand: JobDemand,
    snapshot: Snapshot,
    replicas: int,
    *,
    free: FreeMap | None = None,
) -> Placement | None:
    """A placement of `replicas` DP replicas, or None when the whole gang does not fit (then
    nothing is taken). Its GPUs are taken from `free` (a fresh map of `snapshot` if None)."""
    free = FreeMap(snapshot) if free is None else free
    groups = place_replicas(demand, free, replicas)
    return None if groups is None else assemble(demand, groups)


def place_replicas(
    demand: JobDemand,
    free: FreeMap,
    replicas: int,
    *,
    near: Iterable[NodeKey] = (),
) -> list[list[Slot]] | None:
    """Slots for `replicas` replicas (each tp*pp slots in stage-major order), taken from `free`;
    None (and nothing taken) when they do not all fit. Zones holding `near` nodes (a growing
    job's) are preferred."""
    if replicas <= 0:
        return []
    cells = free.eligible(demand)
    caps = free.zone_replicas(cells, demand.tp, demand.pp)
    if sum(caps.values()) < replicas:
        return None
    spread = demand.spread == "spread"
    home = {free.snapshot.nodes[n].zone for n in near if n in free.snapshot.nodes}
    out: list[list[Slot]] = []
    for zone, count in _choose_zones(caps, replicas, home, spread):
        zone_cells = free.zone_cells(zone, cells)
        for _ in range(count):
            slots: list[Slot] = []
            for _ in range(demand.pp):
                slots.extend(free.take_group(zone_cells, demand.tp, spread))
            out.append(slots)
    return out


def _choose_zones(
    caps: dict[str, int], replicas: int, home: set[str], spread: bool
) -> list[tuple[str, int]]:
    """(zone, replicas there): one zone when one can hold them all (the tightest fit for
    bin-pack, the roomiest for spread), else the roomiest zones first; `home` zones first."""
    whole = [z for z, n in caps.items() if n >= replicas]
    if whole:
        sign = -1 if spread else 1
        return [(min(whole, key=lambda z: (z not in home, sign * caps[z], z)), replicas)]
    out, left = [], replicas
    for zone in sorted(caps, key=lambda z: (z not in home, -caps[z], z)):
        take = min(left, caps[zone])
        out.append((zone, take))
        left -= take
        if not left:
            break
    return out


def assemble(demand: JobDemand, replicas: Sequence[Sequence[Slot]]) -> Placement:
    """The placement of these replicas' slots in order: rank = dp_index*(tp*pp) + stage*tp +
    tp_index, local_rank = the rank's index among the job's ranks on its node."""
    ranks: list[RankSlot] = []
    local: dict[NodeKey, int] = {}
    for replica in replicas:
        for node, gpu in replica:
            index = local.get(node, 0)
            local[node] = index + 1
            ranks.append(RankSlot(rank=len(ranks), node=node, gpu=gpu, local_rank=index))
    return Placement(
        job=demand.key, dp=len(replicas), tp=demand.tp, pp=demand.pp, ranks=tuple(ranks)
    )


def replica_slots(placement: Placement) -> list[list[Slot]]:
    """The slots of each of the placement's dp replicas, in rank order."""
    size = placement.tp * placement.pp
    ordered = sorted(placement.ranks, key=lambda s: s.rank)
    return [
        [(s.node, s.gpu) for s in ordered[i * size : (i + 1) * size]] for i in range(placement.dp)
    ]
