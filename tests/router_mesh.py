"""A small real mesh for router tests: the session API and etcd, a simulated fleet of its own and
a real router (aiohttp, in this process) in front of it.

The fleet: three EU H100 nodes and one US H100 serving `m@1`, one EU node serving the canary
`m@2`. Tests make their own endpoints and policies, so they stay independent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infermesh.agent.fleet import FleetNode, SimulatedFleet, load_fleet
from infermesh.client import AsyncMeshClient
from infermesh.router.server import serve_router
from infermesh.router.service import RouterSettings
from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import free_port
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer
from tests.inprocess_api import InProcessApi

FLEET = """
apiVersion: v1
kind: Fleet
metadata: { name: router-test }
spec:
  groups:
    - { name: eu, count: 3, nodeClass: h100, domain: eu-a, region: eu-west, zone: eu-west-1a, model: m@1, profile: H100 }
    - { name: us, count: 1, nodeClass: h100, domain: us-a, region: us-east, zone: us-east-1a, model: m@1, profile: H100 }
    - { name: canary, count: 1, nodeClass: h100, domain: eu-a, region: eu-west, zone: eu-west-1b, model: m@2, profile: H100 }
---
apiVersion: v1
kind: Domain
metadata: { name: eu-a }
spec: { residency: { region: EU } }
---
apiVersion: v1
kind: Domain
metadata: { name: us-a }
spec: { residency: { region: US } }
---
apiVersion: v1
kind: NodeClass
metadata: { name: h100 }
spec:
  hardware: { gpu: H100-80G, gpuCount: 1, vramGB: 80 }
  environment: { kind: cloud }
---
apiVersion: v1
kind: Model
metadata: { name: m@1 }
---
apiVersion: v1
kind: Model
metadata: { name: m@2 }
"""  # noqa: E501

_names = itertools.count(1)


@dataclass
class RouterMesh:
    api: ApiServer | InProcessApi
    project: str
    client: AsyncMeshClient
    fleet: SimulatedFleet
    url: str
    http: httpx.AsyncClient
    created: list[tuple[str, str]] = field(default_factory=list)

    def node(self, name: str) -> FleetNode:
        return next(n for n in self.fleet.nodes if n.name == name)

    async def endpoint(self, **spec: Any) -> str:
        """Create an endpoint (default: m@1 in eu-a, baseline_rr) and wait until the router
        sees it; returns its name."""
        name = f"ep-{next(_names)}"
        body = {
            "modelRef": "m@1",
            "domains": [{"name": "eu-a", "weight": 100}],
            "strategy": {"ref": "baseline_rr@1.0"},
            "auth": {"required": True},
        } | spec
        await self.client.apply([self.obj("Endpoint", name, body)])
        self.created.append(("endpoints", name))
        await self.wait_routable(name)
        return name

    async def policy(self, name: str, endpoint: str, **spec: Any) -> None:
        target = {"appliesTo": [{"kind": "Endpoint", "name": endpoint}]}
        await self.client.apply([self.obj("Policy", name, target | spec)])
        self.created.append(("policies", name))
        await asyncio.sleep(0.3)  # the router's watch brings it

    def obj(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": name, "project": self.project},
            "spec": spec,
        }

    async def wait_routable(self, name: str, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while (await self.chat(name, max_tokens=1)).status_code in (404, 503):
                await asyncio.sleep(0.1)

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api.token}",
            "X-InferMesh-Project": self.project,
            **extra,
        }

    async def chat(
        self,
        endpoint: str,
        *,
        max_tokens: int = 4,
        stream: bool = False,
        content: str = "hello",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
        return await self.http.post(
            f"/v1/endpoint/{endpoint}:invoke", json=body, headers=self.headers(**(headers or {}))
        )

    async def faults(self, node: str, **faults: Any) -> None:
        url = self.node(node).sim.url
        if faults:
            (await self.http.post(f"{url}/admin/faults", json=faults)).raise_for_status()
        else:
            (await self.http.delete(f"{url}/admin/faults")).raise_for_status()

    async def finished(self, node: str, reason: str | None = None) -> float:
        """How many requests the node's runtime finished (by finish reason), from its /metrics."""
        text = (await self.http.get(f"{self.node(node).sim.url}/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("vllm:request_success_total{") and (
                reason is None or f'finished_reason="{reason}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def reset(self) -> None:
        for kind, name in reversed(self.created):
            with contextlib.suppress(Exception):
                await self.client.delete(kind, name)
        self.created.clear()
        for node in self.fleet.nodes:
            if node.sim.running:
                await self.faults(node.name)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(re.search(rf'{k}="{re.escape(v)}"', line) for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.asynccontextmanager
async def router_mesh(
    api: ApiServer | InProcessApi,
    project: str,
    tmp: Path,
    *,
    time_scale: float = 0.1,
    settings: RouterSettings | None = None,
) -> AsyncIterator[RouterMesh]:
    """The fleet and a router on `api` (the session API, or one served from this process)."""
    path = tmp / "fleet.yaml"
    path.write_text(FLEET)
    async with EtcdStore(api.etcd.endpoints) as store:
        client = AsyncMeshClient(api.url, api.token, project=project)
        fleet = SimulatedFleet(
            load_fleet(path),
            store,
            client,
            project=project,
            etcd_prefix=api.prefix,
            time_scale=time_scale,
        )
        stop = asyncio.Event()
        port = free_port()
        router = None
        try:
            await fleet.start()
            router = asyncio.create_task(
                serve_router(
                    store,
                    KeyLayout(api.prefix),
                    settings or RouterSettings(name="test-router"),
                    "127.0.0.1",
                    port,
                    stop,
                    api_url=api.url,
                    token=api.token,
                )
            )
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                async with asyncio.timeout(20):
                    while True:
                        with contextlib.suppress(httpx.TransportError):
                            if (await http.get("/healthz")).status_code == 200:
                                break
                        await asyncio.sleep(0.1)
                yield RouterMesh(api, project, client, fleet, url, http)
        finally:
            stop.set()
            if router is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(router, 15)
            await fleet.stop()
            await client.aclose()
