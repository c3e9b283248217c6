"""The console against the real API on real etcd: the fleet followed live (node reports written
into etcd as agents write them), every action confirmed in its dialog and carried out by the
API, errors shown, and the connection state when etcd and then the API go away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input

from infermesh.client import AsyncMeshClient
from infermesh.console.app import ConsoleApp
from infermesh.console.config import Settings
from infermesh.console.dialogs import ConfirmScreen, DrainScreen, ScaleScreen, SplitScreen
from infermesh.console.header import HeaderBar
from infermesh.console.source import MeshSource
from infermesh.errors import NotFound
from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer
from tests.test_console_pilot import SIZE, cell, command, names, until

Obj = dict[str, Any]


def report(util: float, gpus: int = 2) -> Obj:
    """A node report as an agent writes it (agent/report.py)."""
    return {
        "agent": {
            "address": "127.0.0.1:9",
            "version": "0.1.0",
            "startedAt": "2026-11-22T10:00:00Z",
            "leaseTtlSeconds": 5,
        },
        "facts": {
            "nodeClass": "cloud-h100",
            "gpu": "H100-80G",
            "gpuCount": gpus,
            "domain": "cloud-eu",
            "region": "eu-central",
            "zone": "eu-central-1a",
        },
        "gpus": [
            {
                "index": i,
                "uuid": f"GPU-{i}",
                "name": "H100-80G",
                "utilPct": util,
                "memUsedMiB": 40000,
                "memTotalMiB": 81559,
                "tempC": 50.0,
                "powerW": 300.0,
                "powerLimitW": 700.0,
            }
            for i in range(gpus)
        ],
        "runtime": {
            "kind": "vllm",
            "url": "http://127.0.0.1:9",
            "healthy": True,
            "models": ["chat-70b@q4_k_m"],
        },
        "inFlight": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "RuntimeHealthy"}],
        "heartbeat": "2026-11-22T10:00:01Z",
    }


class Agents:
    """Node reports in etcd, bound to one lease, as agents keep them."""

    def __init__(self, store: EtcdStore, api: ApiServer, project: str) -> None:
        self.store, self.keys, self.project = store, KeyLayout(api.prefix), project
        self.lease = 0

    async def report(self, name: str, util: float) -> None:
        if not self.lease:
            self.lease = (await self.store.grant_lease(60)).id
        key = self.keys.status("nodes", self.project, name)
        await self.store.put(key, json.dumps(report(util)), lease=self.lease)

    async def die(self) -> None:
        await self.store.revoke_lease(self.lease)
        self.lease = 0


@pytest_asyncio.fixture(loop_scope="session")
async def agents(store: EtcdStore, api: ApiServer, project: str) -> AsyncIterator[Agents]:
    fleet = Agents(store, api, project)
    yield fleet
    if fleet.lease:
        await fleet.die()


@pytest_asyncio.fixture(loop_scope="session")
async def client(api: ApiServer, project: str) -> AsyncIterator[AsyncMeshClient]:
    async with AsyncMeshClient(api.url, api.token, project=project) as c:
        yield c


def api_app(api: ApiServer, project: str, **settings: Any) -> ConsoleApp:
    config = Settings(api_url=api.url, token=api.token, project=project, context="test", **settings)
    return ConsoleApp(
        MeshSource(AsyncMeshClient(api.url, api.token, project=project)), config=config
    )


def spec_of(app: ConsoleApp, kind: str, key: str) -> Obj:
    return (app.state.objects.get(kind, {}).get(key) or {}).get("spec") or {}


async def act(pilot: Pilot[Any], key: str, row: str | None = None) -> ConfirmScreen:
    """Press an action's key (on `row`) and return its dialog, checking Cancel has the focus."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    if row is not None:
        table = app.browser.table
        assert table is not None
        table.move_cursor(row=table.get_row_index(row))
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), f"the dialog of {key}")
    assert app.focused is not None and app.focused.id == "cancel"
    assert isinstance(app.screen, ConfirmScreen)
    return app.screen


async def fill(pilot: Pilot[Any], dialog: ConfirmScreen, **values: str) -> None:
    for ident, value in values.items():
        dialog.query_one(f"#{ident}", Input).value = value
    await pilot.pause()


async def confirm(pilot: Pilot[Any], dialog: ConfirmScreen) -> None:
    assert not dialog.query_one("#confirm", Button).disabled, dialog.problem()
    await pilot.click("#confirm")
    await until(pilot, lambda: pilot.app.screen is not dialog, "the dialog closed")


async def test_the_fleet_is_followed_live(api: ApiServer, project: str, agents: Agents) -> None:
    await agents.report("gpu-a", 10.0)
    app = api_app(api, project)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "gpu-a" in names(app), "gpu-a listed")
        assert cell(app, f"{project}/gpu-a", "util") == "10%"
        assert cell(app, f"{project}/gpu-a", "status") == "Ready"
        assert app.browser.query_one(HeaderBar).link == "live"
        await agents.report("gpu-a", 77.0)
        await agents.report("gpu-b", 5.0)
        await until(pilot, lambda: cell(app, f"{project}/gpu-a", "util") == "77%", "util 77%")
        await until(pilot, lambda: names(app) == ["gpu-a", "gpu-b"], "gpu-b listed")
        await agents.die()  # agents gone, nobody acted on the nodes: they leave the list
        await until(pilot, lambda: names(app) == [], "the nodes gone")


async def test_node_actions_are_confirmed_and_carried_out(
    api: ApiServer, project: str, agents: Agents, client: AsyncMeshClient
) -> None:
    await agents.report("gpu-a", 20.0)
    await agents.report("gpu-b", 30.0)
    a, b = f"{project}/gpu-a", f"{project}/gpu-b"
    app = api_app(api, project)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: names(app) == ["gpu-a", "gpu-b"], "both nodes")

        await act(pilot, "c", a)
        await pilot.press("enter")  # a stray enter hits Cancel: nothing happens
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "cancelled")
        await confirm(pilot, await act(pilot, "c", a))  # the cordon that goes through
        await until(pilot, lambda: spec_of(app, "nodes", a).get("cordoned"), "gpu-a cordoned")
        cordons = [e for e in app.state.objects["events"].values() if e["reason"] == "Cordon"]
        assert len(cordons) == 1  # one cordon: the cancelled one never reached the API
        await until(pilot, lambda: "Cordoned" in cell(app, a, "status"), "the status shows it")
        await confirm(pilot, await act(pilot, "u", a))
        await until(pilot, lambda: not spec_of(app, "nodes", a).get("cordoned"), "uncordoned")

        drain = await act(pilot, "r", a)
        assert isinstance(drain, DrainScreen)
        await fill(pilot, drain, timeout="120")
        assert drain.query_one("#confirm", Button).disabled  # the name is not typed yet
        await pilot.click("#force")
        await fill(pilot, drain, typed="gpu-a")
        assert drain.query_one("#force", Checkbox).value
        await confirm(pilot, drain)
        await until(pilot, lambda: spec_of(app, "nodes", a).get("drain"), "gpu-a draining")
        assert spec_of(app, "nodes", a)["drain"] | {"requestedAt": "", "actor": ""} == {
            "reason": "",
            "timeoutSeconds": 120,
            "force": True,
            "requestedAt": "",
            "actor": "",
        }

        quarantine = await act(pilot, "Q", b)
        await fill(pilot, quarantine, typed="gpu-b")
        assert quarantine.query_one("#confirm", Button).disabled  # a reason is required
        await fill(pilot, quarantine, reason="ECC double-bit errors")
        await confirm(pilot, quarantine)
        await until(pilot, lambda: "Quarantined" in cell(app, b, "status"), "gpu-b quarantined")
        node = await client.get("nodes", "gpu-b")
        assert node["spec"]["quarantine"]["reason"] == "ECC double-bit errors"

        await command(pilot, "ev")  # the API's event, followed live
        await until(
            pilot,
            lambda: any(
                "quarantined by" in r[-1] and "gpu-b" in r[-1]
                for r in app.browser.table.visible_rows()
            ),  # type: ignore[union-attr]
            "the quarantine's event",
        )
        await command(pilot, "no")
        unquarantine = await act(pilot, "U", b)
        await fill(pilot, unquarantine, reason="GPU replaced")
        await confirm(pilot, unquarantine)
        await until(pilot, lambda: "quarantine" not in spec_of(app, "nodes", b), "lifted")

        await confirm(pilot, await act(pilot, "U", a))  # gpu-a is not quarantined: refused
        await until(
            pilot,
            lambda: any(
                "is not quarantined" in n.message and n.severity == "error"
                for n in app._notifications
            ),
            "the API's error, notified",
        )
        await until(
            pilot,
            lambda: any(
                e.get("reason") == "ActionFailed" and "is not quarantined" in e["message"]
                for e in app.state.objects["events"].values()
            ),
            "the error in the events",
        )

        app.browser.table.move_cursor(row=0)  # type: ignore[union-attr]
        await pilot.press("space", "space")  # both nodes marked: one cordon for both
        cordon = await act(pilot, "c")
        assert "gpu-a, gpu-b" in str(cordon.query_one("#title").render())
        await confirm(pilot, cordon)
        await until(
            pilot,
            lambda: all(spec_of(app, "nodes", k).get("cordoned") for k in (a, b)),
            "both cordoned",
        )


async def test_endpoint_split_promote_and_rollback(
    api: ApiServer, project: str, client: AsyncMeshClient
) -> None:
    await client.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Endpoint",
                "metadata": {"name": "chat-pro"},
                "spec": {
                    "modelRef": "chat-70b@q4_k_m",
                    "domains": [
                        {"name": "edge-eu", "weight": 60},
                        {"name": "cloud-eu", "weight": 40},
                    ],
                },
            }
        ]
    )
    key = f"{project}/chat-pro"
    app = api_app(
        api,
        project,
    )
    async with app.run_test(size=SIZE) as pilot:
        await command(pilot, "ep")
        await until(pilot, lambda: names(app) == ["chat-pro"], "the endpoint")
        assert cell(app, key, "rollout") == "-"  # no rollout status: nothing to show

        split = await act(pilot, "percent_sign", key)
        assert isinstance(split, SplitScreen)
        await fill(pilot, split, split="q4_k_m=80 fp8=30")
        assert "add up to 110" in str(split.query_one("#problem").render())
        await fill(pilot, split, split="q4_k_m=80 fp8=20")
        preview = split.query_one("#preview").render()
        assert "chat-70b@fp8" in str(preview) or split.problem() is None
        await confirm(pilot, split)
        await until(pilot, lambda: spec_of(app, "endpoints", key).get("trafficSplit"), "split")
        assert spec_of(app, "endpoints", key)["trafficSplit"] == [
            {"modelRef": "chat-70b@q4_k_m", "weight": 80},
            {"modelRef": "chat-70b@fp8", "weight": 20},
        ]
        await until(pilot, lambda: cell(app, key, "split") == "q4_k_m=80,fp8=20", "the cell")

        await confirm(pilot, await act(pilot, "P", key))
        await until(
            pilot, lambda: spec_of(app, "endpoints", key)["modelRef"] == "chat-70b@fp8", "promoted"
        )
        assert spec_of(app, "endpoints", key)["trafficSplit"] == []

        split = await act(pilot, "percent_sign", key)
        await fill(pilot, split, split="fp8=90 q4_k_m=10")
        await confirm(pilot, split)
        await until(pilot, lambda: spec_of(app, "endpoints", key)["trafficSplit"], "canary")
        rollback = await act(pilot, "R", key)
        await fill(pilot, rollback, typed="chat-pr")
        assert rollback.query_one("#confirm", Button).disabled
        await fill(pilot, rollback, typed="chat-pro")
        await confirm(pilot, rollback)
        await until(
            pilot, lambda: spec_of(app, "endpoints", key)["trafficSplit"] == [], "rolled back"
        )
        assert (await client.get("endpoints", "chat-pro"))["spec"]["modelRef"] == "chat-70b@fp8"


async def test_job_pause_resume_scale_checkpoint_and_kill(
    api: ApiServer, project: str, client: AsyncMeshClient
) -> None:
    await client.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Job",
                "metadata": {"name": "ft-news"},
                "spec": {
                    "parallelism": {"dp": 1, "tp": 2, "pp": 2},
                    "elastic": {"min_gpus": 4, "max_gpus": 8},
                },
            }
        ]
    )
    key = f"{project}/ft-news"
    app = api_app(api, project)
    async with app.run_test(size=SIZE) as pilot:
        await command(pilot, "jobs")
        await until(pilot, lambda: names(app) == ["ft-news"], "the job")
        assert cell(app, key, "gpus") == "0 [4-8]"

        await confirm(pilot, await act(pilot, "p", key))
        await until(pilot, lambda: spec_of(app, "jobs", key).get("paused") is True, "paused")
        await confirm(pilot, await act(pilot, "u", key))
        await until(pilot, lambda: spec_of(app, "jobs", key).get("paused") is False, "resumed")

        scale = await act(pilot, "s", key)
        assert isinstance(scale, ScaleScreen)
        await fill(pilot, scale, gpus="12")
        assert "outside the elastic range 4..8" in str(scale.query_one("#problem").render())
        await fill(pilot, scale, gpus="8")
        await confirm(pilot, scale)
        await until(pilot, lambda: spec_of(app, "jobs", key).get("targetGpus") == 8, "scaled")
        await until(pilot, lambda: cell(app, key, "gpus") == "0->8 [4-8]", "the cell")

        await confirm(pilot, await act(pilot, "k", key))
        await until(
            pilot,
            lambda: spec_of(app, "jobs", key).get("checkpointRequests") == 1,
            "checkpoint asked",
        )

        kill = await act(pilot, "ctrl+k", key)
        await fill(pilot, kill, typed="ft-news")
        await confirm(pilot, kill)
        await until(pilot, lambda: names(app) == [], "the job gone")
        with pytest.raises(NotFound):
            await client.get("jobs", "ft-news")


@pytest.fixture
def mesh(private_etcd: EmbeddedEtcd, start_api: Callable[..., ApiServer]) -> Iterator[ApiServer]:
    yield start_api(private_etcd)


async def test_a_lost_connection_is_shown_and_recovers(
    mesh: ApiServer, private_etcd: EmbeddedEtcd
) -> None:
    app = api_app(mesh, "default")
    async with app.run_test(size=SIZE) as pilot:
        header = app.browser.query_one(HeaderBar)
        await until(pilot, lambda: header.link == "live", "live")
        await asyncio.to_thread(private_etcd.stop)
        await until(pilot, lambda: header.link == "stale", "stale while etcd is down")
        assert "stale" in str(header.render())
        await asyncio.to_thread(private_etcd.start)
        await until(pilot, lambda: header.link == "live", "live again", timeout=30)
        async with AsyncMeshClient(mesh.url, mesh.token) as c:  # the watch resumed
            await c.apply(
                [{"apiVersion": "v1", "kind": "Domain", "metadata": {"name": "after"}, "spec": {}}]
            )
        await command(pilot, "domains")
        await until(pilot, lambda: names(app) == ["after"], "a change after the outage")
        await asyncio.to_thread(mesh.stop)
        await until(pilot, lambda: header.link == "lost", "lost without the API")
        assert "API unreachable" in str(header.render())


async def test_a_refused_token_is_shown(api: ApiServer, project: str) -> None:
    config = Settings(api_url=api.url, token="imt_not-a-token", project=project, context="test")
    client = AsyncMeshClient(api.url, "imt_not-a-token", project=project)
    app = ConsoleApp(MeshSource(client), config=config)
    async with app.run_test(size=SIZE) as pilot:
        header = app.browser.query_one(HeaderBar)
        await until(pilot, lambda: header.link == "refused", "the refusal shown")
        assert "refused by the API" in str(header.render())
        await pilot.pause(1.2)  # a health probe later (the API itself is up): still refused
        assert header.link == "refused"
