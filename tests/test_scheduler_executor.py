"""The gang executor on a real local Dask cluster: ranks as pinned tasks running real
subprocesses, their reports and logs, stop with checkpoint, node loss and resume, adoption by a
successor, and the preload that makes a `dask worker` a GPU node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from distributed import Client, SpecCluster

from infermesh.model import Workload
from infermesh.scheduler.cluster import (
    WorkerNode,
    close_cluster,
    cluster_workers,
    start_local_cluster,
)
from infermesh.scheduler.executor import (
    ExecutorEvent,
    GangExecutor,
    Launch,
    RankExited,
    RankLog,
    RankReport,
    WorkerAdded,
    WorkerLost,
    rank_key,
)
from infermesh.scheduler.snapshot import Placement, RankSlot
from infermesh.scheduler.synthetic import WAN_FILE, latest_checkpoint

WAIT = 60.0  # generous bound for "eventually", never a performance target
FACTS = {"node_class": "l4", "region": "eu", "domain": "edge-eu", "spot": "false"}
NODES = [
    WorkerNode("test/n1", 2, {**FACTS, "zone": "eu-1a", "island": "nvl-1"}),
    WorkerNode("test/n2", 2, {**FACTS, "zone": "eu-1b", "island": "nvl-2"}),
    WorkerNode("test/n3", 2, {**FACTS, "zone": "eu-1c", "island": "nvl-3"}),
]
QUICK = {"INFERMESH_SYNTHETIC_CPU_SHARE": "0.2"}  # two cores shared by every rank and worker


class EventLog:
    """Every executor event seen so far, and a bounded wait for the one a test needs."""

    def __init__(self, executor: GangExecutor) -> None:
        self.executor = executor
        self.seen: list[ExecutorEvent] = []

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            remaining = deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(self.executor.events.get(), max(0.01, remaining))
            except TimeoutError:
                raise AssertionError(f"never saw {what}; last events: {self.seen[-10:]}") from None
            self.seen.append(event)

    def drain(self) -> None:
        """Take in what is queued already (`stop` queues its ranks' exits before it returns)."""
        while not self.executor.events.empty():
            self.seen.append(self.executor.events.get_nowait())

    def of(self, kind: type[Any], job: str | None = None, attempt: int | None = None) -> list[Any]:
        return [
            e
            for e in self.seen
            if isinstance(e, kind)
            and (job is None or e.job == job)
            and (attempt is None or e.attempt == attempt)
        ]

    def exits(self, job: str, attempt: int) -> dict[int, RankExited]:
        return {e.rank: e for e in self.of(RankExited, job, attempt)}

    def top_step(self, job: str, attempt: int) -> int:
        return max((r.step for r in self.of(RankReport, job, attempt)), default=0)


@dataclass
class Env:
    cluster: SpecCluster
    client: Client
    executor: GangExecutor
    events: EventLog
    pids: set[int] = field(default_factory=set)  # every worker process seen

    async def workers(self) -> dict[str, str]:
        return {node: info.address for node, info in (await cluster_workers(self.client)).items()}

    async def remember_pids(self) -> None:
        """The local cluster's Nannies live in this process; its workers are children."""
        self.pids.update((await self.client.run(os.getpid)).values())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[Env]:
    cluster = await start_local_cluster(NODES)
    client = await Client(cluster, asynchronous=True)
    executor = GangExecutor(client)
    await executor.start()
    state = Env(cluster, client, executor, EventLog(executor))
    try:
        await state.remember_pids()
        yield state
    finally:
        with contextlib.suppress(Exception):
            await state.remember_pids()
            for job, attempt in (await executor.live_attempts()).items():
                await executor.stop(job, attempt, 0)
        await executor.close()
        await client.close()
        await close_cluster(cluster)
        for pid in state.pids:  # anything the cluster failed to stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def gang(job: str, layout: list[tuple[str, list[int]]]) -> Placement:
    """A data-parallel placement: ranks in order over (node, GPU indexes) pairs."""
    slots = []
    for node, gpus in layout:
        for local, gpu in enumerate(gpus):
            slots.append(RankSlot(len(slots), node, gpu, local))
    return Placement(job, len(slots), 1, 1, tuple(slots))


def synthetic(steps: int, **env: str) -> Workload:
    return Workload(entrypoint="synthetic", steps=steps, stepTimeMs=20, env={**QUICK, **env})


def launch_of(
    job: str,
    attempt: int,
    placement: Placement,
    workers: dict[str, str],
    workload: Workload,
    uri: Path | None = None,
    interval: int | None = 10,
    topology: dict[str, Any] | None = None,
) -> Launch:
    return Launch(
        job=job,
        attempt=attempt,
        placement=placement,
        workers=workers,
        workload=workload,
        checkpoint_uri=uri.as_uri() if uri else None,
        interval_steps=interval,
        keep_last=2,
        topology=topology or {"algorithm": "ring"},
    )


async def run_to_end(env: Env, launch: Launch) -> dict[int, RankExited]:
    await env.executor.launch(launch)
    ranks = launch.placement.gpus
    await env.events.until(
        lambda: len(env.events.exits(launch.job, launch.attempt)) == ranks,
        f"all {ranks} ranks of {launch.job} attempt {launch.attempt} exit",
    )
    return env.events.exits(launch.job, launch.attempt)


def no_futures_left(env: Env, job: str, attempt: int, ranks: int) -> bool:
    return not {rank_key(job, attempt, r) for r in range(ranks)} & set(env.client.futures)


def children_running(parent: int, marker: str) -> list[int]:
    """PIDs of `parent`'s live children whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == parent and fields[0] != "Z" and marker in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def test_nodes_are_workers_with_their_gpus_and_facts(env: Env) -> None:
    found = await cluster_workers(env.client)
    assert set(found) == {n.node for n in NODES}
    for node in NODES:
        assert found[node.node].gpus == 2
        assert found[node.node].facts == node.facts
        assert found[node.node].address.startswith("tcp://127.0.0.1:")


async def test_a_gang_trains_to_the_end_with_checkpoints_and_reports(
    env: Env, tmp_path: Path
) -> None:
    job, uri = "test/complete", tmp_path / "ckpt"
    workers = await env.workers()
    placement = gang(job, [("test/n1", [0, 1]), ("test/n2", [0, 1])])
    exits = await run_to_end(env, launch_of(job, 1, placement, workers, synthetic(30), uri))

    assert {r: (e.returncode, e.error) for r, e in exits.items()} == {
        r: (0, None) for r in range(4)
    }
    reports = env.events.of(RankReport, job, 1)
    assert {r.rank for r in reports} == {0, 1, 2, 3}
    assert all(r.comm_ms and r.comm_ms > 0 and r.tokens_per_s for r in reports)
    assert max(r.step for r in reports if r.rank == 0) == 30
    assert max(r.checkpoint_step or 0 for r in reports if r.rank == 0) == 30
    assert latest_checkpoint(str(uri)) == (30, str(uri / "step-00000030.npz"))
    assert sorted(p.name for p in uri.iterdir()) == ["step-00000020.npz", "step-00000030.npz"]
    assert any("done, 30 steps" in line for e in env.events.of(RankLog, job) for line in e.lines)
    assert env.executor.running(job) is None
    await env.events.until(lambda: no_futures_left(env, job, 1, 4), "the futures released")


ENV_NAMES = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CUDA_VISIBLE_DEVICES",
    "INFERMESH_JOB",
    "INFERMESH_ATTEMPT",
    "INFERMESH_TOPOLOGY",
    "INFERMESH_CHECKPOINT_URI",
    "INFERMESH_CHECKPOINT_INTERVAL",
    "INFERMESH_STEPS",
    "OWN_SETTING",
]


async def test_each_rank_sees_its_place_in_the_gang(env: Env, tmp_path: Path) -> None:
    job = "test/env"
    names = repr(ENV_NAMES)
    program = f"import json, os; print('ENV', json.dumps({{k: os.getenv(k) for k in {names}}}))"
    workload = Workload(
        entrypoint=shlex.join([sys.executable, "-c", program]), steps=7, env={"OWN_SETTING": "x"}
    )
    workers = await env.workers()
    placement = gang(job, [("test/n1", [1, 0]), ("test/n2", [1])])
    topology = {"algorithm": "tree", "compression": True}
    ports = []
    for attempt in (1, 2):
        launch = launch_of(job, attempt, placement, workers, workload, tmp_path, 5, topology)
        exits = await run_to_end(env, launch)
        assert all(e.returncode == 0 for e in exits.values())
        seen = {}
        for log in env.events.of(RankLog, job, attempt):
            for line in log.lines:
                if line.startswith("ENV "):
                    seen[log.rank] = json.loads(line[4:])
        assert set(seen) == {0, 1, 2}
        for slot in placement.ranks:
            got = seen[slot.rank]
            assert got["RANK"] == str(slot.rank) and got["WORLD_SIZE"] == "3"
            assert got["LOCAL_RANK"] == str(slot.local_rank)
            assert got["LOCAL_WORLD_SIZE"] == ("2" if slot.node == "test/n1" else "1")
            # Device LOCAL_RANK, what torchrun-style scripts pick, is the slot's GPU.
            assert got["CUDA_VISIBLE_DEVICES"].split(",")[slot.local_rank] == str(slot.gpu)
            assert got["MASTER_ADDR"] == "127.0.0.1"
            assert got["INFERMESH_JOB"] == job and got["INFERMESH_ATTEMPT"] == str(attempt)
            assert json.loads(got["INFERMESH_TOPOLOGY"]) == topology
            assert got["INFERMESH_CHECKPOINT_URI"] == tmp_path.as_uri()
            assert got["INFERMESH_CHECKPOINT_INTERVAL"] == "5"
            assert got["INFERMESH_STEPS"] == "7" and got["OWN_SETTING"] == "x"
        assert len({got["MASTER_PORT"] for got in seen.values()}) == 1
        ports.append(int(seen[0]["MASTER_PORT"]))
    assert ports[0] != ports[1]  # a new rendezvous port for every attempt


async def test_module_function_entrypoints_run_and_failures_say_why(
    env: Env, tmp_path: Path
) -> None:
    workers = await env.workers()
    job = "test/function"
    workload = Workload(entrypoint="infermesh.scheduler.synthetic:main", steps=3, env=QUICK)
    placement = gang(job, [("test/n2", [0])])
    exits = await run_to_end(env, launch_of(job, 1, placement, workers, workload, tmp_path))
    assert exits[0].returncode == 0 and exits[0].error is None
    assert max(r.step for r in env.events.of(RankReport, job, 1)) == 3

    job = "test/crash"
    crash = Workload(entrypoint="os:abort")
    exits = await run_to_end(env, launch_of(job, 1, gang(job, [("test/n2", [1])]), workers, crash))
    assert exits[0].returncode == -signal.SIGABRT and exits[0].error == "killed by SIGABRT"

    job = "test/missing"
    missing = Workload(entrypoint="/nonexistent/trainer --lr 0.1")
    exits = await run_to_end(
        env, launch_of(job, 1, gang(job, [("test/n2", [1])]), workers, missing)
    )
    assert exits[0].returncode is None and "FileNotFoundError" in (exits[0].error or "")


async def test_stop_checkpoints_first_and_the_next_attempt_resumes_there(
    env: Env, tmp_path: Path
) -> None:
    job, uri = "test/stop", tmp_path / "ckpt"
    workers = await env.workers()
    placement = gang(job, [("test/n1", [0, 1]), ("test/n2", [0, 1])])
    await env.executor.launch(launch_of(job, 1, placement, workers, synthetic(100_000), uri))
    await env.events.until(
        lambda: any(r.rank == 0 and r.step >= 15 for r in env.events.of(RankReport, job, 1)),
        "rank 0 past step 15",
    )
    await env.executor.stop(job, 1, grace_s=10)
    env.events.drain()
    exits = env.events.exits(job, 1)
    assert {r: e.returncode for r, e in exits.items()} == {0: 0, 1: 0, 2: 0, 3: 0}
    final = [r for r in env.events.of(RankReport, job, 1) if r.rank == 0 and r.stopped]
    assert len(final) == 1
    stopped_at = final[0].step
    assert final[0].checkpoint_step == stopped_at
    assert latest_checkpoint(str(uri))[0] == stopped_at  # type: ignore[index]
    assert env.executor.running(job) is None
    await env.events.until(lambda: no_futures_left(env, job, 1, 4), "the futures released")

    exits = await run_to_end(
        env, launch_of(job, 2, placement, workers, synthetic(stopped_at + 5), uri)
    )
    assert all(e.returncode == 0 for e in exits.values())
    resumed = {r.resumed_from for r in env.events.of(RankReport, job, 2)}
    assert resumed == {stopped_at}  # not one step lost
    assert latest_checkpoint(str(uri))[0] == stopped_at + 5  # type: ignore[index]


async def test_a_killed_worker_is_reported_lost_and_its_ranks_die_with_it(
    env: Env, tmp_path: Path
) -> None:
    job, uri, interval = "test/kill", tmp_path / "ckpt", 10
    workers = await env.workers()
    victim = workers["test/n3"]
    placement = gang(job, [("test/n3", [0, 1]), ("test/n1", [0, 1])])
    await env.executor.launch(launch_of(job, 1, placement, workers, synthetic(100_000), uri))
    await env.events.until(
        lambda: any((r.checkpoint_step or 0) >= 20 for r in env.events.of(RankReport, job, 1)),
        "a checkpoint at step 20",
    )
    worker_pid = (await env.client.run(os.getpid, workers=[victim]))[victim]
    ranks = children_running(worker_pid, "infermesh.scheduler.synthetic")
    assert len(ranks) == 2

    os.kill(worker_pid, signal.SIGKILL)
    await env.events.until(
        lambda: any(e.address == victim for e in env.events.of(WorkerLost)), "WorkerLost"
    )
    assert [e.node for e in env.events.of(WorkerLost) if e.address == victim] == ["test/n3"]
    deadline = time.monotonic() + WAIT
    while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in ranks), "rank processes outlived their worker"

    await env.executor.stop(job, 1, grace_s=10)
    env.events.drain()
    exits = env.events.exits(job, 1)
    assert {r: e.error for r, e in exits.items() if r < 2} == {0: "cancelled", 1: "cancelled"}
    assert {r: e.returncode for r, e in exits.items() if r >= 2} == {2: 0, 3: 0}
    await env.events.until(lambda: no_futures_left(env, job, 1, 4), "the futures released")
    checkpoint = latest_checkpoint(str(uri))
    assert checkpoint is not None
    assert env.events.top_step(job, 1) - checkpoint[0] <= interval

    # The Nanny brings the node's worker back, at a new address.
    await env.events.until(
        lambda: any(e.node == "test/n3" for e in env.events.of(WorkerAdded)), "WorkerAdded"
    )
    await env.remember_pids()
    healthy = gang(job, [("test/n1", [0, 1]), ("test/n2", [0, 1])])
    workers = await env.workers()
    assert workers["test/n3"] != victim
    exits = await run_to_end(
        env, launch_of(job, 2, healthy, workers, synthetic(checkpoint[0] + 5), uri)
    )
    assert all(e.returncode == 0 for e in exits.values())
    assert {r.resumed_from for r in env.events.of(RankReport, job, 2)} == {checkpoint[0]}


async def test_a_new_topology_hint_and_a_slow_wan_reach_running_ranks(
    env: Env, tmp_path: Path
) -> None:
    job, uri = "test/topology", tmp_path / "ckpt"
    workers = await env.workers()
    placement = gang(job, [("test/n1", [0, 1]), ("test/n2", [0, 1])])
    await env.executor.launch(launch_of(job, 1, placement, workers, synthetic(100_000), uri))

    def comm_of_all(value: float) -> Callable[[], bool]:
        def cond() -> bool:
            latest = {r.rank: r.comm_ms for r in env.events.of(RankReport, job, 1)}
            return latest == {r: value for r in range(4)}

        return cond

    try:
        await env.events.until(comm_of_all(3.0), "ring all-reduce over 4 ranks")
        reached = await env.executor.update_topology(job, 1, {"algorithm": "hierarchical"})
        assert reached == [0, 1, 2, 3]
        await env.events.until(comm_of_all(1.1), "hierarchical all-reduce over 2 nodes")
        (uri / WAN_FILE).write_text("10")
        await env.events.until(comm_of_all(10.1), "the inter-node part ten times slower")
    finally:
        await env.executor.stop(job, 1, grace_s=10)


async def test_a_successor_adopts_a_running_gang_and_can_stop_it(env: Env, tmp_path: Path) -> None:
    job, uri = "test/adopt", tmp_path / "ckpt"
    workers = await env.workers()
    placement = gang(job, [("test/n2", [0, 1])])
    leader = await Client(env.cluster.scheduler_address, asynchronous=True)
    first = GangExecutor(leader)
    try:
        await first.start()
        await first.launch(launch_of(job, 1, placement, workers, synthetic(100_000), uri))
        await env.events.until(lambda: env.events.top_step(job, 1) >= 10, "step 10")
    finally:  # the leader goes away; its ranks do not
        await first.close()
        await leader.close()
    before = env.events.top_step(job, 1)

    assert (await env.executor.live_attempts()).get(job) == 1
    env.executor.adopt(job, 1, placement)
    assert env.executor.running(job) == 1
    await env.events.until(lambda: env.events.top_step(job, 1) >= before + 10, "more steps")
    assert {r.resumed_from for r in env.events.of(RankReport, job, 1)} == {None}  # never restarted

    await env.executor.stop(job, 1, grace_s=10)
    env.events.drain()
    assert {r: e.returncode for r, e in env.events.exits(job, 1).items()} == {0: 0, 1: 0}
    assert job not in await env.executor.live_attempts()
    assert env.executor.running(job) is None


async def test_a_dask_worker_with_the_preload_stands_for_its_node(env: Env) -> None:
    node = "test/preloaded"
    argv = [sys.executable, "-m", "dask", "worker", env.cluster.scheduler_address]
    argv += ["--name", node, "--resources", "GPU=1", "--nthreads", "2", "--host", "127.0.0.1"]
    argv += ["--no-dashboard", "--preload", "infermesh.scheduler.worker"]
    facts = {"INFERMESH_NODE_CLASS": "h100", "INFERMESH_NODE_ZONE": "z9"}
    worker = subprocess.Popen(
        argv,
        env={**os.environ, **facts},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await env.events.until(
            lambda: any(e.node == node for e in env.events.of(WorkerAdded)), "WorkerAdded"
        )
        info = (await cluster_workers(env.client))[node]
        assert info.gpus == 1 and info.facts == {"node_class": "h100", "zone": "z9"}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(WAIT)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    await env.events.until(
        lambda: any(e.node == node for e in env.events.of(WorkerLost)), "WorkerLost"
    )
