"""The gang executor: carries a placement out on Dask, one pinned task per rank, and turns what
Dask and the ranks say into events for the scheduler service.

Dask executes and detects failures; it decides nothing (DESIGN.md §2). Each rank is a task pinned
to the worker of its node (`workers=[address]`, no other worker allowed, one `GPU` resource),
under a key unique to the attempt, running `rank.run_rank`. Events arrive on `events`:

- `RankReport` and `RankLog` from the ranks, through Dask's event log (topics of `rank.py`);
- `RankExited` when a rank's future finishes, errs or is cancelled (the future is released
  then); for an attempt a predecessor launched and this executor `adopt`ed, when the rank's own
  exit event arrives (after a leader change, ranks keep running without their futures);
- `WorkerLost` / `WorkerAdded` from the scheduler's `remove-worker` / `add-worker` events on its
  `all` topic. A pinned task never errs when its worker dies (it waits for that worker for
  good), so node loss is only ever learnt here, never from futures.

Signals, topology updates and the search for live ranks go to the workers' registries of rank
processes with `Client.run` (see `rank.py`), so they reach ranks whoever launched them. A rank
task Dask cancels keeps its thread (Dask cannot interrupt one), so `stop` always ends the rank
processes with signals before cancelling their futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future
from distributed.comm import get_address_host

from infermesh.model import Workload
from infermesh.scheduler.cluster import cluster_workers
from infermesh.scheduler.rank import (
    LOGS_TOPIC,
    RANKS_TOPIC,
    RankSpec,
    free_port,
    run_rank,
    running_ranks,
    set_topology,
    signal_ranks,
)
from infermesh.scheduler.snapshot import JobKey, NodeKey, Placement, RankSlot

CLUSTER_TOPIC = "all"  # where the scheduler logs add-worker / remove-worker
RPC_TIMEOUT_S = 10.0  # one Client.run on live workers
STOP_POLL_S = 0.1  # how often `stop` looks for ranks it did not launch itself
FINISH_TIMEOUT_S = 10.0  # for rank futures to settle once their processes are gone


# -- what the executor is asked to do ------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """One attempt of a job: where its ranks go and what they run."""

    job: JobKey
    attempt: int
    placement: Placement
    workers: dict[NodeKey, str]  # node -> address of the Dask worker standing for it
    workload: Workload
    checkpoint_uri: str | None = None
    interval_steps: int | None = None
    keep_last: int | None = None
    topology: dict[str, Any] = field(default_factory=dict)  # the topology hint, JSON-able
    env: dict[str, str] = field(default_factory=dict)  # extra, over the workload's own


# -- what it reports -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RankReport:
    job: JobKey
    attempt: int
    rank: int
    step: int
    step_time_ms: float | None
    comm_ms: float | None
    tokens_per_s: float | None
    checkpoint_step: int | None  # the newest checkpoint the rank knows of
    time: float  # seconds since the epoch, on the rank's worker
    resumed_from: int | None = None  # the checkpoint step this attempt started from
    stopped: bool = False  # the rank stopped on request (SIGTERM) after this report


@dataclass(frozen=True)
class RankLog:
    job: JobKey
    attempt: int
    rank: int
    lines: list[str]


@dataclass(frozen=True)
class RankExited:
    job: JobKey
    attempt: int
    rank: int
    returncode: int | None  # None: the rank never ran to an exit status (cancelled, error)
    error: str | None  # None: exit status 0


@dataclass(frozen=True)
class WorkerLost:
    address: str
    node: NodeKey | None  # None: a worker that stands for no node, or unknown


@dataclass(frozen=True)
class WorkerAdded:
    address: str
    node: NodeKey | None


ExecutorEvent = RankReport | RankLog | RankExited | WorkerLost | WorkerAdded


# -- pure helpers --------------------------------------------------------------------------------
def rank_key(job: JobKey, attempt: int, rank: int) -> str:
    project, _, name = job.partition("/")
    return f"infermesh-rank-{project}-{name}-a{attempt}-r{rank}"


def rank_env(launch: Launch, slot: RankSlot, master_addr: str, master_port: int) -> dict[str, str]:
    """The environment one rank adds to its worker's (torchrun's names, plus INFERMESH_*).

    CUDA_VISIBLE_DEVICES lists the job's GPUs on the node in local-rank order, so that device
    LOCAL_RANK (what torchrun-style scripts select) is the slot's GPU."""
    placement = launch.placement
    on_node = sorted(
        (s for s in placement.ranks if s.node == slot.node), key=lambda s: s.local_rank
    )
    env = {**launch.workload.env, **launch.env}
    env.update(
        RANK=str(slot.rank),
        WORLD_SIZE=str(placement.gpus),
        LOCAL_RANK=str(slot.local_rank),
        LOCAL_WORLD_SIZE=str(len(on_node)),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        CUDA_VISIBLE_DEVICES=",".join(str(s.gpu) for s in on_node),
        INFERMESH_GPU=str(slot.gpu),
        INFERMESH_JOB=launch.job,
        INFERMESH_ATTEMPT=str(launch.attempt),
        INFERMESH_TOPOLOGY=json.dumps(launch.topology, sort_keys=True),
    )
    optional = {
        "INFERMESH_CHECKPOINT_URI": launch.checkpoint_uri,
        "INFERMESH_CHECKPOINT_INTERVAL": launch.interval_steps,
        "INFERMESH_CHECKPOINT_KEEP": launch.keep_last,
        "INFERMESH_STEPS": launch.workload.steps,
        "INFERMESH_STEP_TIME_MS": launch.workload.stepTimeMs,
    }
    env.update({k: str(v) for k, v in optional.items() if v is not None})
    return env


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def parse_report(stamp: float, msg: Any) -> RankReport | None:
    """A rank's report event as a `RankReport`; None when it is not one."""
    if not isinstance(msg, dict):
        return None
    ident = (msg.get("job"), _opt_int(msg.get("attempt")), _opt_int(msg.get("rank")))
    step = _opt_int(msg.get("step"))
    if not isinstance(ident[0], str) or ident[1] is None or ident[2] is None or step is None:
        return None
    return RankReport(
        job=ident[0],
        attempt=ident[1],
        rank=ident[2],
        step=step,
        step_time_ms=_opt_float(msg.get("step_time_ms")),
        comm_ms=_opt_float(msg.get("comm_ms")),
        tokens_per_s=_opt_float(msg.get("tokens_per_s")),
        checkpoint_step=_opt_int(msg.get("checkpoint_step")),
        time=_opt_float(msg.get("time")) or stamp,
        resumed_from=_opt_int(msg.get("resumed_from")),
        stopped=msg.get("stopped") is True,
    )


# -- the executor --------------------------------------------------------------------------------
@dataclass
class _Attempt:
    ident: tuple[JobKey, int]  # (job, attempt)
    addresses: dict[int, str]  # rank -> worker address
    left: set[int]  # ranks not known to have exited
    futures: dict[int, Future] = field(default_factory=dict)  # launched here, not settled yet
    watchers: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a rank left


class GangExecutor:
    """Runs gangs on the Dask cluster of `client` (an asynchronous Client). `events` is not
    bounded: its consumer keeps taking from it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: asyncio.Queue[ExecutorEvent] = asyncio.Queue()
        self._attempts: dict[JobKey, _Attempt] = {}
        self._workers: dict[str, NodeKey | None] = {}  # live node worker address -> node
        self._ports: dict[JobKey, int] = {}  # the MASTER_PORT of each job's last attempt
        self._alive: dict[tuple[JobKey, int], set[int]] = {}  # ranks seen by `live_attempts`
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False

    async def start(self) -> None:
        self.client.subscribe_topic(RANKS_TOPIC, self._on_rank)
        self.client.subscribe_topic(LOGS_TOPIC, self._on_log)
        self.client.subscribe_topic(CLUSTER_TOPIC, self._on_cluster)
        self._workers = await self._live_workers()

    async def close(self) -> None:
        """Stop listening. Running ranks are left alone: they belong to the jobs, and a
        successor finds them (`live_attempts`) and adopts or stops them."""
        for topic in (RANKS_TOPIC, LOGS_TOPIC, CLUSTER_TOPIC):
            self.client.unsubscribe_topic(topic)
        tasks = [t for run in self._attempts.values() for t in run.watchers.values()]
        if self._refresh is not None:
            tasks.append(self._refresh)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._attempts.clear()

    def running(self, job: JobKey) -> int | None:
        """The attempt of `job` launched or adopted here that has ranks left; None if none."""
        run = self._attempts.get(job)
        return None if run is None else run.ident[1]

    async def live_attempts(self) -> dict[JobKey, int]:
        """The attempt of each job with rank processes alive on the cluster now, whoever
        launched them (the newest, should a job have two)."""
        self._alive = {}
        replies = await self._run(running_ranks, list(self._workers))
        for ranks in replies.values():
            for job, attempt, rank in ranks:
                self._alive.setdefault((job, attempt), set()).add(rank)
        out: dict[JobKey, int] = {}
        for job, attempt in self._alive:
            out[job] = max(attempt, out.get(job, attempt))
        return out

    def adopt(self, job: JobKey, attempt: int, placement: Placement) -> None:
        """Take on an attempt a predecessor launched: its rank exits come as `RankExited`, and
        `signal`, `stop` and `update_topology` reach it. A rank `live_attempts` did not see
        alive is reported exited at once."""
        by_node = {node: address for address, node in self._workers.items() if node}
        addresses = {s.rank: by_node[s.node] for s in placement.ranks if s.node in by_node}
        alive = self._alive.get((job, attempt), set())
        run = _Attempt((job, attempt), addresses, {r for r in alive if r in addresses})
        for slot in placement.ranks:
            if slot.rank not in run.left:
                self.events.put_nowait(
                    RankExited(job, attempt, slot.rank, None, "not running when adopted")
                )
        if run.left:
            self._attempts[job] = run

    async def launch(self, launch: Launch) -> None:
        """Submit one pinned task per rank. Raises ValueError, submitting nothing, when the job
        already runs an attempt here or a node of the placement has no live worker."""
        current = self.running(launch.job)
        if current is not None:
            raise ValueError(f"job {launch.job} still runs attempt {current}; stop it first")
        addresses = {}
        for slot in launch.placement.ranks:
            address = launch.workers.get(slot.node)
            if address is None or address not in self._workers:
                raise ValueError(
                    f"node {slot.node} (rank {slot.rank} of {launch.job}) has no live Dask "
                    f"worker{f' at {address}' if address else ''}"
                )
            addresses[slot.rank] = address
        if 0 not in addresses:
            raise ValueError(f"the placement of {launch.job} has no rank 0")
        master_addr = get_address_host(addresses[0])
        master_port = await self._master_port(launch.job, addresses[0])
        run = _Attempt((launch.job, launch.attempt), addresses, set(addresses))
        self._attempts[launch.job] = run
        for slot in sorted(launch.placement.ranks, key=lambda s: s.rank):
            spec = RankSpec(
                job=launch.job,
                attempt=launch.attempt,
                rank=slot.rank,
                entrypoint=launch.workload.entrypoint,
                args=tuple(launch.workload.args),
                env=rank_env(launch, slot, master_addr, master_port),
            )
            future = self.client.submit(
                run_rank,
                spec,
                key=rank_key(launch.job, launch.attempt, slot.rank),
                workers=[addresses[slot.rank]],
                allow_other_workers=False,
                resources={"GPU": 1},
                pure=False,
            )
            run.futures[slot.rank] = future
            run.watchers[slot.rank] = asyncio.create_task(
                self._watch(run, slot.rank, future), name=f"rank {launch.job} #{slot.rank}"
            )

    async def signal(self, job: JobKey, attempt: int, sig: int) -> list[int]:
        """Deliver `sig` to every rank process of (job, attempt); the ranks reached. Reaches
        ranks neither launched nor adopted here too (then it asks every live worker)."""
        found = await self._run(signal_ranks, self._addresses(job, attempt), job, attempt, sig)
        return sorted(r for ranks in found.values() for r in ranks)

    async def request_checkpoint(self, job: JobKey, attempt: int) -> list[int]:
        """SIGUSR1: the workload checkpoints now and goes on."""
        return await self.signal(job, attempt, signal.SIGUSR1)

    async def update_topology(
        self, job: JobKey, attempt: int, topology: dict[str, Any]
    ) -> list[int]:
        """Hand the ranks of (job, attempt) a new topology hint (their INFERMESH_TOPOLOGY_FILE);
        the ranks reached."""
        text = json.dumps(topology, sort_keys=True)
        found = await self._run(set_topology, self._addresses(job, attempt), job, attempt, text)
        return sorted(r for ranks in found.values() for r in ranks)

    async def stop(self, job: JobKey, attempt: int, grace_s: float) -> None:
        """SIGTERM (the workload checkpoints and exits), SIGKILL what is left after `grace_s`,
        then cancel and release the rank futures. Returns once the attempt is gone; a rank
        whose worker is gone is reported exited with the error `cancelled`."""
        addresses = self._addresses(job, attempt)
        await self.signal(job, attempt, signal.SIGTERM)
        run = self._attempts.get(job)
        if run is None or run.ident != (job, attempt):  # not ours: look until none is left
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and await self.signal(job, attempt, 0):
                await asyncio.sleep(STOP_POLL_S)
            await self._run(signal_ranks, addresses, job, attempt, signal.SIGKILL)
            return
        if not await self._settle(run, grace_s):
            await self.signal(job, attempt, signal.SIGKILL)
            await self._settle(run, FINISH_TIMEOUT_S)
        if run.futures:
            await self.client.cancel(list(run.futures.values()), reason="attempt stopped")
        watchers = list(run.watchers.values())
        if watchers:
            _, pending = await asyncio.wait(watchers, timeout=FINISH_TIMEOUT_S)
            for task in pending:  # settled or not, the attempt is over for us
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for rank in sorted(run.left):
            self._left(run, rank, None, "cancelled")
        if self._attempts.get(job) is run:
            del self._attempts[job]

    # -- internals --------------------------------------------------------------------------------
    def _addresses(self, job: JobKey, attempt: int) -> list[str]:
        """Live workers that may hold ranks of (job, attempt)."""
        run = self._attempts.get(job)
        if run is not None and run.ident == (job, attempt):
            held = {run.addresses[r] for r in run.left}
            return sorted(a for a in held if a in self._workers)
        return sorted(self._workers)

    async def _settle(self, run: _Attempt, timeout: float) -> bool:
        """Wait until no rank on a live worker is left; whether that happened in `timeout`."""
        deadline = time.monotonic() + timeout
        while any(run.addresses[r] in self._workers for r in run.left):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            run.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), remaining)
        return True

    async def _run(self, function: Any, addresses: list[str], *args: Any) -> dict[str, Any]:
        """`function(*args)` on live workers; the replies that are non-empty lists."""
        if not addresses:
            return {}
        replies = await asyncio.wait_for(
            self.client.run(function, *args, workers=addresses, on_error="return"),
            RPC_TIMEOUT_S,
        )
        return {a: r for a, r in replies.items() if isinstance(r, list) and r}

    async def _master_port(self, job: JobKey, address: str) -> int:
        """A port free now on rank 0's host, other than the job's last one."""
        host = get_address_host(address)
        for _ in range(5):
            replies = await asyncio.wait_for(
                self.client.run(free_port, host, workers=[address]), RPC_TIMEOUT_S
            )
            port = int(replies[address])
            if port != self._ports.get(job):
                break
        self._ports[job] = port
        return port

    def _left(self, run: _Attempt, rank: int, returncode: int | None, error: str | None) -> None:
        """Rank `rank` of `run` is gone: say so once, and forget the attempt after its last."""
        if rank not in run.left:
            return
        run.left.discard(rank)
        run.changed.set()
        job, attempt = run.ident
        self.events.put_nowait(RankExited(job, attempt, rank, returncode, error))
        if not run.left and self._attempts.get(job) is run:
            del self._attempts[job]

    async def _watch(self, run: _Attempt, rank: int, future: Future) -> None:
        try:
            result = await future
            returncode, error = result["returncode"], result["error"]
        except concurrent.futures.CancelledError:  # Dask's, not this task being cancelled
            returncode, error = None, "cancelled"
        except Exception as exc:  # the rank task itself raised (e.g. no such command)
            returncode, error = None, f"{type(exc).__name__}: {exc}"
        finally:
            future.release()
            run.futures.pop(rank, None)
        self._left(run, rank, returncode, error)

    def _on_rank(self, event: tuple[float, Any]) -> None:
        stamp, msg = event
        if isinstance(msg, dict) and msg.get("exited") is True:
            self._on_exit(msg)
            return
        report = parse_report(stamp, msg)
        if report is not None:
            self.events.put_nowait(report)

    def _on_exit(self, msg: dict[str, Any]) -> None:
        """A rank's own word that it ended: what an adopted attempt learns exits from (the
        futures of an attempt launched here say it, and say cancellations too)."""
        job, rank = msg.get("job"), _opt_int(msg.get("rank"))
        run = self._attempts.get(job) if isinstance(job, str) else None
        if run is None or run.ident[1] != msg.get("attempt") or rank is None:
            return
        if rank not in run.futures:
            error = msg.get("error")
            self._left(run, rank, _opt_int(msg.get("returncode")), error if error else None)

    def _on_log(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self.events.put_nowait(
                RankLog(
                    str(msg["job"]),
                    int(msg["attempt"]),
                    int(msg["rank"]),
                    [str(line) for line in msg["lines"]],
                )
            )

    def _on_cluster(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if not isinstance(msg, dict):
            return
        action, address = msg.get("action"), msg.get("worker")
        if action == "remove-worker" and isinstance(address, str):
            self.events.put_nowait(WorkerLost(address, self._workers.pop(address, None)))
            for run in self._attempts.values():  # a stop waiting on its ranks stops waiting
                run.changed.set()
        elif action == "add-worker":
            # The event carries no name: read it from the scheduler, once for a burst of joins.
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(self._refresh_workers())
            else:
                self._refresh_again = True

    async def _refresh_workers(self) -> None:
        while True:
            self._refresh_again = False
            live = await self._live_workers()
            for address, node in live.items():
                if address not in self._workers:
                    self._workers[address] = node
                    self.events.put_nowait(WorkerAdded(address, node))
            if not self._refresh_again:
                return

    async def _live_workers(self) -> dict[str, NodeKey | None]:
        return {info.address: node for node, info in (await cluster_workers(self.client)).items()}
