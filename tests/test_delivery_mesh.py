"""Canary rollouts, burn-rate alerts and SLO degradation end to end: real traffic through a real
router to simulated runtimes, the real API (served from this process, so a test can run its SLO
evaluator and delivery controller at chosen times), real etcd and the real series store.

Traffic is real and timestamped now; the long windows are reached by running a pass at a later
`now` (the injectable clock), as the evaluator's and the controller's timers would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from infermesh.router.service import RouterSettings
from infermesh.store.delivery.controller import DeliveryPass
from infermesh.store.etcd_server import EmbeddedEtcd
from tests.inprocess_api import InProcessApi
from tests.router_mesh import RouterMesh, metric, router_mesh

pytestmark = pytest.mark.timeout(180)

SPLIT_25 = [{"modelRef": "m@1", "weight": 75}, {"modelRef": "m@2", "weight": 25}]
SPLIT_50 = [{"modelRef": "m@1", "weight": 50}, {"modelRef": "m@2", "weight": 50}]


@pytest.fixture(scope="module")
def mesh_api(
    etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApi]:
    api = InProcessApi(etcd, tmp_path_factory.mktemp("delivery") / "series.sqlite")
    yield api
    api.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mesh(
    mesh_api: InProcessApi, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RouterMesh]:
    project = f"d-{uuid.uuid4().hex[:8]}"
    # The router ships its SLI buckets every half second, so a pass soon sees what it served.
    settings = RouterSettings(name="delivery-test", ship_every_s=0.5)
    async with router_mesh(
        mesh_api, project, tmp_path_factory.mktemp("mesh"), settings=settings
    ) as m:
        yield m


async def traffic(mesh: RouterMesh, endpoint: str, n: int) -> list[int]:
    statuses = []
    for batch in range(0, n, 8):
        answers = await asyncio.gather(
            *(mesh.chat(endpoint, max_tokens=2) for _ in range(min(8, n - batch)))
        )
        statuses += [a.status_code for a in answers]
    return statuses


async def until_action(
    mesh: RouterMesh, api: InProcessApi, action: str, timeout: float = 20
) -> DeliveryPass:
    """Controller passes (at the real time) until one carries out `action`."""
    deadline = time.monotonic() + timeout
    while True:
        done = api.run(api.state.delivery.run_once())
        if action in done.actions:
            return done
        if time.monotonic() > deadline:
            name = action.split()[-1]
            status = (await endpoint(mesh, name)).get("status")
            raise AssertionError(f"no {action!r} within {timeout}s: {done}; {status}")
        await asyncio.sleep(0.5)


async def endpoint(mesh: RouterMesh, name: str) -> dict[str, Any]:
    return await mesh.client.get("endpoints", name)


async def events(mesh: RouterMesh, name: str) -> list[dict[str, Any]]:
    return list(await mesh.client.events(name=name, limit=50))


async def test_a_failing_canary_is_rolled_back_with_an_event(
    mesh: RouterMesh, mesh_api: InProcessApi
) -> None:
    name = await mesh.endpoint(trafficSplit=SPLIT_50)
    gate = {"metric": "error_rate", "threshold": 0.2}
    rollout = {"steps": [50, 100], "minRequests": 5, "failureGates": [gate]}
    await mesh.policy(f"{name}-rollout", name, rollout=rollout)
    canary = next(n.name for n in mesh.fleet.nodes if n.group.name == "canary")
    await mesh.faults(canary, error_rate=1.0)
    try:
        statuses = await traffic(mesh, name, 40)
        assert 502 in statuses and 200 in statuses  # the canary fails, its baseline serves
        await until_action(mesh, mesh_api, f"rollback {name}")
    finally:
        await mesh.faults(canary)
    ep = await endpoint(mesh, name)
    assert ep["spec"]["trafficSplit"] == []  # all traffic back on m@1
    status = ep["status"]["rollout"]
    assert status["phase"] == "RolledBack" and status["canary"] == "m@2"
    assert status["comparison"]["canary"]["error_rate"] == 1.0
    rolled = [e for e in await events(mesh, name) if e["reason"] == "CanaryRolledBack"]
    assert len(rolled) == 1 and rolled[0]["type"] == "Warning"
    assert rolled[0]["actor"] == "system:delivery"
    assert (
        "rolled back from 50% to 0%: error_rate 100.0% over its gate 20.0%"
        in (rolled[0]["message"])
    )
    # After the rollback nothing reaches the canary.
    answers = await traffic(mesh, name, 16)
    assert set(answers) == {200}
    await mesh.reset()


async def test_a_good_canary_is_promoted_step_by_step(
    mesh: RouterMesh, mesh_api: InProcessApi
) -> None:
    name = await mesh.endpoint(trafficSplit=SPLIT_25)
    # The canary's one node queues more than the baseline's three: a generous tolerance, so
    # the test is about stepping (a slower canary holds: tests/test_delivery.py).
    rollout = {
        "steps": [25, 50, 100],
        "stepIntervalSeconds": 0,
        "minRequests": 4,
        "tolerancePercent": 100,  # the most allowed: twice the baseline (+5 ms) is no worse
    }
    await mesh.policy(f"{name}-rollout", name, rollout=rollout)
    first = mesh_api.run(mesh_api.state.delivery.run_once())
    assert not first.actions  # the step has just begun: nothing judged yet
    await traffic(mesh, name, 40)
    await until_action(mesh, mesh_api, f"advance {name}")
    ep = await endpoint(mesh, name)
    assert ep["spec"]["trafficSplit"] == SPLIT_50
    assert ep["status"]["rollout"]["phase"] == "Progressing"
    assert ep["status"]["rollout"]["weight"] == 50
    await traffic(mesh, name, 40)
    await until_action(mesh, mesh_api, f"promote {name}")
    ep = await endpoint(mesh, name)
    assert ep["spec"]["modelRef"] == "m@2" and ep["spec"]["trafficSplit"] == []
    assert ep["status"]["rollout"]["phase"] == "Promoted"
    reasons = [e["reason"] for e in reversed(await events(mesh, name))]
    steps = [r for r in reasons if r.startswith("Canary")]
    assert steps == ["CanaryAdvanced", "CanaryPromoted"]
    audit = await mesh.client.audit(limit=50)
    mine = [a for a in audit if a.get("name") == name and a.get("actor") == "system:delivery"]
    assert {a.get("action") for a in mine} >= {"trafficSplit", "promote"}
    await mesh.reset()


async def test_a_page_alert_switches_hedging_on_and_off(
    mesh: RouterMesh, mesh_api: InProcessApi
) -> None:
    name = await mesh.endpoint(slo={"availability": 99.9})
    rules = [{"sloAlert": "page", "actions": ["hedge"]}]
    await mesh.policy(f"{name}-degrade", name, degrade={"rules": rules})
    eu = [n.name for n in mesh.fleet.nodes if n.group.name == "eu"]
    for node in eu:
        await mesh.faults(node, error_rate=0.5)
    statuses = await traffic(mesh, name, 48)
    for node in eu:
        await mesh.faults(node)
    assert 502 in statuses
    await asyncio.sleep(1.5)  # the router ships its buckets every 0.5 s
    t0 = time.time()
    slo = f"{name}-availability"

    def firing(now: float) -> set[str]:
        mesh_api.evaluate(now)
        status = mesh_api.client().get(f"/v1/slos/{slo}?project={mesh.project}").json()
        return {
            a["rule"] for a in status["status"]["alerts"] if a["firing"] and a["severity"] == "page"
        }

    assert firing(t0) == {"page-1h-5m", "page-6h-30m"}
    done = mesh_api.run(mesh_api.state.delivery.run_once(t0))
    assert done.events and done.events[0]["reason"] == "DegradeApplied"
    ep = await endpoint(mesh, name)
    assert ep["status"]["degrade"]["actions"] == ["hedge"]
    assert f"{slo}: page-1h-5m, page-6h-30m firing" in ep["status"]["degrade"]["reason"]

    # The router acts on it: every request now counts a hedge degradation.
    before = metric((await mesh.http.get("/metrics")).text, "infermesh_router_degraded_total")
    async with asyncio.timeout(10):
        while True:
            await traffic(mesh, name, 4)
            text = (await mesh.http.get("/metrics")).text
            if metric(text, "infermesh_router_degraded_total", endpoint=name) > before:
                break
            await asyncio.sleep(0.2)

    # Four minutes on, the 5m window still holds the errors: still paging, still hedging.
    assert "page-1h-5m" in firing(t0 + 240)
    # Past five minutes the 5m window is clean and its page resolves; the 30m window still
    # burns, so the 6h page fires on and hedging stays.
    assert firing(t0 + 330) == {"page-6h-30m"}
    held = mesh_api.run(mesh_api.state.delivery.run_once(t0 + 330))
    assert not held.events
    # Past thirty minutes no page fires: hedging is switched off, with an event.
    assert not firing(t0 + 1830)
    done = mesh_api.run(mesh_api.state.delivery.run_once(t0 + 1830))
    assert [e["reason"] for e in done.events] == ["DegradeReverted"]
    ep = await endpoint(mesh, name)
    assert not (ep["status"].get("degrade") or {}).get("actions")
    reasons = {e["reason"] for e in await events(mesh, slo)}
    assert {"SLOAlertFiring", "SLOAlertResolved"} <= reasons
    await mesh.reset()


async def test_a_split_changed_by_hand_shows_in_the_status_at_once(
    mesh: RouterMesh, mesh_api: InProcessApi
) -> None:
    name = await mesh.endpoint(trafficSplit=SPLIT_25)
    delivery = mesh_api.state.delivery
    interval, delivery.interval_s = delivery.interval_s, 3600.0  # no timer: only the change
    mesh_api.run(delivery.start())

    async def phase() -> str | None:
        return ((await endpoint(mesh, name))["status"].get("rollout") or {}).get("phase")

    try:
        async with asyncio.timeout(10):
            while await phase() != "Manual":  # a split without a rollout policy: shown
                await asyncio.sleep(0.2)
        await mesh.client.rollback(name)
        async with asyncio.timeout(10):
            while await phase() != "RolledBack":
                await asyncio.sleep(0.2)
    finally:
        mesh_api.run(delivery.stop())
        delivery.interval_s = interval
    await mesh.reset()
