"""`Controller`: the leader's reconcile turn over every job's state machine.

One turn: adopt new Jobs and forget deleted ones; fold in what the executor reported (rank steps
and checkpoints, exits, lost workers, gangs that finished stopping); act on desired state
(`:pause`, `:resume`, `:checkpoint`, `:scale`); charge GPU-hours; ask the planner what to start,
resize, evict or leave waiting and carry it out; adjust topology hints; write what changed.

Every decision is the planner's or a `JobState` transition; this module only sequences them and
does the I/O, writing a gang's attempt to etcd before it is launched so no successor launches it
again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from infermesh.model import Job
from infermesh.scheduler import inventory
from infermesh.scheduler.capacity import FreeMap
from infermesh.scheduler.cluster import cluster_workers
from infermesh.scheduler.executor import (
    GangExecutor,
    Launch,
    RankExited,
    RankLog,
    RankReport,
    WorkerAdded,
    WorkerLost,
)
from infermesh.scheduler.jobstate import JobState, StopCause, Stopping
from infermesh.scheduler.metrics import JobMetrics
from infermesh.scheduler.plan import Evict, Resize, Start, Wait, plan
from infermesh.scheduler.records import Records
from infermesh.scheduler.snapshot import JobKey, Placement, Snapshot
from infermesh.scheduler.topology import RankReport as StepReport
from infermesh.scheduler.topology import TopologyHint, strategy_named

if TYPE_CHECKING:
    from infermesh.scheduler.service import SchedulerService

log = logging.getLogger(__name__)

DEFAULT_STRATEGY = "net_aware_hier@1.0"
KILL_GRACE_S = 5.0  # for gangs whose work is lost anyway (node lost, failed, job deleted)
LOG_FLUSH_S = 1.0
ADJUST_WINDOW = 40  # rank-0 step reports a topology strategy judges


@dataclass(frozen=True, slots=True)
class GangStopped:
    """The executor is done stopping a gang (ranks checkpointed and exited, or killed)."""

    job: JobKey
    attempt: int


class Controller:
    def __init__(self, service: SchedulerService, executor: GangExecutor, records: Records) -> None:
        self.service = service
        self.executor = executor
        self.records = records
        self.states: dict[JobKey, JobState] = {}
        self.inbox: list[Any] = []
        self.workers: dict[str, str] = {}  # node key -> Dask worker address
        self._next: dict[JobKey, tuple[Placement, dict[str, Any]]] = {}  # resize targets
        self._stop_tasks: dict[JobKey, asyncio.Task[None]] = {}
        self._changed: set[JobKey] = set()  # phase or counters: written this turn
        self._progress: set[JobKey] = set()  # steps and charges: written at most every interval
        self._written_at: dict[JobKey, float] = {}
        self._logs_dirty: set[JobKey] = set()
        self._logs_at = 0.0
        self._steps: dict[JobKey, deque[StepReport]] = {}
        self._checkpoint_asked_at: dict[JobKey, int] = {}  # step when `:checkpoint` was acted on
        self.metrics = JobMetrics()
        self._replaced: set[JobKey] = set()  # old incarnations being stopped
        self.free = FreeMap()  # kept between passes, so a pass costs only what changed

    # -- taking over ----------------------------------------------------------------------------
    async def take_over(self, statuses: dict[str, dict[str, Any]]) -> None:
        """Carry on from what the previous leader wrote: adopt live gangs, recover the rest."""
        await self._refresh_workers()
        live = await self.executor.live_attempts()
        now = time.time()
        for key, status in statuses.items():
            state = JobState.from_status(key, status)
            self.states[key] = state
            if state.placement is None:
                continue
            cause = status.get("stopping")
            if live.get(key) == state.attempt:
                self.executor.adopt(key, state.attempt, state.placement)
                await self.records.event(key, "Adopted", f"attempt {state.attempt} still runs")
                if cause:
                    self._begin_stop(state, cause, self._grace(key, cause), status.get("reason"))
            elif cause in ("pause", "preempt", "fail"):
                self.inbox.append(GangStopped(key, state.attempt))
                state.stopping = Stopping(state.attempt, cause, 0.0)
            else:
                state.steps_lost += state.lost_since_checkpoint()
                state.released(now)
                self._enter(state, "Recovering", "GangLost", "the gang was gone at takeover")
                await self.records.event(key, "GangLost", "not running at takeover", warning=True)

    async def close(self) -> None:
        for task in self._stop_tasks.values():
            task.cancel()
        await asyncio.gather(*self._stop_tasks.values(), return_exceptions=True)

    # -- one turn -------------------------------------------------------------------------------
    async def turn(self, now: float) -> None:
        jobs = self.service.jobs()
        await self._sync_jobs(jobs, now)
        inbox, self.inbox = self.inbox, []
        for item in inbox:
            await self._handle(item, jobs, now)
        for key, job in jobs.items():
            await self._desired(job, self.states[key], now)
        for key, state in self.states.items():
            if state.placement is not None:
                state.accrue(now)
                self._progress.add(key)
        await self._plan(jobs, now)
        await self._adjust_topology(jobs)
        await self._write(jobs, now)

    async def _sync_jobs(self, jobs: dict[str, Job], now: float) -> None:
        for key, job in jobs.items():
            old = self.states.get(key)
            if old is not None and old.uid not in (None, job.metadata.uid):
                # Deleted and created again under the same name: the old incarnation goes first.
                if old.placement is None:
                    del self.states[key]
                elif old.stopping is None:
                    self._replaced.add(key)
                    self._begin_stop(old, "fail", KILL_GRACE_S, "the Job was replaced")
            if key not in self.states:
                state = JobState(
                    key=key,
                    uid=job.metadata.uid,
                    queued_since=now,
                    total_steps=job.spec.workload.steps,
                )
                self.states[key] = state
                self._changed.add(key)
                await self.records.event(key, "Queued", _shape(job))
        for key in [k for k in self.states if k not in jobs]:
            state = self.states[key]
            if state.placement is not None and state.stopping is None:
                self._begin_stop(state, "fail", KILL_GRACE_S, "the Job was deleted")
            if state.placement is None:
                del self.states[key]
                await self.records.forget(key)

    # -- executor events ------------------------------------------------------------------------
    async def _handle(self, item: Any, jobs: dict[str, Job], now: float) -> None:
        if isinstance(item, RankReport):
            await self._report(item, now)
        elif isinstance(item, RankLog):
            self.records.add_logs(item.job, item.attempt, item.rank, item.lines)
            self._logs_dirty.add(item.job)
        elif isinstance(item, RankExited):
            await self._exited(item, jobs)
        elif isinstance(item, WorkerLost):
            await self._worker_lost(item)
        elif isinstance(item, WorkerAdded):
            await self._refresh_workers()
        elif isinstance(item, GangStopped):
            await self._stopped(item, jobs, now)

    async def _report(self, r: RankReport, now: float) -> None:
        state = self.states.get(r.job)
        if state is None or r.attempt != state.attempt or state.placement is None:
            return
        if r.checkpoint_step is not None and r.checkpoint_step > (state.checkpoint_step or -1):
            state.checkpoint_step, state.checkpoint_time = r.checkpoint_step, now
            asked = self._checkpoint_asked_at.get(r.job)
            if asked is not None and r.checkpoint_step >= asked:
                del self._checkpoint_asked_at[r.job]
                if state.phase == "Checkpointing" and state.stopping is None:
                    self._enter(state, "Running", "Checkpointed")
                await self.records.event(r.job, "Checkpointed", f"at step {r.checkpoint_step}")
        if r.rank != 0:
            return
        self._progress.add(r.job)
        if r.step_time_ms is None:  # a resume or stop notice, not a step
            state.step = r.step
            return
        state.observe(r.step, r.step_time_ms, r.comm_ms or 0.0, r.tokens_per_s or 0.0)
        self._steps.setdefault(r.job, deque(maxlen=ADJUST_WINDOW)).append(
            StepReport(r.rank, r.step, r.step_time_ms, r.comm_ms or 0.0)
        )
        if state.stopping is not None:
            return
        if state.phase == "Recovering":
            state.recoveries += 1
            self._enter(state, "Running", "Recovered")
            await self.records.event(
                r.job,
                "Recovered",
                f"attempt {state.attempt} resumed at step {r.step} (checkpoint "
                f"{state.checkpoint_step}); {state.steps_lost} steps lost in all",
            )
        elif state.phase == "Admitted":
            self._enter(state, "Running", "Started")
            await self.records.event(r.job, "Running", f"attempt {state.attempt} at step {r.step}")

    async def _exited(self, e: RankExited, jobs: dict[str, Job]) -> None:
        state = self.states.get(e.job)
        if state is None or e.attempt != state.attempt or state.placement is None:
            return
        state.exited_ranks[e.rank] = e.returncode
        if state.stopping is not None:
            return  # the stop task reports when the whole gang is gone
        if e.returncode == 0 and e.error is None:
            if len(state.exited_ranks) == state.placement.gpus:
                state.released(time.time())
                state.finished_at = time.time()
                self._enter(state, "Succeeded", "Completed")
                await self.records.event(e.job, "Succeeded", f"finished at step {state.step}")
            return
        why = e.error or f"exit code {e.returncode}"
        state.restarts += 1
        job = jobs.get(e.job)
        budget = job.spec.restartBudget if job is not None else 0
        await self.records.event(e.job, "RankFailed", f"rank {e.rank}: {why}", warning=True)
        if state.restarts > budget:
            self._begin_stop(state, "fail", KILL_GRACE_S, f"rank {e.rank}: {why}")
            self._enter(state, "Failed", "RestartBudgetSpent", f"rank {e.rank}: {why}")
        else:
            state.steps_lost += state.lost_since_checkpoint()
            self._begin_stop(state, "recover", KILL_GRACE_S, f"rank {e.rank}: {why}")
            self._enter(state, "Recovering", "RankFailed", f"restart {state.restarts}/{budget}")

    async def _worker_lost(self, e: WorkerLost) -> None:
        await self._refresh_workers()
        for key, state in self.states.items():
            if state.placement is None or state.stopping is not None:
                continue
            if e.node is None or e.node not in state.placement.nodes():
                continue
            state.steps_lost += state.lost_since_checkpoint()
            self._begin_stop(state, "recover", 0.0, f"node {e.node} lost")
            self._enter(state, "Recovering", "NodeLost", f"node {e.node} lost ({e.address})")
            await self.records.event(
                key,
                "NodeLost",
                f"node {e.node} left the cluster; resuming from checkpoint "
                f"{state.checkpoint_step} on healthy nodes",
                warning=True,
            )

    async def _stopped(self, s: GangStopped, jobs: dict[str, Job], now: float) -> None:
        self._stop_tasks.pop(s.job, None)
        state = self.states.get(s.job)
        if state is None or state.stopping is None or state.stopping.attempt != s.attempt:
            return
        cause = state.stopping.cause
        state.released(now)
        self._changed.add(s.job)
        if s.job in self._replaced:
            self._replaced.discard(s.job)
            del self.states[s.job]  # the new incarnation is picked up next turn
        elif s.job not in jobs:
            del self.states[s.job]
            await self.records.forget(s.job)
        elif cause == "preempt":
            state.preemptions += 1
            state.queued_since = now
            self._enter(state, "Preempted", "Preempted", state.message)
        elif cause == "pause":
            self._enter(state, "Paused", "PausedByUser")
            await self.records.event(s.job, "Paused", f"checkpoint at step {state.checkpoint_step}")
        elif cause == "fail":
            state.finished_at = now
            self._enter(state, "Failed", state.reason or "Failed", state.message)
            await self.records.event(s.job, "Failed", state.message or "", warning=True)
        elif cause == "resize" and s.job in self._next:
            placement, topology = self._next.pop(s.job)
            await self._launch(jobs[s.job], state, placement, topology, now, "Resized")
        else:  # recover, or a resize whose target is gone: back to the queue
            state.queued_since = now
            if state.phase != "Recovering":
                self._enter(state, "Pending", "Requeued")

    # -- desired state --------------------------------------------------------------------------
    async def _desired(self, job: Job, state: JobState, now: float) -> None:
        spec = job.spec
        if state.finished:
            return
        if state.total_steps != spec.workload.steps:
            state.total_steps = spec.workload.steps
            self._changed.add(state.key)
        if spec.paused:
            if state.placement is not None and state.stopping is None:
                self._begin_stop(state, "pause", self._grace(state.key, "pause"), "pause")
                self._enter(state, "Checkpointing", "Pausing")
            elif state.placement is None and state.phase != "Paused":
                self._enter(state, "Paused", "PausedByUser")
                await self.records.event(state.key, "Paused", "before it was placed")
        elif state.phase == "Paused":
            state.queued_since = now
            self._enter(state, "Pending", "Resumed")
            await self.records.event(state.key, "Resumed", "back in the queue")
        if spec.checkpointRequests > state.checkpoint_requests:
            state.checkpoint_requests = spec.checkpointRequests
            self._changed.add(state.key)
            if state.phase == "Running" and state.stopping is None:
                self._checkpoint_asked_at[state.key] = (state.step or 0) + 1
                await self.executor.request_checkpoint(state.key, state.attempt)
                self._enter(state, "Checkpointing", "CheckpointRequested")
            else:
                await self.records.event(state.key, "CheckpointSkipped", f"job is {state.phase}")

    # -- planning -------------------------------------------------------------------------------
    def snapshot(self, jobs: dict[str, Job]) -> Snapshot:
        nodes = {}
        domains = {}
        for key, (report, node) in self.service.nodes().items():
            project = key.partition("/")[0]
            if project not in domains:
                domains[project] = self.service.domains(project)
            worker = self.workers.get(key)
            gpu_node = inventory.gpu_node(key, report, node, worker, domains[project])
            if gpu_node is not None:
                nodes[key] = gpu_node
        charged = [(s, inventory.job_pool(jobs[k])) for k, s in self.states.items() if k in jobs]
        pools = [inventory.pool_of(p, charged) for p in self.service.pools()]
        demands, running = {}, {}
        for key, job in jobs.items():
            state = self.states[key]
            if state.finished:
                continue
            policies = self.service.policies(job.metadata.project)
            priority = inventory.priority_of(job, policies)
            demands[key] = inventory.demand_of(job, state, priority, _created(job))
            if state.placement is not None:
                running[key] = _held(state.placement, self._next.get(key))
        stopping = frozenset(k for k, s in self.states.items() if s.stopping is not None)
        return Snapshot(
            nodes=nodes,
            pools={p.name: p for p in pools},
            jobs=demands,
            running=running,
            stopping=stopping,
        )

    async def _plan(self, jobs: dict[str, Job], now: float) -> None:
        snapshot = self.snapshot(jobs)
        decided = plan(
            snapshot, now=now, strategy_for=lambda key: _strategy(jobs[key]), free=self.free
        )
        for action in decided.actions:
            state = self.states.get(action.job)
            if state is None or action.job not in jobs:
                continue
            if isinstance(action, Start) and state.placement is None:
                await self._launch(jobs[action.job], state, action.placement, _hint(action), now)
            elif isinstance(action, Resize) and state.stopping is None:
                self._next[action.job] = (action.placement, action.topology.as_dict())
                self._begin_stop(state, "resize", self._grace(action.job, "resize"), action.reason)
                self._enter(state, "Checkpointing", "Resizing", action.reason)
                await self.records.event(action.job, "Resizing", action.reason)
            elif isinstance(action, Evict) and state.stopping is None:
                why = action.reason
                self._begin_stop(state, "preempt", self._grace(action.job, "preempt"), why)
                self._enter(state, "Checkpointing", "Preempting", why)
                await self.records.event(action.job, "Preempting", why, warning=True)
            elif (
                isinstance(action, Wait)
                and state.placement is None
                and state.message != action.reason
            ):
                state.message = action.reason
                self._changed.add(action.job)
                await self.records.event(action.job, "Waiting", action.reason)

    async def _launch(
        self,
        job: Job,
        state: JobState,
        placement: Placement,
        topology: dict[str, Any],
        now: float,
        reason: str = "Placed",
    ) -> None:
        workers = {node: self.workers[node] for node in placement.nodes() if node in self.workers}
        if len(workers) != len(placement.nodes()):
            return  # a node lost its worker since the snapshot: the next turn places again
        price = self._price(placement)
        state.launched(placement, topology, price, now)
        if state.phase != "Recovering":
            self._enter(state, "Admitted", reason)
        # The attempt is durable before any rank starts: a successor adopts it, never relaunches.
        await self.records.put_status(state.key, self._status(job, state))
        ckpt = job.spec.checkpoint
        await self.executor.launch(
            Launch(
                job=state.key,
                attempt=state.attempt,
                placement=placement,
                workers=workers,
                workload=job.spec.workload,
                checkpoint_uri=ckpt.uri if ckpt else None,
                interval_steps=ckpt.interval_steps if ckpt else None,
                keep_last=ckpt.keepLast if ckpt else None,
                topology=topology,
                env={},
            )
        )
        self._steps.pop(state.key, None)
        shape = f"{placement.dp}x{placement.tp}x{placement.pp}"
        where = ", ".join(f"{n} ({g})" for n, g in placement.nodes().items())
        await self.records.event(
            state.key,
            reason,
            f"attempt {state.attempt}: {shape} = {placement.gpus} GPUs on {where}; "
            f"topology {topology.get('algorithm')}",
        )

    def _price(self, placement: Placement) -> float:
        nodes = self.service.nodes()
        total = 0.0
        for node, gpus in placement.nodes().items():
            report = nodes.get(node, ({}, None))[0]
            total += gpus * float((report.get("facts") or {}).get("pricePerGpuHour") or 0.0)
        return total / max(1, placement.gpus)

    # -- topology -------------------------------------------------------------------------------
    async def _adjust_topology(self, jobs: dict[str, Job]) -> None:
        for key, window in self._steps.items():
            state = self.states.get(key)
            if state is None or state.phase != "Running" or not state.topology or key not in jobs:
                continue
            strategy, params = _strategy(jobs[key])
            adjust = strategy.adjust(TopologyHint.from_dict(state.topology), list(window), params)
            if adjust is None:
                continue
            state.topology = adjust.new.as_dict()
            self._changed.add(key)
            await self.executor.update_topology(key, state.attempt, state.topology)
            await self.records.event(
                key,
                "TopologyAdjust",
                f"{_describe(adjust.old)} -> {_describe(adjust.new)}: {adjust.reason}",
            )

    # -- stopping -------------------------------------------------------------------------------
    def _begin_stop(self, state: JobState, cause: StopCause, grace: float, why: Any) -> None:
        assert state.placement is not None
        attempt = state.attempt
        state.stopping = Stopping(attempt, cause, time.monotonic() + grace, str(why or ""))
        self._changed.add(state.key)

        async def stop() -> None:
            try:
                await self.executor.stop(state.key, attempt, grace)
            except Exception:
                log.exception("stopping %s attempt %d", state.key, attempt)
            self.inbox.append(GangStopped(state.key, attempt))
            self.service.wake()

        self._stop_tasks[state.key] = asyncio.create_task(stop(), name=f"stop {state.key}")

    def _grace(self, key: JobKey, cause: str) -> float:
        job = self.service.jobs().get(key)
        if job is None:
            return KILL_GRACE_S
        policy = inventory.preemption_of(job, self.service.policies(job.metadata.project))
        return float(policy.gracePeriodSeconds) if policy.checkpointFirst else KILL_GRACE_S

    # -- writing --------------------------------------------------------------------------------
    def _enter(self, state: JobState, phase: Any, reason: str, message: str | None = None) -> None:
        state.enter(phase, reason, message)
        self._changed.add(state.key)

    def _status(self, job: Job, state: JobState) -> dict[str, Any]:
        pool = inventory.job_pool(job)
        quota = None
        for p in self.service.pools():
            if inventory.pool_key(p.metadata.project, p.metadata.name) == pool:
                quota = p.spec.quotaGpuHours
        status = state.to_status(pool=pool, quota_gpu_hours=quota)
        status["uid"] = job.metadata.uid  # the API shows it only with this very Job
        return status

    async def _write(self, jobs: dict[str, Job], now: float) -> None:
        interval = self.service.settings.status_interval_s
        due = {k for k in self._progress if now - self._written_at.get(k, 0.0) >= interval}
        for key in sorted(self._changed | due):
            state, job = self.states.get(key), jobs.get(key)
            if state is None or job is None:
                continue
            await self.records.put_status(key, self._status(job, state))
            self.metrics.observe(state, now)
            self._written_at[key] = now
            self._progress.discard(key)
        self._changed.clear()
        used: dict[str, float] = {}
        for key, state in self.states.items():
            pool = inventory.job_pool(jobs[key]) if key in jobs else None
            if pool is not None:
                used[pool] = used.get(pool, 0.0) + state.gpu_hours
        self.metrics.pools(used)
        if self._logs_dirty and now - self._logs_at >= LOG_FLUSH_S:
            for key in sorted(self._logs_dirty):
                await self.records.flush_logs(key)
            self._logs_dirty.clear()
            self._logs_at = now

    async def _refresh_workers(self) -> None:
        found = await cluster_workers(self.executor.client)
        self.workers = {node: info.address for node, info in found.items()}


def _created(job: Job) -> float:
    stamp = job.metadata.creationTimestamp
    if not stamp:
        return 0.0
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def _strategy(job: Job) -> tuple[Any, dict[str, Any]]:
    ref = job.spec.strategy
    return strategy_named(ref.ref if ref else DEFAULT_STRATEGY), dict(ref.params) if ref else {}


def _hint(action: Start) -> dict[str, Any]:
    return action.topology.as_dict()


def _held(current: Placement, target: tuple[Placement, Any] | None) -> Placement:
    """GPUs a resizing job holds: what it runs on now and what it will run on next."""
    if target is None:
        return current
    used = {(s.node, s.gpu) for s in current.ranks}
    ranks = current.ranks + tuple(s for s in target[0].ranks if (s.node, s.gpu) not in used)
    return Placement(current.job, current.dp, current.tp, current.pp, ranks)


def _describe(hint: TopologyHint) -> str:
    comp = "compression on" if hint.compression else "compression off"
    return f"{hint.algorithm} ({comp}, fusion {hint.fusion_window_ms} ms)"


def _shape(job: Job) -> str:
    par = job.spec.parallelism
    el = job.spec.elastic
    elastic = f", elastic {el.min_gpus}..{el.max_gpus} GPUs" if el else ""
    return f"dp={par.dp} tp={par.tp} pp={par.pp} ({par.gpus} GPUs{elastic})"
