"""The agent against real etcd, the real control-plane API and a real HTTP runtime: it
registers under its lease with its NodeClass's facts, drops out when it stops or dies, comes
back after a restart or a lost lease, writes only on change or at the max interval, obeys
cordon, drain and quarantine, and quarantines its node on its own when a rule fires."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from infermesh.agent.agent import Agent, AgentConfig, FactOverrides
from infermesh.agent.conditions import Deadband
from infermesh.agent.feed import SpecFeed
from infermesh.agent.lease import LeaseKeeper
from infermesh.agent.metrics import agent_registry
from infermesh.agent.report import NodeReport
from infermesh.client import AsyncMeshClient
from infermesh.errors import MeshError, NotFound
from infermesh.store.etcd import EtcdStore
from infermesh.store.etcd_server import EmbeddedEtcd
from infermesh.store.keys import KeyLayout
from tests.fixtures_api import ApiServer
from tests.test_agent_runtime_adapter import MODEL, CannedRuntime, vllm_page

StartAgent = Callable[..., Awaitable[Agent]]

NODE_CLASS = {
    "apiVersion": "v1",
    "kind": "NodeClass",
    "metadata": {"name": "cloud-h100", "labels": {"tier": "gold"}},
    "spec": {
        "hardware": {"gpu": "H100-80G", "gpuCount": 8, "vramGB": 80, "nvlink": True},
        "environment": {
            "kind": "cloud",
            "provider": "aws",
            "region": "eu-west-1",
            "zone": "eu-west-1a",
        },
        "network": {"linkClasses": ["intra-zone", "inter-zone"]},
        "constraints": {"spot": True, "residency": "EU"},
    },
}


async def api_node(mesh: AsyncMeshClient, name: str) -> dict | None:
    """The node as the API serves it; None until the API's watch has seen its first report."""
    try:
        return await mesh.get("nodes", name)
    except NotFound:
        return None


async def served(mesh: AsyncMeshClient, name: str) -> dict:
    """The node, once the API serves it."""

    async def known() -> bool:
        return await api_node(mesh, name) is not None

    await until(known, f"the API serves node {name}")
    return await mesh.get("nodes", name)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    """Wait for an outcome, failing after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def stored(store: EtcdStore, key: str) -> NodeReport | None:
    kv = await store.get(key)
    return NodeReport.from_json(kv.value) if kv is not None else None


def config(prefix: str, project: str, node: str = "n1", **fields: Any) -> AgentConfig:
    base: dict[str, Any] = {
        "node": node,
        "project": project,
        "etcd_prefix": prefix.rstrip("/"),
        "gpu_source": "simulated",
        "scrape_interval_s": 0.1,
        "lease_ttl_s": 2,
        "http_port": None,
        "facts": FactOverrides(gpu="H100", gpu_count=1),
    }
    return AgentConfig(**(base | fields))


@pytest.fixture
def runtime() -> Iterator[CannedRuntime]:
    server = CannedRuntime()
    server.metrics = vllm_page()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def start_agent(store: EtcdStore) -> AsyncIterator[StartAgent]:
    """Start agents on the session etcd; all are stopped after the test."""
    started: list[Agent] = []

    async def start(cfg: AgentConfig, client: AsyncMeshClient | None = None) -> Agent:
        agent = Agent(cfg, store, client)
        await agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        await agent.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def mesh(api: ApiServer, project: str) -> AsyncIterator[AsyncMeshClient]:
    async with AsyncMeshClient(api.url, api.token, project=project) as client:
        yield client


# registration -------------------------------------------------------------------------------


async def test_registers_with_nodeclass_facts_and_a_clean_stop_removes_it(
    api: ApiServer,
    project: str,
    store: EtcdStore,
    mesh: AsyncMeshClient,
    runtime: CannedRuntime,
    start_agent: StartAgent,
) -> None:
    await mesh.create(NODE_CLASS)
    cfg = config(
        api.prefix,
        project,
        node_class="cloud-h100",
        runtime_url=runtime.url,
        facts=FactOverrides(zone="eu-west-1b", domain="cloud-eu", price_per_gpu_hour=2.5),
    )
    agent = await start_agent(cfg)

    report = await stored(store, agent.key)
    assert report is not None
    facts = report.facts
    assert (facts.nodeClass, facts.gpu, facts.gpuCount, facts.vramGB) == (
        "cloud-h100",
        "H100-80G",
        8,
        80,
    )
    assert (facts.environment, facts.provider, facts.region) == ("cloud", "aws", "eu-west-1")
    assert facts.zone == "eu-west-1b"  # the flag beats the class
    assert (facts.domain, facts.pricePerGpuHour, facts.spot, facts.residency) == (
        "cloud-eu",
        2.5,
        True,
        "EU",
    )
    assert facts.nvlink and facts.linkClasses == ["intra-zone", "inter-zone"]
    assert len(report.gpus) == 8 and report.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert report.runtime is not None and report.runtime.healthy
    assert report.runtime.models == [MODEL]
    assert report.is_true("Ready") and report.agent.leaseTtlSeconds >= 2

    kv = await store.get(agent.key)
    assert kv is not None and kv.lease != 0  # bound to the agent's lease

    # The API serves the node from the report alone (once its watch has brought it).
    node = await served(mesh, "n1")
    assert node["spec"]["nodeClassRef"] == "cloud-h100"
    assert node["status"]["facts"]["zone"] == "eu-west-1b"

    await agent.stop()
    assert await store.get(agent.key) is None


async def test_a_killed_agent_process_drops_out_and_a_restart_registers_again(
    etcd: EmbeddedEtcd, store: EtcdStore, etcd_prefix: str, tmp_path: Path
) -> None:
    prefix = etcd_prefix.rstrip("/")
    key = KeyLayout(prefix).status("nodes", "default", "edge-1")
    argv = [
        *(sys.executable, "-m", "infermesh", "agent"),
        *("--etcd", etcd.endpoint, "--etcd-prefix", prefix, "--node", "edge-1"),
        *("--gpu-source", "simulated", "--gpu", "L4", "--gpu-count", "1", "--lease-ttl", "2"),
        *("--scrape-interval", "0.2", "--no-http"),
    ]
    env = {**os.environ, "INFERMESH_HOME": str(tmp_path)}

    def launch(log: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log).open("wb") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    async def registered() -> bool:
        return await store.get(key) is not None

    async def gone() -> bool:
        return await store.get(key) is None

    first = launch("first.log")
    try:
        await until(registered, "the agent process registers")
        report = await stored(store, key)
        assert report is not None and report.agent.leaseTtlSeconds == 2
        first.kill()  # no clean stop: nothing revokes its lease
        first.wait()
        await until(gone, "the node drops out with its lease")

        second = launch("second.log")
        try:
            await until(registered, "the restarted agent registers again")
            second.send_signal(signal.SIGTERM)  # a clean stop removes the node at once
            assert second.wait(10) == 0
            assert await store.get(key) is None
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


async def test_a_lost_lease_is_granted_again_and_the_node_registers_again(
    store: EtcdStore, etcd_prefix: str, project: str, start_agent: StartAgent
) -> None:
    agent = await start_agent(config(etcd_prefix, project))
    kv = await store.get(agent.key)
    assert kv is not None
    await store.revoke_lease(kv.lease)  # as if etcd had lost it during an outage

    async def back_with_a_new_lease() -> bool:
        again = await store.get(agent.key)
        return again is not None and again.lease not in (0, kv.lease)

    await until(back_with_a_new_lease, "the agent registers under a new lease")


async def test_a_blocked_event_loop_is_reported_and_the_lease_outlives_it(
    store: EtcdStore, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    lease = LeaseKeeper(store, 6)  # refreshed every 2 s
    await lease.start()
    try:
        granted = lease.lease_id
        await asyncio.sleep(0.5)
        time.sleep(3.1)  # a loop too busy to wake anyone: a refresh falls due meanwhile
        await asyncio.sleep(2.5)  # a refresh or two more, as the loop runs again

        assert lease.lease_id == granted and lease.epoch == 1
        assert granted is not None
        await store.put(f"{etcd_prefix}alive", b"", lease=granted)  # refused if it had expired
        assert any("event loop" in r.getMessage() for r in caplog.records)
    finally:
        await lease.stop()


async def test_an_agent_stopped_without_revoking_expires_with_its_lease(
    store: EtcdStore, etcd_prefix: str, project: str
) -> None:
    agent = Agent(config(etcd_prefix, project), store, None)
    await agent.start()
    await agent.stop(revoke=False)  # how a fleet kills one of its agents

    async def gone() -> bool:
        return await store.get(agent.key) is None

    await until(gone, "the report expires with the lease")


async def test_the_node_stays_registered_through_an_etcd_restart_longer_than_its_ttl(
    private_etcd: EmbeddedEtcd,
) -> None:
    async with EtcdStore(private_etcd.endpoints, timeout=1) as store:
        cfg = config("/outage", "default", deadband=Deadband(max_interval_s=1))
        agent = Agent(cfg, store, None)
        await agent.start()
        try:
            before = await store.get(agent.key)
            assert before is not None
            private_etcd.stop()
            await asyncio.sleep(4)  # the outage: longer than the 2 s lease TTL
            private_etcd.start()

            async def reporting_again() -> bool:
                with contextlib.suppress(MeshError):  # the client reconnects within a second
                    now = await store.get(agent.key)
                    return now is not None and now.mod_revision > before.mod_revision
                return False

            await until(reporting_again, "the agent writes its report again")
            # etcd kept (and renewed) the lease through its restart: the node never went away.
            now = await store.get(agent.key)
            assert now is not None and now.lease == before.lease
        finally:
            await agent.stop()


async def test_a_fleet_shares_one_feed_and_lease(
    api: ApiServer,
    project: str,
    store: EtcdStore,
    mesh: AsyncMeshClient,
    runtime: CannedRuntime,
) -> None:
    feed = SpecFeed(store, KeyLayout(api.prefix), project)
    lease = LeaseKeeper(store, 5)
    await feed.start()
    await lease.start()
    agents = [
        Agent(
            config(api.prefix, project, node=f"n{i}", runtime_url=runtime.url),
            store,
            mesh,
            feed=feed,
            lease=lease,
        )
        for i in range(20)
    ]
    await asyncio.gather(*(a.start() for a in agents))
    try:

        async def all_listed() -> bool:  # the API serves nodes from its watch of etcd
            listed = await mesh.list("nodes")
            return sorted(n["metadata"]["name"] for n in listed.items) == sorted(
                a.name for a in agents
            )

        await until(all_listed, "the API lists every node of the fleet")
        await mesh.action("nodes", "n3", "cordon")

        async def only_n3_cordoned() -> bool:
            return [a.name for a in agents if a.report and a.report.is_true("Cordoned")] == ["n3"]

        await until(only_n3_cordoned, "n3 alone is cordoned")
        page = generate_latest(agent_registry(lambda: agents)).decode()
        assert page.count("infermesh_node_ready{") == 20

        await agents[5].stop()  # one agent of the fleet stops: its node alone goes
        assert await store.get(agents[5].key) is None
        assert all([await store.get(a.key) for a in agents if a is not agents[5]])
    finally:
        for agent in agents:
            await agent.stop()
    await lease.stop()
    await feed.stop()


# writes -------------------------------------------------------------------------------------


async def test_nothing_is_written_while_nothing_changes_and_a_change_is_written_soon(
    store: EtcdStore,
    etcd_prefix: str,
    project: str,
    runtime: CannedRuntime,
    start_agent: StartAgent,
) -> None:
    cfg = config(
        etcd_prefix,
        project,
        runtime_url=runtime.url,
        scrape_interval_s=0.05,
        deadband=Deadband(min_interval_s=0, max_interval_s=60),
    )
    agent = await start_agent(cfg)
    kv = await store.get(agent.key)
    assert kv is not None

    async def scraped_a_lot() -> bool:
        return agent.stats.scrapes >= 20

    await until(scraped_a_lot, "20 scrapes")
    assert agent.stats.writes == 1  # the registration only
    again = await store.get(agent.key)
    assert again is not None and again.mod_revision == kv.mod_revision

    runtime.metrics = vllm_page(running=3, waiting=1, kv=0.3)

    async def load_reported() -> bool:
        report = await stored(store, agent.key)
        return report is not None and report.runtime is not None and report.runtime.running == 3

    await until(load_reported, "the new load is written")
    report = await stored(store, agent.key)
    assert report is not None and report.inFlight == 4
    assert report.gpus[0].utilPct > 0 and report.gpus[0].memUsedMiB > 0
    assert set(agent.stats.writes_by_reason) <= {"register", "requests", "util", "temperature"}


async def test_an_unchanged_report_is_rewritten_at_the_max_interval(
    store: EtcdStore, etcd_prefix: str, project: str, start_agent: StartAgent
) -> None:
    cfg = config(etcd_prefix, project, deadband=Deadband(max_interval_s=0.3))
    agent = await start_agent(cfg)
    first = await stored(store, agent.key)
    assert first is not None

    async def rewritten_twice() -> bool:
        return agent.stats.writes_by_reason.get("interval", 0) >= 2

    await until(rewritten_twice, "two interval writes")
    latest = await stored(store, agent.key)
    assert latest is not None and latest.heartbeat > first.heartbeat
    assert set(agent.stats.writes_by_reason) == {"register", "interval"}


async def test_metrics_and_healthz_on_the_agents_own_port(
    store: EtcdStore,
    etcd_prefix: str,
    project: str,
    runtime: CannedRuntime,
    start_agent: StartAgent,
) -> None:
    runtime.metrics = vllm_page(running=2, waiting=1, kv=0.5)
    facts = FactOverrides(gpu="A100", gpu_count=2, zone="us-east-1a")
    cfg = config(etcd_prefix, project, node="m1", runtime_url=runtime.url, http_port=0, facts=facts)
    agent = await start_agent(cfg)
    assert agent.address is not None
    report = await stored(store, agent.key)
    assert report is not None and report.agent.address == agent.address
    async with httpx.AsyncClient(base_url=f"http://{agent.address}") as http:
        text = (await http.get("/metrics")).text
        health = (await http.get("/healthz")).json()
        missing = await http.get("/nope")
        not_allowed = await http.post("/metrics")
    uuid = report.gpus[0].uuid
    gpu = {"node": "m1", "gpu_uuid": uuid, "mig_profile": "", "zone": "us-east-1a"}
    node = {"node": "m1", "zone": "us-east-1a"}
    model = {**node, "model": MODEL, "revision": "", "quant": "", "runtime": "vllm"}
    assert sample(text, "infermesh_gpu_memory_total_bytes", gpu) == int(79.2 * 1024) * 2**20
    assert sample(text, "infermesh_gpu_utilization_ratio", gpu) >= 0
    assert sample(text, "infermesh_gpu_temperature_celsius", gpu) > 20
    assert sample(text, "infermesh_gpu_power_watts", gpu) >= 60
    assert sample(text, "infermesh_gpu_ecc_volatile_errors_total", {**gpu, "type": "dbe"}) == 0
    assert sample(text, "infermesh_node_ready", node) == 1
    assert sample(text, "infermesh_node_in_flight_requests", node) == 3
    assert sample(text, "infermesh_node_condition", {**node, "condition": "Cordoned"}) == 0
    assert sample(text, "infermesh_model_requests_running", model) == 2
    assert sample(text, "infermesh_model_requests_waiting", model) == 1
    assert sample(text, "infermesh_model_kv_cache_usage_ratio", model) == 0.5
    assert sample(text, "infermesh_agent_status_writes_total", {"node": "m1"}) >= 1
    assert health == {
        "status": "ok",
        "node": "m1",
        "registered": True,
        "ready": True,
        "gpuSource": "simulated",
    }
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NotFound"
    assert not_allowed.status_code == 405


def sample(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of one sample of a Prometheus page (fails when it is not there)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


# operator actions ---------------------------------------------------------------------------


def condition(report: NodeReport | None, type_: str) -> str | None:
    cond = report.condition(type_) if report is not None else None  # type: ignore[arg-type]
    return cond.status if cond is not None else None


async def test_cordon_drain_and_quarantine_take_effect_through_the_agent(
    api: ApiServer,
    project: str,
    store: EtcdStore,
    mesh: AsyncMeshClient,
    runtime: CannedRuntime,
    start_agent: StartAgent,
) -> None:
    runtime.metrics = vllm_page(running=2)
    agent = await start_agent(config(api.prefix, project, runtime_url=runtime.url))
    await served(mesh, "n1")  # actions on a node go through the API, which must know it

    async def shows(**expected: str) -> bool:
        report = await stored(store, agent.key)
        return all(condition(report, t) == s for t, s in expected.items())

    await mesh.action("nodes", "n1", "cordon", {"reason": "kernel upgrade"})
    await until(lambda: shows(Cordoned="True", Ready="True"), "Cordoned, still serving")

    await mesh.action("nodes", "n1", "drain", {"reason": "maintenance"})
    await until(lambda: shows(Draining="True", Drained="False"), "Draining with 2 in flight")
    report = await stored(store, agent.key)
    assert report is not None
    draining = report.condition("Draining")
    assert draining is not None and "2 in-flight" in draining.message
    assert draining.actor == "admin"
    runtime.metrics = vllm_page(running=0)  # the in-flight requests finish
    await until(lambda: shows(Draining="False", Drained="True"), "Drained once empty")

    await mesh.action("nodes", "n1", "uncordon")
    await until(lambda: shows(Cordoned="False", Draining="False", Drained="False"), "uncordoned")

    await mesh.action("nodes", "n1", "quarantine", {"reason": "flaky NIC"})
    await until(lambda: shows(Quarantined="True", Ready="False"), "Quarantined, not Ready")
    report = await stored(store, agent.key)
    assert report is not None
    quarantined = report.condition("Quarantined")
    assert quarantined is not None
    assert (quarantined.message, quarantined.actor) == ("flaky NIC", "admin")
    node = await mesh.get("nodes", "n1")
    assert report.observedGeneration == node["metadata"]["generation"]

    await mesh.action("nodes", "n1", "unquarantine")
    await until(lambda: shows(Quarantined="False", Ready="True"), "back in service")


# auto-quarantine ----------------------------------------------------------------------------


async def test_a_double_bit_ecc_error_quarantines_the_node_with_an_event(
    api: ApiServer,
    project: str,
    store: EtcdStore,
    mesh: AsyncMeshClient,
    runtime: CannedRuntime,
    start_agent: StartAgent,
) -> None:
    agent = await start_agent(config(api.prefix, project, runtime_url=runtime.url), mesh)
    assert (await stored(store, agent.key)) is not None

    runtime.metrics = vllm_page(gpu_dbe=1)  # the runtime simulator's GPU reports an ECC error

    async def quarantined() -> bool:
        node = await api_node(mesh, "n1")
        return bool(node and node["spec"].get("quarantine"))

    await until(quarantined, "the agent quarantines its node")
    node = await mesh.get("nodes", "n1")
    reason = node["spec"]["quarantine"]["reason"]
    assert reason == ("auto: rule ecc-dbe fired: GPU 0 GPU-sim-0 volatile double-bit ECC errors 1")
    events = await mesh.events(kind="Node", name="n1")
    assert any(e["reason"] == "Quarantine" and "rule ecc-dbe" in e["message"] for e in events)

    async def reported() -> bool:
        report = await stored(store, agent.key)
        cond = report.condition("Quarantined") if report is not None else None
        return cond is not None and cond.status == "True" and cond.reason == "AutoQuarantine"

    await until(reported, "the report says AutoQuarantine")

    # Lifted by an operator: the same reading does not fire again, a new one does.
    await mesh.action("nodes", "n1", "unquarantine", {"reason": "GPU reseated"})
    await until(lambda: _ready(store, agent.key), "back in service")
    scrapes = agent.stats.scrapes

    async def scraped_more() -> bool:
        return agent.stats.scrapes >= scrapes + 10

    await until(scraped_more, "ten more scrapes")
    assert not (await mesh.get("nodes", "n1"))["spec"].get("quarantine")
    assert agent.stats.quarantines == 1

    runtime.metrics = vllm_page(gpu_dbe=2)
    await until(quarantined, "a new ECC error quarantines the node again")
    assert (
        "double-bit ECC errors 2" in (await mesh.get("nodes", "n1"))["spec"]["quarantine"]["reason"]
    )


async def _ready(store: EtcdStore, key: str) -> bool:
    return condition(await stored(store, key), "Ready") == "True"


async def test_a_policy_sets_the_thermal_rule(
    api: ApiServer,
    project: str,
    mesh: AsyncMeshClient,
    runtime: CannedRuntime,
    start_agent: StartAgent,
) -> None:
    await mesh.create(
        {
            "apiVersion": "v1",
            "kind": "Policy",
            "metadata": {"name": "thermal"},
            "spec": {"quarantine": {"eccDoubleBit": False, "maxTempC": 80, "tempSeconds": 1}},
        }
    )
    runtime.metrics = vllm_page(gpu_temp=95.0, gpu_dbe=3)  # a thermal runaway, and ECC errors
    await start_agent(config(api.prefix, project, runtime_url=runtime.url), mesh)

    async def quarantined() -> bool:
        node = await api_node(mesh, "n1")
        return bool(node and node["spec"].get("quarantine"))

    await until(quarantined, "the thermal rule fires")
    reason = (await mesh.get("nodes", "n1"))["spec"]["quarantine"]["reason"]
    assert reason.startswith("auto: rule gpu-temperature fired: GPU 0 GPU-sim-0 at 95.0 °C")
    assert "ecc" not in reason  # the policy turned the ECC rule off
