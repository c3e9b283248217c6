"""A small real training mesh for scheduler tests: the session API and etcd, a simulated fleet of
its own (agents report GPU nodes), a real Dask cluster with one Nanny worker per node, and the
scheduler service in this process.

The fleet: two EU nodes with 2 GPUs each in one zone, one US node with 2 GPUs: 6 GPUs in all.
Tests submit their own jobs (unique names, checkpoints under their tmp_path) through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client

from infermesh.agent.fleet import SimulatedFleet, load_fleet
from infermesh.client import AsyncMeshClient
from infermesh.scheduler.local import LocalFleetCluster, worker_nodes
from infermesh.scheduler.service import SchedulerService, SchedulerSettings
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer

FLEET = """
apiVersion: v1
kind: Fleet
metadata: { name: scheduler-test }
spec:
  groups:
    - { name: eu, count: 2, nodeClass: train-h100, domain: eu-t, region: eu-west, zone: eu-west-1a, model: m@1, profile: H100, pricePerGpuHour: 2.9 }
    - { name: us, count: 1, nodeClass: train-a100, domain: us-t, region: us-east, zone: us-east-1a, model: m@1, profile: A100, pricePerGpuHour: 1.2 }
---
apiVersion: v1
kind: Domain
metadata: { name: eu-t }
spec: { residency: { region: EU } }
---
apiVersion: v1
kind: Domain
metadata: { name: us-t }
spec: { residency: { region: US } }
---
apiVersion: v1
kind: NodeClass
metadata: { name: train-h100 }
spec:
  hardware: { gpu: H100-80G, gpuCount: 2, vramGB: 80, nvlink: true }
  environment: { kind: cloud }
  constraints: { residency: EU }
---
apiVersion: v1
kind: NodeClass
metadata: { name: train-a100 }
spec:
  hardware: { gpu: A100-80G, gpuCount: 2, vramGB: 80, nvlink: true }
  environment: { kind: cloud }
  constraints: { residency: US }
---
apiVersion: v1
kind: Model
metadata: { name: m@1 }
"""  # noqa: E501

_names = itertools.count(1)
Status = dict[str, Any]


@dataclass
class SchedulerMesh:
    api: ApiServer
    project: str
    client: AsyncMeshClient
    fleet: SimulatedFleet
    cluster: LocalFleetCluster
    dask: Client
    service: SchedulerService
    store: EtcdStore
    tmp: Path
    services: list[tuple[SchedulerService, asyncio.Task[None], asyncio.Event]] = field(
        default_factory=list
    )

    def job(self, *, name: str | None = None, **spec: Any) -> dict[str, Any]:
        """A Job manifest: synthetic workload, checkpoints under tmp, fast steps by default."""
        name = name or f"job-{next(_names)}"
        body: dict[str, Any] = {
            "parallelism": {"dp": 1},
            "checkpoint": {"uri": f"file://{self.tmp / name}", "interval_steps": 10},
            "workload": {"steps": 40, "stepTimeMs": 20},
        } | spec
        return {
            "apiVersion": "v1",
            "kind": "Job",
            "metadata": {"name": name, "project": self.project},
            "spec": body,
        }

    async def submit(self, manifest: dict[str, Any]) -> str:
        await self.client.apply([manifest], project=self.project)
        return str(manifest["metadata"]["name"])

    async def status(self, name: str) -> Status:
        obj = await self.client.get("jobs", name, project=self.project)
        return dict(obj.get("status") or {})

    async def wait(
        self, name: str, check: Callable[[Status], bool], timeout: float = 60, what: str = ""
    ) -> Status:
        """Poll the job's status (through the API, as a user would) until `check` holds."""
        status: Status = {}
        try:
            async with asyncio.timeout(timeout):
                while True:
                    status = await self.status(name)
                    if check(status):
                        return status
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(
                f"job {name}: not {what or check} in {timeout}s: {status}"
            ) from None

    async def phase(self, name: str, *phases: str, timeout: float = 60) -> Status:
        return await self.wait(name, lambda s: s.get("phase") in phases, timeout, f"in {phases}")

    async def events(self, name: str) -> list[dict[str, Any]]:
        items = await self.client.events(project=self.project, kind="Job", name=name, limit=500)
        return list(items)

    async def reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in await self.events(name)]

    async def action(self, name: str, verb: str, body: dict[str, Any] | None = None) -> None:
        await self.client.action("jobs", name, verb, body or {}, project=self.project)

    async def delete_all(self) -> None:
        for obj in (await self.client.list("jobs", project=self.project)).items:
            with contextlib.suppress(Exception):
                await self.client.delete("jobs", obj["metadata"]["name"], project=self.project)
        async with asyncio.timeout(30):  # their gangs stopped: the GPUs are free again
            while any(s.placement is not None for s in self._states()):
                await asyncio.sleep(0.2)

    def _states(self) -> list[Any]:
        controller = self.service.controller
        return list(controller.states.values()) if controller else []

    async def standby(self, identity: str) -> SchedulerService:
        """Another scheduler instance on the same etcd and Dask cluster."""
        service = new_service(self.store, self.api.prefix, identity, lambda: self.cluster.address)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        self.services.append((service, task, stop))
        await service.watch()
        return service


def new_service(
    store: EtcdStore, prefix: str, identity: str, address: Callable[[], str]
) -> SchedulerService:
    async def connect() -> Client:
        return await Client(address(), asynchronous=True)

    settings = SchedulerSettings(identity=identity, status_interval_s=0.3, election_ttl_s=2)
    return SchedulerService(store, KeyLayout(prefix), settings, connect)


@contextlib.asynccontextmanager
async def scheduler_mesh(api: ApiServer, project: str, tmp: Path) -> AsyncIterator[SchedulerMesh]:
    path = tmp / "fleet.yaml"
    path.write_text(FLEET)
    async with EtcdStore(api.etcd.endpoints) as store:
        client = AsyncMeshClient(api.url, api.token, project=project)
        fleet = SimulatedFleet(
            load_fleet(path), store, client, project=project, etcd_prefix=api.prefix
        )
        cluster: LocalFleetCluster | None = None
        mesh: SchedulerMesh | None = None
        try:
            await fleet.start()
            service = new_service(store, api.prefix, "scheduler-a", lambda: cluster.address)
            await service.watch()
            async with asyncio.timeout(30):  # every agent has reported its GPUs
                while len(worker_nodes(service.nodes())) < len(fleet.nodes):
                    await asyncio.sleep(0.1)
            cluster = LocalFleetCluster(service.nodes)
            await cluster.start()  # a worker for each GPU node the agents report
            dask = await Client(cluster.address, asynchronous=True)
            stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop))
            mesh = SchedulerMesh(
                api,
                project,
                client,
                fleet,
                cluster,
                dask,
                service,
                store,
                tmp,
                [(service, task, stop)],
            )
            async with asyncio.timeout(30):
                await service.leading.wait()
            yield mesh
        finally:
            if mesh is not None:
                with contextlib.suppress(Exception):
                    await mesh.delete_all()
                for _, _, stopping in mesh.services:
                    stopping.set()
                await asyncio.gather(*(t for _, t, _ in mesh.services), return_exceptions=True)
                await mesh.dask.close()
            if cluster is not None:
                await cluster.close()
            await fleet.stop()
            await client.aclose()
