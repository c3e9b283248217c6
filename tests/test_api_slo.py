"""SLOs through the real API and CLI: routers' buckets in, one evaluation pass at a chosen time,
then what users read: `GET /v1/slos`, the burn table and alerts, their events, the chart series,
`mesh get slos` and `mesh describe slo`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from infermesh.cli import main
from infermesh.sli import Histogram, SeriesBatch, SeriesBucket, bucket_start
from infermesh.store.etcd_server import EmbeddedEtcd
from infermesh.store.slo.evaluator import SloEvaluator
from tests.inprocess_api import InProcessApi

HOUR = 3600


@pytest.fixture(scope="module")
def mesh_api(
    etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApi]:
    api = InProcessApi(etcd, tmp_path_factory.mktemp("slo") / "series.sqlite")
    yield api
    api.stop()


def hist(value: float, n: int) -> Histogram:
    h = Histogram()
    for _ in range(n):
        h.observe(value)
    return h


def buckets(project: str, starts: range, errors: int) -> list[SeriesBucket]:
    """What a router posts for endpoint chat in edge-eu: 100 requests per 10 s, `errors` of
    them 5xx, the rest answered in 50 ms with a first token after 80 ms."""
    ok = 100 - errors
    return [
        SeriesBucket(
            start=t,
            project=project,
            endpoint="chat",
            revision="chat-70b@q4",
            domain="edge-eu",
            requests=100,
            errors=errors,
            latency=hist(50, ok),
            ttft=hist(80, ok),
        )
        for t in starts
    ]


def post(c: httpx.Client, *items: SeriesBucket) -> None:
    batch = SeriesBatch(source="router-a", buckets=list(items))
    r = c.post("/v1/metrics/series", json=batch.model_dump())
    assert r.status_code == 200, r.text


ENDPOINT = {
    "kind": "Endpoint",
    "metadata": {"name": "chat"},
    "spec": {
        "modelRef": "chat-70b@q4",
        "domains": [{"name": "edge-eu", "slo": {"ttft_ms": 120}}],
        "slo": {"p95_ms": 300},
    },
}
AVAILABILITY = {
    "kind": "SLO",
    "metadata": {"name": "chat-avail"},
    "spec": {
        "target": {"kind": "Endpoint", "name": "chat"},
        "sli": "availability",
        "objective": 99.5,
        "description": "checkout must answer",
    },
}


class Scenario:
    """Two hours of clean traffic, then 50 % errors for the last 10 minutes before `now`."""

    def __init__(self, api: InProcessApi) -> None:
        self.api = api
        self.project = f"p-{uuid.uuid4().hex[:8]}"
        base = bucket_start(time.time())
        self.now = base + 5  # in the bucket that starts at `base`, the open one
        with api.client() as c:
            for obj in (ENDPOINT, AVAILABILITY):
                r = c.post(f"/v1/{obj['kind'].lower()}s", params=self.params, json=obj)
                assert r.status_code == 201, r.text
            post(c, *buckets(self.project, range(base - 2 * HOUR + 10, base - 590, 10), 0))
            post(c, *buckets(self.project, range(base - 590, base + 10, 10), 50))
        self.first = api.evaluate(self.now)

    @property
    def params(self) -> dict[str, str]:
        return {"project": self.project}

    def get(self, path: str, **params: Any) -> Any:
        with self.api.client() as c:
            r = c.get(path, params={**self.params, **params})
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.get("/v1/events", kind="SLO", name=name)["items"]


@pytest.fixture(scope="module")
def burning(mesh_api: InProcessApi) -> Scenario:
    return Scenario(mesh_api)


def windows(slo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["window"]: w for w in slo["status"]["windows"]}


def firing(slo: dict[str, Any]) -> list[str]:
    return [a["rule"] for a in slo["status"]["alerts"] if a["firing"]]


def test_a_burst_of_errors_pages_with_the_numbers_in_status_and_events(burning: Scenario) -> None:
    assert burning.first.evaluated == 3  # chat-avail and the endpoint's two implicit SLOs
    slo = burning.get("/v1/slos/chat-avail")
    status = slo["status"]
    assert (status["phase"], status["reason"]) == ("Breaching", "PageAlertFiring")
    assert (status["sli"], status["objective"], status["window"]) == ("availability", 99.5, "30d")
    assert status["implicit"] is False and status["errorBudget"] == pytest.approx(0.005)
    w = windows(slo)
    # 5m and 30m: half of the requests failed, 100x a 0.5 % budget. 1h: 10 minutes of that.
    assert (w["5m"]["total"], w["5m"]["good"], w["5m"]["burn"]) == (3000, 1500, 100.0)
    assert w["1h"]["burn"] == pytest.approx(100 / 6, rel=0.02)
    assert w["30d"]["burn"] == pytest.approx(100 / 12, rel=0.02)
    # Two hours of data spent 8x the 30-day budget: gone, and so exhausted now.
    assert status["budgetRemaining"] < 0 and status["exhaustionSeconds"] == 0
    assert firing(slo) == ["page-1h-5m", "page-6h-30m", "ticket-1d-2h", "ticket-3d-6h"]
    assert status["percentiles"]["1h"]["p50Ms"] == pytest.approx(37.5, abs=12.5)
    assert status["percentiles"]["1h"]["ttftP95Ms"] is not None

    events = [e for e in burning.events("chat-avail") if e["reason"].startswith("SLOAlert")]
    assert [e["reason"] for e in events] == ["SLOAlertFiring"] * 4
    page = next(e for e in events if "page-1h-5m" in e["message"])
    assert page["type"] == "Warning" and page["actor"] == "system:slo-evaluator"
    assert (
        "page alert page-1h-5m firing: burn 16.7x over 1h and 100.0x over 5m" in (page["message"])
    )


def test_implicit_slos_come_from_the_endpoint_and_judge_latency(burning: Scenario) -> None:
    items = burning.get("/v1/slos")["items"]
    names = {o["metadata"]["name"]: o for o in items}
    assert sorted(names) == ["chat-avail", "chat-edge-eu-ttft", "chat-latency-p95"]
    everywhere = burning.get("/v1/slos", project="*")["items"]
    assert {(o["metadata"]["project"], o["metadata"]["name"]) for o in everywhere} >= {
        (burning.project, name) for name in names
    }
    p95 = names["chat-latency-p95"]
    assert p95["metadata"]["annotations"]["slo.infermesh.io/implicit"] == "true"
    assert p95["status"]["implicit"] is True
    assert p95["spec"] == {
        "target": {"kind": "Endpoint", "name": "chat"},
        "sli": "latency",
        "thresholdMs": 300.0,
        "objective": 95.0,
        "window": "30d",
        "rateLimitedIsBad": False,
        "description": "from Endpoint chat spec.slo.p95_ms",
    }
    # Every success took 50 ms (good); the failures are bad for latency too: 1/24 of the
    # requests against a 5 % budget burns 0.8x over the 30-day window, not enough for any alert.
    assert p95["status"]["phase"] == "OK" and firing(p95) == []
    assert windows(p95)["30d"]["burn"] == pytest.approx(20 / 24, rel=0.02)
    ttft = names["chat-edge-eu-ttft"]
    assert (ttft["spec"]["domain"], ttft["spec"]["thresholdMs"]) == ("edge-eu", 120.0)
    assert windows(ttft)["5m"]["good"] == 1500  # 80 ms first tokens: good


def test_alerts_resolve_when_the_short_window_cools_and_the_series_charts_it(
    burning: Scenario,
) -> None:
    base = burning.now - 5
    with burning.api.client() as c:
        post(c, *buckets(burning.project, range(base + 10, base + 610, 10), 0))
    later = burning.api.evaluate(burning.now + 600)
    resolved = [e for e in later.events if e["reason"] == "SLOAlertResolved"]
    assert [e["message"].split()[2] for e in resolved] == ["page-1h-5m"]

    slo = burning.get("/v1/slos/chat-avail")
    # The 1h window still burns 16x, but the 5m one is clean: page-1h-5m resolved. The 30m
    # window still holds the burst, so page-6h-30m keeps firing.
    assert windows(slo)["5m"]["burn"] == 0.0
    assert firing(slo) == ["page-6h-30m", "ticket-1d-2h", "ticket-3d-6h"]
    events = burning.events("chat-avail")
    assert events[0]["type"] == "Normal" and events[0]["reason"] == "SLOAlertResolved"
    assert "page alert page-1h-5m resolved after 10m" in events[0]["message"]

    chart = burning.get(
        "/v1/slos/chat-avail/series", since=base - HOUR, until=burning.now + 600, step=10
    )
    assert (chart["sli"], chart["step"]) == ("availability", 10)
    burns = {p["t"]: p["burn"] for p in chart["points"]}
    burst = range(base - 590, base + 10, 10)
    assert len(burns) == 421 and {burns[t] for t in burst} == {100.0}
    assert {b for t, b in burns.items() if t not in burst} == {0.0}


def test_slo_writes_are_checked_and_deleting_drops_the_status(burning: Scenario) -> None:
    with burning.api.client() as c:
        bad = {**AVAILABILITY, "metadata": {"name": "slow"}}
        bad["spec"] = {**AVAILABILITY["spec"], "sli": "latency"}
        r = c.post("/v1/slos", params=burning.params, json=bad)
        assert r.status_code == 422
        [error] = r.json()["error"]["details"]["errors"]
        assert error["field"] == "spec.thresholdMs"
        assert error["message"].startswith("sli 'latency' needs thresholdMs")
        r = c.get("/v1/slos/nope", params=burning.params)
        assert r.status_code == 404 and "SLO 'nope' not found" in r.json()["error"]["message"]

        # The endpoint no longer promises a p95: its implicit SLO goes, status and all.
        r = c.patch("/v1/endpoints/chat", params=burning.params, json={"spec": {"slo": None}})
        assert r.status_code == 200, r.text
    burning.api.run(
        burning.api.state.objects.wait_for(int(r.json()["metadata"]["resourceVersion"]))
    )
    result = burning.api.evaluate(burning.now + 610)
    assert result.deleted == 1
    names = [o["metadata"]["name"] for o in burning.get("/v1/slos")["items"]]
    assert names == ["chat-avail", "chat-edge-eu-ttft"]


def test_mesh_get_slos_and_describe_slo(burning: Scenario, tmp_path: Path) -> None:
    def mesh(*args: str) -> Result:
        env = {"INFERMESH_HOME": str(tmp_path)}
        argv = ["--api", burning.api.url, "--token", burning.api.token, "-p", burning.project]
        result = CliRunner(env=env).invoke(main, [*argv, *args])
        assert result.exit_code == 0, result.output
        return result

    rows = [line.split() for line in mesh("get", "slos").stdout.splitlines()]
    assert rows[0] == [
        "NAME",
        "TARGET",
        "SLI",
        "OBJECTIVE",
        "WINDOW",
        "BUDGET-LEFT",
        "BURN-1H",
        "ALERTS",
        "STATUS",
        "AGE",
    ]
    table = {r[0]: r for r in rows[1:]}
    avail = table["chat-avail"]
    assert avail[1:5] == ["Endpoint/chat", "availability", "99.5%", "30d"]
    assert avail[5].endswith("%") and float(avail[5].rstrip("%")) < 0
    assert avail[6].endswith("x") and float(avail[6].rstrip("x")) > 14.4
    assert avail[7].split(",")[0] == "page-6h-30m" and avail[8] == "Breaching"
    ttft = table["chat-edge-eu-ttft"]
    assert ttft[1:5] == ["Endpoint/chat:edge-eu", "ttft<=120ms", "95%", "30d"]

    out = mesh("describe", "slo", "chat-avail").stdout
    assert "Objective:        99.5% of valid events good over 30d (error budget 0.500%)" in out
    assert "SLI:              availability (bad: 5xx and timeouts; 429 not counted)" in out
    assert "Phase:            Breaching (PageAlertFiring)" in out
    assert "remaining; exhausted" in out
    burn_table = out[out.index("Burn rates:") : out.index("Alerts:")]
    assert burn_table.splitlines()[1].split() == ["WINDOW", "GOOD", "TOTAL", "RATIO", "BURN"]
    assert "page-6h-30m" in out[out.index("Alerts:") : out.index("Percentiles:")]
    events = out[out.index("Events:") :]
    assert "SLOAlertFiring" in events and "SLOAlertResolved" in events


@pytest.fixture
def roles(burning: Scenario) -> Callable[[str], str]:
    def token(role: str) -> str:
        with burning.api.client() as c:
            body = {"subject": role, "roles": [role], "projects": [burning.project]}
            r = c.post("/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    return token


def test_viewers_read_slos_and_model_owners_write_them(
    burning: Scenario, roles: Callable[[str], str]
) -> None:
    slo = {**AVAILABILITY, "metadata": {"name": "chat-avail-2"}}
    with burning.api.client(roles("viewer")) as c:
        assert c.get("/v1/slos", params=burning.params).status_code == 200
        assert c.post("/v1/slos", params=burning.params, json=slo).status_code == 403
    with burning.api.client(roles("modelOwner")) as c:
        assert c.post("/v1/slos", params=burning.params, json=slo).status_code == 201
        assert c.delete("/v1/slos/chat-avail-2", params=burning.params).status_code == 200


def test_a_new_leader_carries_the_alerts_on_without_repeating_their_events(
    burning: Scenario,
) -> None:
    api = burning.api
    state = api.state
    api.run(state.slos.stop())  # the leader steps down (an API replica going away)
    successor = SloEvaluator(
        state.store, state.keys, state.objects, state.series, identity="api-replica-2"
    )
    try:
        result = api.evaluate_with(successor, burning.now + 620)
        assert successor.is_leader and result.evaluated == 2
        # Nothing changed since the last pass: the alerts still fire, and nobody is told twice.
        assert result.events == []
        assert firing(burning.get("/v1/slos/chat-avail")) == [
            "page-6h-30m",
            "ticket-1d-2h",
            "ticket-3d-6h",
        ]
    finally:
        api.run(successor.stop())


def test_a_jobs_step_time_slo_breaches_and_recovers_with_its_job(mesh_api: InProcessApi) -> None:
    project = f"train-{uuid.uuid4().hex[:6]}"
    params = {"project": project}
    job = {
        "apiVersion": "v1",
        "kind": "Job",
        "metadata": {"name": "ft"},
        "spec": {"parallelism": {"dp": 2, "tp": 2}, "slo": {"step_time_p95_ms": 500}},
    }
    key = mesh_api.state.keys.status("jobs", project, "ft")

    def report(step_time_ms: float) -> None:
        # What the scheduler writes for a running job (scheduler/jobstate.py).
        status = {"phase": "Running", "stepTimeP95Ms": step_time_ms, "throughputTps": 900.0}
        revision = mesh_api.run(mesh_api.state.store.put(key, json.dumps(status)))
        assert mesh_api.run(mesh_api.state.reports["jobs"].wait_for(revision, timeout=10))

    def slo(now: float) -> dict[str, Any]:
        mesh_api.evaluate(now)
        with mesh_api.client() as c:
            return c.get("/v1/slos/ft-step-time", params=params).json()["status"]

    with mesh_api.client() as c:
        assert c.post("/v1/jobs", params=params, json=job).status_code == 201
    t0 = time.time()
    assert slo(t0)["reason"] == "NoData"  # not reported yet
    report(800.0)
    breached = slo(t0 + 10)
    assert (breached["phase"], breached["reason"]) == ("Breaching", "StepTimeOverThreshold")
    assert breached["message"] == "stepTimeP95Ms 800ms over the threshold 500ms"
    report(300.0)
    assert slo(t0 + 20)["phase"] == "OK"
    with mesh_api.client() as c:
        got = c.get("/v1/events", params={**params, "kind": "SLO", "name": "ft-step-time"})
    reasons = [e["reason"] for e in got.json()["items"]]
    assert reasons == ["SLORecovered", "SLOBreaching"]  # newest first
