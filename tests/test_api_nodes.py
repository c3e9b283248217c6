"""Nodes through the API: the operator's Node object merged with its agent's lease-bound report.

The report is written here the way an agent writes it (a put under the status prefix, bound to a
lease), so these tests pin the API's half of the contract in docs/architecture.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
from click.testing import CliRunner
from httpx_sse import ServerSentEvent

from infermesh.cli import main
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer
from tests.test_api_objects import wait_until
from tests.test_api_watch import events, take


def report(node_class: str = "cloud-h100", util: float = 10.0) -> dict:
    return {
        "agent": {"address": "127.0.0.1:9", "startedAt": "2026-11-22T10:00:00Z"},
        "facts": {
            "nodeClass": node_class,
            "gpu": "H100-80G",
            "gpuCount": 8,
            "domain": "cloud-eu",
            "region": "eu-west",
            "zone": "eu-west-1a",
        },
        "gpus": [{"index": 0, "uuid": "GPU-0", "utilPct": util, "tempC": 40}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "RuntimeHealthy"}],
        "inFlight": 0,
    }


class Agent:
    """Writes a node report as an agent does, from its own event loop."""

    def __init__(self, api: ApiServer, project: str, name: str) -> None:
        self.key = KeyLayout(api.prefix).status("nodes", project, name)
        self.endpoints = api.etcd.endpoints
        self.lease = 0

    async def _put(self, body: dict, ttl: int) -> None:
        async with EtcdStore(self.endpoints) as store:
            if not self.lease:
                self.lease = (await store.grant_lease(ttl)).id
            await store.put(self.key, json.dumps(body), lease=self.lease)

    def put(self, body: dict, ttl: int = 30) -> None:
        asyncio.run(self._put(body, ttl))

    def die(self) -> None:
        async def revoke() -> None:
            async with EtcdStore(self.endpoints) as store:
                await store.revoke_lease(self.lease)

        asyncio.run(revoke())


def names(c: httpx.Client, project: str) -> list[str]:
    return [
        n["metadata"]["name"]
        for n in c.get("/v1/nodes", params={"project": project}).json()["items"]
    ]


def test_a_reporting_node_is_listed_with_its_report_and_drops_out_with_its_lease(
    api: ApiServer, project: str
) -> None:
    agent = Agent(api, project, "gpu-1")
    agent.put(report())
    with api.client() as c:
        wait_until(lambda: names(c, project) == ["gpu-1"])
        node = c.get("/v1/nodes/gpu-1", params={"project": project}).json()
        assert node["spec"]["nodeClassRef"] == "cloud-h100"
        assert node["spec"]["domain"] == "cloud-eu"
        assert node["status"]["gpus"][0]["utilPct"] == 10.0
        assert node["status"]["conditions"][0]["type"] == "Ready"
        agent.die()
        wait_until(lambda: names(c, project) == [])
        assert c.get("/v1/nodes/gpu-1", params={"project": project}).status_code == 404


def test_operator_state_outlives_the_agent(api: ApiServer, project: str) -> None:
    agent = Agent(api, project, "gpu-2")
    agent.put(report())
    with api.client() as c:
        wait_until(lambda: names(c, project) == ["gpu-2"])
        # An action on a node only its agent knows creates its Node object.
        r = c.post(
            "/v1/nodes/gpu-2:quarantine",
            params={"project": project},
            json={"reason": "ECC double-bit errors"},
        )
        assert r.status_code == 200, r.text
        node = c.get("/v1/nodes/gpu-2", params={"project": project}).json()
        assert node["spec"]["quarantine"]["reason"] == "ECC double-bit errors"
        assert node["spec"]["nodeClassRef"] == "cloud-h100"
        assert node["status"]["gpus"][0]["utilPct"] == 10.0
        # Taking a node out of service is a Warning, so warnings-only views show it.
        found = c.get("/v1/events", params={"project": project, "name": "gpu-2"}).json()
        assert ("Quarantine", "Warning") in [(e["reason"], e["type"]) for e in found["items"]]

        agent.die()
        wait_until(
            lambda: (
                c.get("/v1/nodes/gpu-2", params={"project": project}).json()["status"][
                    "conditions"
                ][0]["reason"]
                == "AgentNotReporting"
            )
        )
        assert names(c, project) == ["gpu-2"]  # still known: it has operator state
        again = Agent(api, project, "gpu-2")
        again.put(report(util=55.0))
        wait_until(
            lambda: (
                c.get("/v1/nodes/gpu-2", params={"project": project})
                .json()["status"]
                .get("gpus", [{}])[0]
                .get("utilPct")
                == 55.0
            )
        )
        node = c.get("/v1/nodes/gpu-2", params={"project": project}).json()
        assert node["spec"]["quarantine"]["reason"] == "ECC double-bit errors"


def test_a_node_watch_sees_both_halves_in_order(api: ApiServer, project: str) -> None:
    agent = Agent(api, project, "gpu-3")
    with api.client() as c:
        stream: Iterator[ServerSentEvent] = events(c, "/v1/watch/nodes", {"project": project})
        assert [e.event for e in take(stream, 1)] == ["BOOKMARK"]
        agent.put(report(util=1.0))
        added = next(stream)
        assert added.event == "ADDED"
        assert json.loads(added.data)["status"]["gpus"][0]["utilPct"] == 1.0
        c.post("/v1/nodes/gpu-3:cordon", params={"project": project})
        cordoned = [json.loads(e.data) for e in take(stream, 2)]  # object created, then cordoned
        assert cordoned[-1]["spec"]["cordoned"] is True
        assert cordoned[-1]["status"]["gpus"][0]["utilPct"] == 1.0  # the report half is kept
        agent.put(report(util=77.0))
        moved = json.loads(next(stream).data)
        assert moved["spec"]["cordoned"] is True and moved["status"]["gpus"][0]["utilPct"] == 77.0
        stream.close()


def test_mesh_shows_gpu_columns_and_per_gpu_detail(api: ApiServer, project: str) -> None:
    body = report(util=63.0)
    body["gpus"][0] |= {
        "name": "H100-80G",
        "memUsedMiB": 40960,
        "memTotalMiB": 81920,
        "powerW": 400,
        "powerLimitW": 700,
        "eccVolatileDbe": 0,
    }
    Agent(api, project, "gpu-4").put(body)
    argv = ["--api", api.url, "--token", api.token, "-p", project]
    with api.client() as c:
        wait_until(lambda: names(c, project) == ["gpu-4"])
    listed = CliRunner().invoke(main, [*argv, "get", "nodes"])
    header, row = (line.split() for line in listed.stdout.splitlines())
    assert header[:8] == ["NAME", "DOMAIN", "CLASS", "GPUS", "UTIL", "VRAM", "TEMP", "IN-FLIGHT"]
    assert row[:8] == [
        "gpu-4",
        "cloud-eu",
        "cloud-h100",
        "1xH100-80G",
        "63%",
        "40/80Gi",
        "40C",
        "0",
    ]
    assert row[8] == "Ready"
    described = CliRunner().invoke(main, [*argv, "describe", "node", "gpu-4"]).stdout
    assert "[0] H100-80G | 40°C, 63 % | 40960 / 81920 MiB | 400 / 700 W | ECC 0/0" in described
