"""The agent beside the runtime simulator, as in the simulated fleet: telemetry follows the load
applied to the runtime, an ECC fault injected into the simulator's GPU quarantines the node
through the API with an event naming the rule, and a crashed runtime makes the node not Ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from infermesh.agent.agent import Agent
from infermesh.agent.report import NodeReport
from infermesh.agent.sim.server import RunningSim, start
from infermesh.agent.sim.simulator import SimConfig
from infermesh.client import AsyncMeshClient
from infermesh.store.etcd import EtcdStore
from tests.fixtures_api import ApiServer
from tests.test_agent_service import api_node, config, stored, until

MODEL = "llama-3.1-8b@bf16"


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[RunningSim]:
    running = await start(SimConfig(model=MODEL, profile="H100", seed=7))
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def mesh(api: ApiServer, project: str) -> AsyncIterator[AsyncMeshClient]:
    async with AsyncMeshClient(api.url, api.token, project=project) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def agent(
    api: ApiServer, project: str, store: EtcdStore, mesh: AsyncMeshClient, sim: RunningSim
) -> AsyncIterator[Agent]:
    running = Agent(config(api.prefix, project, runtime_url=sim.url), store, mesh)
    await running.start()
    yield running
    await running.stop()


async def test_telemetry_follows_the_load_on_the_runtime(
    store: EtcdStore, sim: RunningSim, agent: Agent
) -> None:
    idle = await stored(store, agent.key)
    assert idle is not None and idle.runtime is not None and idle.runtime.healthy
    assert idle.runtime.models == [MODEL] and idle.gpus[0].utilPct < 50

    async def loaded() -> bool:
        report = await stored(store, agent.key)
        return (
            report is not None
            and report.runtime is not None
            and (report.runtime.generationTokensPerS or 0) > 0
            and report.gpus[0].utilPct > 50
        )

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 4000,  # longer than the test: the load lasts until it is called off
    }
    async with httpx.AsyncClient(base_url=sim.url, timeout=60) as http:
        requests = [
            asyncio.create_task(http.post("/v1/chat/completions", json=body)) for _ in range(8)
        ]
        try:
            await until(loaded, "tokens/s and GPU utilisation rise under load")
        finally:
            for request in requests:
                request.cancel()  # the simulator drops the work of a client that went away
            await asyncio.gather(*requests, return_exceptions=True)


async def test_an_injected_ecc_error_quarantines_the_node(
    store: EtcdStore, mesh: AsyncMeshClient, sim: RunningSim, agent: Agent
) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        (await http.post("/admin/faults", json={"ecc_dbe": 1})).raise_for_status()

    async def quarantined() -> bool:
        node = await api_node(mesh, agent.name)
        return bool(node and node["spec"].get("quarantine"))

    await until(quarantined, "the agent quarantines its node")
    node = await mesh.get("nodes", agent.name)
    reason = node["spec"]["quarantine"]["reason"]
    assert reason == (
        f"auto: rule ecc-dbe fired: GPU 0 {sim.simulator.gpu.uuid} volatile double-bit ECC errors 1"
    )
    events = await mesh.events(kind="Node", name=agent.name)
    assert any("rule ecc-dbe" in e["message"] for e in events)


async def test_a_crashed_runtime_makes_the_node_not_ready(
    store: EtcdStore, sim: RunningSim, agent: Agent
) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        await http.post("/admin/faults", json={"crash": True})

    async def not_ready() -> bool:
        report: NodeReport | None = await stored(store, agent.key)
        ready = report.condition("Ready") if report is not None else None
        return ready is not None and ready.status == "False" and ready.reason == "RuntimeUnhealthy"

    await until(not_ready, "the node reports its runtime unhealthy")
