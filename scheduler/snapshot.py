"""The values the scheduler decides over: inventory, pools, job demands and placements.

Everything here is a plain frozen value. The service builds a `Snapshot` from its watch caches and
Dask's worker list; the pure functions of `admission`, `placement`, `preemption`, `elastic` and
`topology` read it and return decisions; the executor carries a `Placement` out on Dask.
Job and node identities are `project/name` strings so that one scheduler can serve every project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

JobKey = str  # "project/name"
NodeKey = str  # "project/name"
Spread = Literal["binpack", "spread"]


@dataclass(frozen=True, slots=True)
class GpuNode:
    """One node's GPU slots and the facts placement reads."""

    key: NodeKey
    node_class: str
    gpus: int  # GPU slots in all
    zone: str
    region: str
    domain: str | None = None
    island: str = ""  # NVLink island; "" means the node is an island of its own
    spot: bool = False
    residency: str | None = None  # "EU", "US", ...
    price_gpu_hour: float = 0.0  # USD per GPU-hour, from the NodeClass
    schedulable: bool = True  # Ready and not cordoned, draining or quarantined
    worker: str | None = None  # the Dask worker standing for it; None: nothing can run here

    @property
    def nvlink_island(self) -> str:
        return self.island or self.key


@dataclass(frozen=True, slots=True)
class Pool:
    """A CapacityPool with what has been drawn on it so far."""

    name: str
    quota_gpu_hours: float | None = None
    budget_usd: float | None = None
    max_gpus: int | None = None
    node_classes: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    used_gpu_hours: float = 0.0
    spent_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class JobDemand:
    """What one job asks for, read from its spec and its status."""

    key: JobKey
    tp: int = 1
    pp: int = 1
    min_replicas: int = 1  # data-parallel replicas (dp); each is tp*pp GPUs
    max_replicas: int = 1
    priority: int = 0
    pool: str | None = None
    node_classes: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    residency: tuple[str, ...] = ()  # any of these ("US|EU" -> ("US", "EU")); () means any
    spread: Spread = "binpack"
    submitted: float = 0.0  # seconds since the epoch; FIFO order within a priority
    last_checkpoint: float | None = None  # time of the last checkpoint; None: never
    paused: bool = False

    @property
    def replica_gpus(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True, slots=True)
class RankSlot:
    """One rank: one process on one GPU of one node."""

    rank: int
    node: NodeKey
    gpu: int  # the GPU's index on its node (CUDA_VISIBLE_DEVICES)
    local_rank: int  # index among the job's ranks on that node


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a gang runs: rank r = dp_index * (tp*pp) + pp_stage * tp + tp_index."""

    job: JobKey
    dp: int
    tp: int
    pp: int
    ranks: tuple[RankSlot, ...]

    @property
    def gpus(self) -> int:
        return len(self.ranks)

    def nodes(self) -> dict[NodeKey, int]:
        """GPUs used per node."""
        out: dict[NodeKey, int] = {}
        for slot in self.ranks:
            out[slot.node] = out.get(slot.node, 0) + 1
        return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole picture one decision reads; `running` holds placements of admitted gangs."""

    nodes: dict[NodeKey, GpuNode]
    pools: dict[str, Pool] = field(default_factory=dict)
    jobs: dict[JobKey, JobDemand] = field(default_factory=dict)  # every job not finished
    running: dict[JobKey, Placement] = field(default_factory=dict)
    # Running gangs told to stop for good (evicted, paused) that still hold their GPUs: never
    # chosen as victims again; a job that needs their GPUs waits for them. (A gang relaunching
    # at a new size is in `running` with its new placement.)
    stopping: frozenset[JobKey] = frozenset()
