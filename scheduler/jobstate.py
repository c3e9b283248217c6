"""One training job's lifecycle as the scheduler tracks it, and its persisted form.

An explicit state machine in the manner of dask/distributed: a job is in exactly one phase, and
the service moves it only through `JobState.enter`, which records why. The record is what the
scheduler writes to `{root}/status/jobs/{project}/{name}`; a standby that takes over reads it back
with `JobState.from_status` and carries on (same attempt numbers, same counters).

    Pending ──▶ Admitted ──▶ Running ──▶ Succeeded
       ▲                      │  ▲  │
       │            Checkpointing  │  ├──▶ Preempted ──▶ (Pending)
       │                           │  ├──▶ Paused ──────▶ (Pending on resume)
       └──── Recovering ◀──────────┘  └──▶ Failed (restart budget spent)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from infermesh.scheduler.snapshot import JobKey, Placement, RankSlot

Phase = Literal[
    "Pending",
    "Admitted",
    "Running",
    "Checkpointing",
    "Preempted",
    "Recovering",
    "Paused",
    "Succeeded",
    "Failed",
]
# Phases in which the job holds GPUs (its gang is launched or being launched).
HOLDING: frozenset[str] = frozenset({"Admitted", "Running", "Checkpointing"})
FINISHED: frozenset[str] = frozenset({"Succeeded", "Failed"})
# Why a launched gang is being stopped; decides what happens when its ranks are gone.
StopCause = Literal["preempt", "pause", "resize", "recover", "fail"]

STEP_WINDOW = 200  # step times kept for the p95


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def from_iso(value: str | None) -> float | None:
    return None if not value else datetime.fromisoformat(value).timestamp()


@dataclass
class Stopping:
    """A gang on its way down: which attempt, why, and when to stop waiting for a checkpoint."""

    attempt: int
    cause: StopCause
    deadline: float  # monotonic time after which what is left is killed
    detail: str = ""


@dataclass
class JobState:
    key: JobKey
    uid: str | None = None  # of the Job object this state is for
    phase: Phase = "Pending"
    reason: str | None = "Queued"
    message: str | None = None
    attempt: int = 0
    placement: Placement | None = None
    topology: dict[str, Any] | None = None
    step: int | None = None
    total_steps: int | None = None
    step_times_ms: deque[float] = field(default_factory=lambda: deque(maxlen=STEP_WINDOW))
    comm_ms: deque[float] = field(default_factory=lambda: deque(maxlen=STEP_WINDOW))
    throughput_tps: float | None = None
    checkpoint_step: int | None = None
    checkpoint_time: float | None = None
    gpu_hours: float = 0.0
    cost_usd: float = 0.0
    price_gpu_hour: float = 0.0  # of the current placement, USD per GPU-hour on average
    accrued_at: float | None = None  # wall time up to which gpu_hours are charged
    restarts: int = 0  # failures of the job's own making
    preemptions: int = 0
    recoveries: int = 0
    steps_lost: int = 0
    queued_since: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    checkpoint_requests: int = 0  # spec.checkpointRequests already acted on
    stopping: Stopping | None = None
    exited_ranks: dict[int, int | None] = field(default_factory=dict)  # rank -> code, this attempt

    # -- transitions ----------------------------------------------------------------------------
    def enter(self, phase: Phase, reason: str, message: str | None = None) -> bool:
        """Move to `phase`; True when the phase or its reason changed (worth an event)."""
        changed = (phase, reason) != (self.phase, self.reason)
        self.phase, self.reason, self.message = phase, reason, message
        return changed

    @property
    def holding(self) -> bool:
        return self.phase in HOLDING or self.stopping is not None

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def launched(
        self, placement: Placement, topology: dict[str, Any], price: float, now: float
    ) -> None:
        self.attempt += 1
        self.placement, self.topology = placement, topology
        self.price_gpu_hour, self.accrued_at = price, now
        self.exited_ranks = {}
        self.started_at = self.started_at or now

    def released(self, now: float) -> None:
        """The gang is gone: stop charging and forget where it ran."""
        self.accrue(now)
        self.placement, self.accrued_at, self.stopping = None, None, None

    def accrue(self, now: float) -> tuple[float, float]:
        """Charge GPU-hours and USD up to `now`; returns what was added."""
        if self.placement is None or self.accrued_at is None or now <= self.accrued_at:
            return 0.0, 0.0
        hours = self.placement.gpus * (now - self.accrued_at) / 3600.0
        self.accrued_at = now
        usd = hours * self.price_gpu_hour
        self.gpu_hours += hours
        self.cost_usd += usd
        return hours, usd

    def lost_since_checkpoint(self) -> int:
        if self.step is None:
            return 0
        return max(0, self.step - (self.checkpoint_step or 0))

    # -- observations ---------------------------------------------------------------------------
    def observe(self, step: int, step_time_ms: float, comm_ms: float, tps: float) -> None:
        self.step = step
        self.step_times_ms.append(step_time_ms)
        self.comm_ms.append(comm_ms)
        self.throughput_tps = tps

    def step_time_p95(self) -> float | None:
        if not self.step_times_ms:
            return None
        ordered = sorted(self.step_times_ms)
        return round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 2)

    # -- persisted form -------------------------------------------------------------------------
    def to_status(self, *, pool: str | None, quota_gpu_hours: float | None) -> dict[str, Any]:
        placement = self.placement
        ckpt = None
        if self.checkpoint_step is not None:
            ckpt = {"step": self.checkpoint_step, "time": iso(self.checkpoint_time)}
        return {
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "attempt": self.attempt,
            "gpus": placement.gpus if placement else 0,
            "dp": placement.dp if placement else 0,
            "nodes": placement.nodes() if placement else {},
            "ranks": [[s.node, s.gpu, s.local_rank] for s in placement.ranks] if placement else [],
            "parallelism": [placement.dp, placement.tp, placement.pp] if placement else None,
            "topology": self.topology,
            "step": self.step,
            "totalSteps": self.total_steps,
            "stepTimeP95Ms": self.step_time_p95(),
            "throughputTps": None if self.throughput_tps is None else round(self.throughput_tps, 1),
            "lastCheckpoint": ckpt,
            "gpuHours": round(self.gpu_hours, 6),
            "costUSD": round(self.cost_usd, 6),
            "priceGpuHour": self.price_gpu_hour,
            "pool": pool,
            "quotaGpuHours": quota_gpu_hours,
            "restarts": self.restarts,
            "preemptions": self.preemptions,
            "recoveries": self.recoveries,
            "stepsLost": self.steps_lost,
            "checkpointRequests": self.checkpoint_requests,
            "queuedSince": iso(self.queued_since),
            "startedAt": iso(self.started_at),
            "finishedAt": iso(self.finished_at),
            "stopping": None if self.stopping is None else self.stopping.cause,
            "updated": iso(datetime.now(UTC).timestamp()),
        }

    @classmethod
    def from_status(cls, key: JobKey, status: dict[str, Any]) -> JobState:
        """Read back what a previous leader wrote, so a standby carries on where it stopped."""
        state = cls(key=key, uid=status.get("uid"))
        state.phase = status.get("phase") or "Pending"
        state.reason, state.message = status.get("reason"), status.get("message")
        state.attempt = int(status.get("attempt") or 0)
        ranks, par = status.get("ranks") or [], status.get("parallelism")
        if ranks and par:
            slots = tuple(
                RankSlot(rank=i, node=node, gpu=int(gpu), local_rank=int(local))
                for i, (node, gpu, local) in enumerate(ranks)
            )
            state.placement = Placement(key, int(par[0]), int(par[1]), int(par[2]), slots)
            state.accrued_at = datetime.now(UTC).timestamp()
        state.topology = status.get("topology")
        state.step, state.total_steps = status.get("step"), status.get("totalSteps")
        ckpt = status.get("lastCheckpoint") or {}
        state.checkpoint_step = ckpt.get("step")
        state.checkpoint_time = from_iso(ckpt.get("time"))
        state.gpu_hours = float(status.get("gpuHours") or 0.0)
        state.cost_usd = float(status.get("costUSD") or 0.0)
        state.price_gpu_hour = float(status.get("priceGpuHour") or 0.0)
        for name in ("restarts", "preemptions", "recoveries"):
            setattr(state, name, int(status.get(name) or 0))
        state.steps_lost = int(status.get("stepsLost") or 0)
        state.checkpoint_requests = int(status.get("checkpointRequests") or 0)
        state.queued_since = from_iso(status.get("queuedSince"))
        state.started_at = from_iso(status.get("startedAt"))
        state.finished_at = from_iso(status.get("finishedAt"))
        return state
