"""The simulated fleet: runtimes and real agents in one process, against real etcd and the API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from infermesh.agent.fleet import SimulatedFleet, load_fleet, sized
from infermesh.agent.sim.server import start
from infermesh.agent.sim.simulator import SimConfig
from infermesh.agent.sim.wan import Location, Wan
from infermesh.client import AsyncMeshClient
from infermesh.errors import Invalid
from infermesh.store.etcd import EtcdStore
from tests.fixtures_api import ApiServer


def test_the_default_fleet_spans_three_domains_and_three_gpu_kinds() -> None:
    fleet = load_fleet()
    groups = fleet.spec.groups
    assert sum(g.count for g in groups) == 8
    assert {g.domain for g in groups} == {"edge-eu", "cloud-eu", "cloud-us"}
    assert {g.profile for g in groups} == {"H100", "A100", "L4"}
    kinds = {(o.kind, o.metadata.name) for o in fleet.objects}
    assert {("Domain", g.domain) for g in groups} <= kinds
    assert {("NodeClass", g.nodeClass) for g in groups} <= kinds
    assert [g.count for g in sized(fleet.spec, 13)] == [3, 2, 2, 2, 2, 2]


def test_a_bad_fleet_file_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("apiVersion: v1\nkind: Fleet\nmetadata: {name: f}\nspec: {groups: []}\n")
    with pytest.raises(Invalid, match="groups"):
        load_fleet(path)
    path.write_text("apiVersion: v1\nkind: Domain\nmetadata: {name: d}\nspec: {}\n")
    with pytest.raises(Invalid, match="exactly one 'kind: Fleet'"):
        load_fleet(path)


def busy(node: dict) -> bool:
    """Telemetry followed the load, through the agent, into the API."""
    gpus = node["status"].get("gpus") or [{}]
    return node["status"].get("inFlight", 0) > 0 and gpus[0].get("utilPct", 0) > 0


async def test_fleet_nodes_register_report_load_and_leave(api: ApiServer, project: str) -> None:
    async with EtcdStore(api.etcd.endpoints) as store:
        client = AsyncMeshClient(api.url, api.token, project=project)
        fleet = SimulatedFleet(
            load_fleet(),
            store,
            client,
            project=project,
            etcd_prefix=api.prefix,
            nodes=3,
        )
        try:
            await fleet.start()
            async with asyncio.timeout(15):  # the API's watch brings the agents' reports
                while len(nodes := (await client.list("nodes")).items) < 3:
                    await asyncio.sleep(0.1)
            assert sorted(n["metadata"]["name"] for n in nodes) == [
                "edge-h100-1",
                "edge-l4-1",
                "eu-h100-1",
            ]
            assert all(n["status"]["conditions"][0]["status"] == "True" for n in nodes)

            l4 = next(n for n in fleet.nodes if n.name == "edge-l4-1")
            async with httpx.AsyncClient(timeout=30) as http:
                body = {
                    "model": "chat-8b@fp16",
                    "max_tokens": 400,
                    "messages": [{"role": "user", "content": "hello " * 100}],
                }
                load = [
                    asyncio.create_task(http.post(f"{l4.sim.url}/v1/chat/completions", json=body))
                    for _ in range(8)
                ]
                try:
                    async with asyncio.timeout(30):
                        while not busy(await client.get("nodes", "edge-l4-1")):
                            await asyncio.sleep(0.2)
                finally:
                    for task in load:
                        task.cancel()
                    await asyncio.gather(*load, return_exceptions=True)
        finally:
            await fleet.stop()
            assert (await client.list("nodes")).items == []  # a clean stop removes the nodes
            await client.aclose()


def test_the_wan_prices_a_caller_by_the_link_between_it_and_the_node() -> None:
    wan = Wan(
        Location("edge-eu", "eu-west", "eu-west-1a"),
        {"edge-eu": "eu-west", "cloud-eu": "eu-central", "cloud-us": "us-east"},
    )
    assert wan.link_class(Location()) is None  # a caller that says nothing is local
    assert wan.link_class(Location(zone="eu-west-1a")) == "intra-zone"
    assert wan.link_class(Location(domain="edge-eu")) == "inter-zone"
    assert wan.link_class(Location(domain="cloud-us")) == "inter-region"
    assert wan.link_class(Location(domain="device-ios")) == "public"
    assert wan.delay_s(Location(domain="cloud-us")) == ("inter-region", 0.07)


async def test_a_request_from_another_region_pays_the_round_trip() -> None:
    wan = Wan(
        Location("cloud-us", "us-east", "us-east-1a"),
        {"edge-eu": "eu-west"},
        {"inter-region": 300.0},
    )
    sim = await start(SimConfig(model="m", profile="CPU", seed=1, wan=wan))
    try:
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as http:
            body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
            local = await http.post("/v1/chat/completions", json=body)
            assert "X-InferMesh-Link-Class" not in local.headers
            far = await http.post(
                "/v1/chat/completions", json=body, headers={"X-InferMesh-Client-Domain": "edge-eu"}
            )
            assert far.status_code == 200
            assert far.headers["X-InferMesh-Link-Class"] == "inter-region"
    finally:
        await sim.stop()


async def test_a_restarted_fleet_keeps_what_operators_changed(api: ApiServer, project: str) -> None:
    async with EtcdStore(api.etcd.endpoints) as store:
        client = AsyncMeshClient(api.url, api.token, project=project)

        def fleet() -> SimulatedFleet:
            return SimulatedFleet(
                load_fleet(), store, client, project=project, etcd_prefix=api.prefix, nodes=1
            )

        first = fleet()
        try:
            await first.start()
            model = (await client.get("endpoints", "chat-pro"))["spec"]["modelRef"]
            split = [{"modelRef": model, "weight": 90}, {"modelRef": "chat-70b@fp8", "weight": 10}]
            await client.action("endpoints", "chat-pro", "trafficSplit", {"split": split})
        finally:
            await first.stop()
        again = fleet()
        try:
            await again.start()  # its file's chat-pro has no split: it must not come back
            assert (await client.get("endpoints", "chat-pro"))["spec"]["trafficSplit"] == split
        finally:
            await again.stop()
            await client.aclose()
