"""Small fleets, jobs and gangs for the placement-engine tests, and the rules every placement
must keep."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from infermesh.scheduler.placement import assemble
from infermesh.scheduler.plan import Action, Evict, Resize, Start, Wait
from infermesh.scheduler.snapshot import GpuNode, JobDemand, Placement, Snapshot


def node(name: str, **kw: Any) -> GpuNode:
    base: dict[str, Any] = {
        "key": f"p/{name}",
        "node_class": "h100",
        "gpus": 8,
        "zone": "us-1a",
        "region": "us",
        "domain": "cloud-us",
        "residency": "US",
        "worker": f"tcp://127.0.0.1:1/{name}",
    }
    return GpuNode(**{**base, **kw})


def nodes(*items: GpuNode) -> dict[str, GpuNode]:
    return {n.key: n for n in items}


def job(name: str, **kw: Any) -> JobDemand:
    replicas = kw.pop("replicas", None)
    if replicas is not None:
        kw.setdefault("min_replicas", replicas)
        kw.setdefault("max_replicas", replicas)
    return JobDemand(key=f"p/{name}", **kw)


def gang(demand: JobDemand, *replicas: list[tuple[str, int]]) -> Placement:
    """A running placement on these (node name, GPU) slots, one list per replica."""
    return assemble(demand, [[(f"p/{n}", g) for n, g in replica] for replica in replicas])


def whole(demand: JobDemand, *names: str, gpus: int = 8) -> Placement:
    """A running placement of one replica per node name, holding all `gpus` GPUs of it."""
    return gang(demand, *([(n, g) for g in range(gpus)] for n in names))


def snapshot(
    fleet: dict[str, GpuNode],
    queued: Sequence[JobDemand] = (),
    running: Sequence[tuple[JobDemand, Placement]] = (),
    **kw: Any,
) -> Snapshot:
    jobs = {d.key: d for d in queued}
    jobs.update({d.key: d for d, _ in running})
    return Snapshot(nodes=fleet, jobs=jobs, running={d.key: p for d, p in running}, **kw)


def check(placement: Placement, snap: Snapshot, demand: JobDemand) -> None:
    """The placement rules: shape, rank numbering, TP groups in one node or NVLink island, a
    replica's stages in one zone, only usable nodes meeting the constraints, no GPU held twice."""
    assert (placement.tp, placement.pp) == (demand.tp, demand.pp)
    assert placement.gpus == placement.dp * demand.replica_gpus
    assert [s.rank for s in placement.ranks] == list(range(placement.gpus))
    held = {(s.node, s.gpu) for p in snap.running.values() for s in p.ranks}
    mine = [(s.node, s.gpu) for s in placement.ranks]
    assert len(set(mine)) == len(mine), "a GPU given twice"
    assert not held & set(mine), "a GPU of a running gang given again"
    seen: Counter[str] = Counter()
    for s in placement.ranks:
        n = snap.nodes[s.node]
        assert 0 <= s.gpu < n.gpus and n.schedulable and n.worker is not None
        assert s.local_rank == seen[s.node]
        seen[s.node] += 1
        assert not demand.node_classes or n.node_class in demand.node_classes
        assert not demand.domains or n.domain in demand.domains
        assert not demand.residency or n.residency in demand.residency
    size = demand.replica_gpus
    for r in range(placement.dp):
        replica = placement.ranks[r * size : (r + 1) * size]
        assert len({snap.nodes[s.node].zone for s in replica}) == 1, "a replica spans zones"
        for t in range(0, size, demand.tp):
            group = replica[t : t + demand.tp]
            islands = {snap.nodes[s.node].nvlink_island for s in group}
            assert len(islands) == 1, f"TP group {[s.rank for s in group]} spans {islands}"


def by_kind(actions: list[Action]) -> dict[str, list[Action]]:
    out: dict[str, list[Action]] = {"start": [], "resize": [], "evict": [], "wait": []}
    kinds = {Start: "start", Resize: "resize", Evict: "evict", Wait: "wait"}
    for a in actions:
        out[kinds[type(a)]].append(a)
    return out
