"""The training scheduler end to end: real etcd, the real API, a simulated fleet whose agents
report GPU nodes, a real Dask cluster (one Nanny worker per node) and the scheduler service.

The fleet has 6 GPUs: eu-1 and eu-2 (2 each, zone eu-west-1a, EU), us-1 (2, US).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from infermesh.errors import MeshError
from infermesh.scheduler.synthetic import latest_checkpoint
from tests.fixtures_api import ApiServer
from tests.scheduler_mesh import SchedulerMesh, scheduler_mesh


@pytest_asyncio.fixture(scope="module")
async def shared(
    api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SchedulerMesh]:
    project = f"s-{uuid.uuid4().hex[:8]}"
    async with scheduler_mesh(api, project, tmp_path_factory.mktemp("sched")) as mesh:
        yield mesh


@pytest_asyncio.fixture
async def mesh(shared: SchedulerMesh) -> AsyncIterator[SchedulerMesh]:
    yield shared
    await shared.delete_all()


def waiting(status: dict) -> bool:
    """The scheduler (not the API's placeholder) says why the job waits."""
    return "attempt" in status and bool(status.get("message"))


def ckpt_step(mesh: SchedulerMesh, name: str) -> int | None:
    found = latest_checkpoint(f"file://{mesh.tmp / name}")
    return found[0] if found else None


# running to completion -------------------------------------------------------------------
async def test_a_job_runs_to_completion_with_checkpoints_events_and_logs(
    mesh: SchedulerMesh,
) -> None:
    name = await mesh.submit(mesh.job(parallelism={"dp": 2, "tp": 2}))
    status = await mesh.phase(name, "Succeeded", timeout=90)
    assert status["step"] == 40 and status["totalSteps"] == 40
    assert status["lastCheckpoint"]["step"] == 40 and ckpt_step(mesh, name) == 40
    assert status["gpuHours"] > 0 and status["attempt"] == 1
    assert status["costUSD"] > 0  # at the nodes' price per GPU-hour
    reasons = await mesh.reasons(name)
    assert {"Queued", "Placed", "Running", "Succeeded"} <= set(reasons)
    logs = await mesh.client.job_logs(name, project=mesh.project)
    assert logs.lines  # the ranks' output reached the API


async def test_tp_groups_stay_inside_one_node(mesh: SchedulerMesh) -> None:
    name = await mesh.submit(mesh.job(parallelism={"dp": 2, "tp": 2}, workload={"steps": 400}))
    status = await mesh.phase(name, "Running")
    assert sorted(status["nodes"].values()) == [2, 2]  # each TP pair on one 2-GPU node


# admission ------------------------------------------------------------------------------
async def test_a_gang_that_does_not_fit_gets_nothing_and_says_why(mesh: SchedulerMesh) -> None:
    name = await mesh.submit(mesh.job(parallelism={"dp": 8}))  # 8 GPUs on a 6-GPU fleet
    status = await mesh.wait(name, waiting, what="given a reason")
    assert status["phase"] == "Pending" and status["gpus"] == 0
    small = await mesh.submit(mesh.job())
    await mesh.phase(small, "Running", "Succeeded")
    assert (await mesh.status(name))["gpus"] == 0  # never a partial gang


async def test_constraints_and_quotas_are_honoured(mesh: SchedulerMesh) -> None:
    us = await mesh.submit(mesh.job(parallelism={"dp": 2}, constraints={"residency": "US"}))
    status = await mesh.phase(us, "Running", "Succeeded")
    assert set(status["nodes"]) <= {f"{mesh.project}/us-1"}
    pool = {
        "apiVersion": "v1",
        "kind": "CapacityPool",
        "metadata": {"name": "spent", "project": mesh.project},
        "spec": {"quotaGpuHours": 0},
    }
    await mesh.client.apply([pool], project=mesh.project)
    over = await mesh.submit(mesh.job(capacityPoolRef="spent"))
    status = await mesh.wait(over, lambda s: "spent" in (s.get("message") or ""), what="quota")
    assert status["phase"] == "Pending" and status["gpus"] == 0
    nowhere = await mesh.submit(mesh.job(constraints={"nodeClasses": ["no-such-class"]}))
    status = await mesh.wait(nowhere, waiting, what="unschedulable")
    assert status["gpus"] == 0


async def test_bad_job_specs_are_rejected_with_clear_errors(mesh: SchedulerMesh) -> None:
    bad = mesh.job(parallelism={"dp": 1, "tp": 2}, elastic={"min_gpus": 3, "max_gpus": 8})
    with pytest.raises(MeshError) as err:
        await mesh.submit(bad)
    assert "tp*pp" in str(err.value) and "min_gpus" in str(err.value)
    assert (await mesh.client.list("jobs", project=mesh.project)).items == []


# preemption, recovery, elasticity ---------------------------------------------------------
async def test_a_higher_priority_job_preempts_a_lower_one_which_resumes_later(
    mesh: SchedulerMesh,
) -> None:
    low = await mesh.submit(mesh.job(parallelism={"dp": 6}, workload={"steps": 400}))
    await mesh.wait(low, lambda s: (s.get("lastCheckpoint") or {}).get("step"), what="ckpt")
    high = await mesh.submit(mesh.job(parallelism={"dp": 4}, priority=10))
    status = await mesh.phase(low, "Preempted")
    assert status["preemptions"] == 1 and status["gpus"] == 0
    stopped_at = ckpt_step(mesh, low)
    assert stopped_at is not None and stopped_at == status["lastCheckpoint"]["step"]
    await mesh.phase(high, "Succeeded", timeout=90)
    status = await mesh.wait(
        low, lambda s: s.get("phase") == "Running" and s["step"] > stopped_at, what="resumed"
    )
    assert status["attempt"] == 2
    assert "Preempting" in await mesh.reasons(low)


async def test_a_killed_worker_resumes_the_job_from_its_last_checkpoint(
    mesh: SchedulerMesh,
) -> None:
    name = await mesh.submit(mesh.job(parallelism={"dp": 2}, workload={"steps": 600}))
    status = await mesh.wait(name, lambda s: (s.get("step") or 0) > 25, what="past step 25")
    node = sorted(status["nodes"])[0]
    address = mesh.service.controller.workers[node]
    pids = await mesh.dask.run(os.getpid, workers=[address])
    os.kill(pids[address], signal.SIGKILL)
    status = await mesh.wait(
        name, lambda s: s.get("recoveries", 0) >= 1 and s["phase"] == "Running", what="recovered"
    )
    assert status["attempt"] >= 2
    assert 0 <= status["stepsLost"] <= 10  # no more than interval_steps
    assert "NodeLost" in await mesh.reasons(name)


async def test_an_elastic_job_grows_when_capacity_frees(mesh: SchedulerMesh) -> None:
    blocker = await mesh.submit(mesh.job(parallelism={"dp": 4}, workload={"steps": 60}))
    await mesh.phase(blocker, "Running")
    elastic = await mesh.submit(
        mesh.job(elastic={"min_gpus": 1, "max_gpus": 6}, workload={"steps": 2000})
    )
    status = await mesh.phase(elastic, "Running")
    assert status["gpus"] == 2  # what was free
    await mesh.phase(blocker, "Succeeded", timeout=90)
    status = await mesh.wait(elastic, lambda s: s.get("gpus") == 6, what="grown to 6 GPUs")
    assert "Resizing" in await mesh.reasons(elastic)


async def test_a_slowing_wan_link_switches_the_topology_without_a_restart(
    mesh: SchedulerMesh,
) -> None:
    name = await mesh.submit(
        mesh.job(parallelism={"dp": 4}, constraints={"residency": "EU"}, workload={"steps": 3000})
    )
    status = await mesh.wait(name, lambda s: (s.get("step") or 0) > 10, what="past step 10")
    assert status["topology"]["algorithm"] == "ring"  # two nodes in one zone
    (mesh.tmp / name).mkdir(exist_ok=True)
    (mesh.tmp / name / ".wan-factor").write_text("40")  # the link between them slows 40x
    status = await mesh.wait(
        name,
        lambda s: (s.get("topology") or {}).get("algorithm") == "hierarchical",
        what="switched to hierarchical",
    )
    assert status["topology"]["compression"] is True and status["attempt"] == 1
    assert "TopologyAdjust" in await mesh.reasons(name)


# actions ----------------------------------------------------------------------------------
async def test_pause_resume_scale_and_checkpoint(mesh: SchedulerMesh) -> None:
    name = await mesh.submit(
        mesh.job(elastic={"min_gpus": 1, "max_gpus": 4}, workload={"steps": 3000})
    )
    await mesh.wait(name, lambda s: (s.get("step") or 0) > 5, what="running")
    await mesh.action(name, "checkpoint")
    await mesh.wait(name, lambda s: "Checkpointed" in s.get("reason", ""), what="checkpointed")
    await mesh.action(name, "pause")
    status = await mesh.phase(name, "Paused")
    assert status["gpus"] == 0 and ckpt_step(mesh, name) == status["lastCheckpoint"]["step"]
    await mesh.action(name, "resume")
    status = await mesh.phase(name, "Running")
    await mesh.action(name, "scale", {"gpus": 1})
    status = await mesh.wait(name, lambda s: s.get("gpus") == 1, what="scaled to 1 GPU")
    assert status["phase"] in ("Running", "Admitted")


# failover ---------------------------------------------------------------------------------
async def test_a_standby_takes_over_without_launching_anything_twice(mesh: SchedulerMesh) -> None:
    name = await mesh.submit(mesh.job(parallelism={"dp": 2}, workload={"steps": 3000}))
    await mesh.wait(name, lambda s: (s.get("step") or 0) > 5, what="running")
    standby = await mesh.standby("scheduler-b")
    _, task, stop = mesh.services[0]
    stop.set()
    await task  # the leader hands over (it resigns on the way out)
    async with asyncio.timeout(30):
        await standby.leading.wait()
    step = (await mesh.status(name))["step"]
    status = await mesh.wait(name, lambda s: s["step"] > step + 5, what="progressing")
    assert status["attempt"] == 1 and status["phase"] == "Running"  # adopted, not relaunched
    live = await standby.controller.executor.live_attempts()
    assert live == {f"{mesh.project}/{name}": 1}
    mesh.service = standby
    assert "Adopted" in await mesh.reasons(name)


async def test_a_crashed_leader_is_replaced_and_its_gangs_adopted(
    mesh: SchedulerMesh, tmp_path: Path
) -> None:
    # The in-process leader hands over to a scheduler process, which then dies by SIGKILL.
    argv = [sys.executable, "-m", "infermesh", "scheduler", "--identity", "doomed"]
    argv += ["--etcd", mesh.api.etcd.endpoint, "--etcd-prefix", mesh.api.prefix]
    argv += ["--dask", mesh.cluster.address]
    with (tmp_path / "scheduler.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        _, task, stop = mesh.services[-1]
        stop.set()
        await task
        async with asyncio.timeout(30):
            while await mesh.service.election.leader() != "doomed":
                await asyncio.sleep(0.2)
        name = await mesh.submit(mesh.job(parallelism={"dp": 2}, workload={"steps": 3000}))
        await mesh.wait(name, lambda s: (s.get("step") or 0) > 5, what="running")
        standby = await mesh.standby("scheduler-c")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        async with asyncio.timeout(30):  # the dead leader's key expires with its lease
            await standby.leading.wait()
        mesh.service = standby
        step = (await mesh.status(name))["step"]
        status = await mesh.wait(name, lambda s: s["step"] > step + 5, what="progressing")
        assert status["attempt"] == 1 and status["phase"] == "Running"
        assert await standby.controller.executor.live_attempts() == {f"{mesh.project}/{name}": 1}
        assert "Adopted" in await mesh.reasons(name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
