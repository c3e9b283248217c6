"""The Streamlit dashboard through `AppTest`, against the real API on real etcd (in this process,
so a test can run an SLO evaluation pass when it wants one): every page with a demo mesh and with
an empty project, API errors as messages, the viewer's read-only pages, and every action with its
confirmation, checked through the API afterwards."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from infermesh.dashboard import APP, plot
from infermesh.store.etcd_server import EmbeddedEtcd, free_port
from tests.dashboard_mesh import BASELINE, CANARY, DemoMesh
from tests.inprocess_api import InProcessApi

TIMEOUT = 30  # AppTest with Plotly needs room on a slow machine
PAGES = ("slos", "slo_detail", "canary", "fleet", "jobs", "events")
TITLES = {
    "slos": "SLOs",
    "slo_detail": "SLO detail",
    "canary": "Canary",
    "fleet": "Fleet",
    "jobs": "Jobs",
    "events": "Events & audit",
}

App = Callable[..., AppTest]


@pytest.fixture(autouse=True)
def keep_main() -> Iterator[None]:
    """AppTest runs the page as `__main__` and leaves it there; a process spawned later (a Dask
    Nanny's worker) would then run the dashboard as its main module. Put ours back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def mesh_api(
    etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApi]:
    api = InProcessApi(etcd, tmp_path_factory.mktemp("dashboard") / "series.sqlite")
    yield api
    api.stop()


@pytest.fixture(scope="module")
def demo(mesh_api: InProcessApi) -> DemoMesh:
    """A demo project the read-only tests share (nothing changes it)."""
    return DemoMesh(mesh_api, f"p-{uuid.uuid4().hex[:8]}").populate()


@pytest.fixture
def fresh(mesh_api: InProcessApi) -> DemoMesh:
    """A demo project of this test's own, for tests that act on it."""
    return DemoMesh(mesh_api, f"p-{uuid.uuid4().hex[:8]}").populate()


def open_app(api: str, token: str | None, project: str, page: str = "slos") -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["mesh.settings"] = {"api": api, "token": token, "project": project}
    at.run()
    if page != "slos":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def app() -> App:
    def make(mesh: DemoMesh, page: str = "slos", token: str | None = None) -> AppTest:
        return open_app(mesh.api.url, token or mesh.api.token, mesh.project, page)

    return make


def texts(at: AppTest) -> str:
    """Every text the page shows (markdown, captions, alerts, metrics), for `in` checks."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in ("error", "warning", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    parts += [h.value for h in at.subheader] + [h.value for h in at.title]
    return "\n".join(parts)


def frames(at: AppTest) -> list:
    return [d.value for d in at.dataframe]


def frame_with(at: AppTest, column: str) -> Any:
    """The page's first table with that column."""
    return next(f for f in frames(at) if column in f)


def charts(at: AppTest) -> int:
    """Plotly charts on the page: each a figure with traces, as assets/plot.js receives it."""
    figures = [
        json.loads(e.proto.bytes)
        for e in at.get("bidi_component")
        if e.proto.component_name == plot.COMPONENT
    ]
    assert all(f["data"] and "layout" in f for f in figures)
    return len(figures)


def has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)


# --- pages ---------------------------------------------------------------------------------


def test_every_page_shows_the_demo_mesh(demo: DemoMesh, app: App) -> None:
    at = app(demo)
    assert at.title[0].value == "SLOs"
    assert not at.error
    overview = frames(at)[0]
    assert set(overview["SLO"]) == {
        "chat-pro-availability",
        "chat-pro-latency-p95",
        "chat-pro-ttft",
        "ft-news-step-time",
    }
    row = overview.set_index("SLO").loc["chat-pro-availability"]
    assert row["Phase"] == "Breaching" and row["Budget"] == "exhausted"
    assert "page-1h-5m" in row["Alerts"]
    assert "Breaching=1" in texts(at) and charts(at) == 1

    at.switch_page("views/slo_detail.py").run()
    page = texts(at)
    assert "chat-pro-availability · Endpoint/chat-pro · availability" in page
    assert "Objective=99.5%" in page and "PageAlertFiring" in page
    assert charts(at) == 6  # burndown, SLI, request rate, errors, latency, TTFT
    rules = frames(at)[0]
    assert list(rules["Rule"]) == ["page-1h-5m", "page-6h-30m", "ticket-1d-2h", "ticket-3d-6h"]
    assert rules.set_index("Rule").loc["page-1h-5m", "State"] == "firing"

    at.switch_page("views/canary.py").run()
    endpoints, totals = frame_with(at, "Endpoint"), frame_with(at, "revision")
    assert "chat-70b@fp8=10%" in endpoints.set_index("Endpoint").loc["chat-pro", "Split"]
    assert list(totals["revision"]) == [BASELINE, CANARY]  # the baseline first
    assert totals.set_index("revision").loc[CANARY, "Error ratio %"] > 40
    assert "Policy `chat-rollout`" in texts(at) and "step 1 of 4 reached" in texts(at)
    assert charts(at) == 6  # split, plan, and four SLIs per revision

    at.switch_page("views/fleet.py").run()
    nodes = frames(at)[0]
    assert len(nodes) == 5 and set(nodes["Status"]) == {"Ready"}
    assert nodes.set_index("Node").loc["us-a100-1", "Util %"] == 91.0
    assert charts(at) == 1

    at.switch_page("views/jobs.py").run()
    jobs, pools = frames(at)[0], frames(at)[1]
    job = jobs.set_index("Job").loc["ft-news"]
    assert (job["Phase"], job["GPUs"], job["Step"]) == ("Running", "4/4", "120/200")
    assert pools.set_index("Pool").loc["train-gold", "GPU-hours"] == 12.5
    assert charts(at) == 2

    at.switch_page("views/events.py").run()
    events = frames(at)[0]
    assert {"Created", "SLOAlertFiring"} <= set(events["Reason"])
    assert "admin" in set(events["Who"]) and "system:slo-evaluator" in set(events["Who"])
    audit = frames(at)[1]
    assert "admin" in set(audit["Who"])
    assert not at.error and not at.exception


def test_the_overview_opens_an_slo(demo: DemoMesh, app: App) -> None:
    at = app(demo)
    at.selectbox(key="slos.open_name").select("chat-pro-ttft")
    at.button(key="slos.open").click().run()
    assert at.title[0].value == "SLO detail"
    assert at.selectbox(key="slo.name").value == "chat-pro-ttft"
    assert "chat-pro-ttft · Endpoint/chat-pro · ttft<=120ms" in texts(at)
    at.button_group(key="slo.range").set_value("6h").run()  # the time-range picker
    assert not at.exception and charts(at) == 6

    at.selectbox(key="slo.name").select("ft-news-step-time").run()  # a training SLO
    assert "Step time p95=21.5 ms" in texts(at) and "Job phase=Running" in texts(at)
    assert "no error budget, burn rate or series" in texts(at) and charts(at) == 0


def test_an_empty_project_shows_what_to_do(mesh_api: InProcessApi) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"
    for page in PAGES:
        at = open_app(mesh_api.url, mesh_api.token, project, page)
        assert at.title[0].value == TITLES[page]
        assert not at.error, (page, [e.value for e in at.error])
        if page != "events":  # creating nothing writes no event, but tokens
            assert at.info, page
    at = open_app(mesh_api.url, mesh_api.token, project, "slos")
    assert f"No SLOs in project '{project}'" in texts(at)


def test_api_errors_read_as_messages(demo: DemoMesh) -> None:
    at = open_app(f"http://127.0.0.1:{free_port()}", demo.api.token, demo.project)
    assert "Cannot reach the InferMesh API" in at.error[0].value
    assert "is it running?" in at.error[0].value

    at = open_app(demo.api.url, "imt_not-a-token", demo.project)
    assert "refused our token" in at.error[0].value
    assert "imt_not-a-token" not in texts(at)  # a token is never shown

    # A token for another project: every read is refused, with the API's reason.
    other = demo.token_for("viewer", f"p-{uuid.uuid4().hex[:8]}")
    for page in ("slos", "fleet", "canary"):
        at = open_app(demo.api.url, other, demo.project, page)
        assert any("has no access to project" in e.value for e in at.error), page


def test_a_viewer_sees_no_action_controls(demo: DemoMesh, app: App) -> None:
    viewer = demo.token("viewer")
    controls = {
        "canary": ("canary.set_split", "canary.promote", "canary.rollback"),
        "fleet": ("fleet.cordon", "fleet.drain", "fleet.quarantine"),
        "jobs": ("jobs.pause", "jobs.scale", "jobs.checkpoint"),
    }
    for page, keys in controls.items():
        at = app(demo, page, token=viewer)
        assert frames(at), page  # the data is there
        assert not any(has_button(at, k) for k in keys), page
        assert "Read-only: your role may not change" in texts(at)
        admin = app(demo, page)
        assert all(has_button(admin, k) for k in keys), page
    at = app(demo, "events", token=viewer)
    assert "audit log is an org admin's to read" in texts(at)


def test_the_canary_page_follows_the_rollout_controller(fresh: DemoMesh, app: App) -> None:
    delivery = getattr(fresh.api.state, "delivery", None)
    if delivery is None:
        pytest.skip("this API has no rollout controller")
    fresh.api.run(delivery.run_once(fresh.now))  # one pass, as its timer would
    rollout = fresh.get("endpoints", "chat-pro")["status"]["rollout"]
    at = app(fresh, "canary")
    assert "**Rollout :" in texts(at) and f"[{rollout['phase']}]**" in texts(at)
    assert f"canary {rollout['canary']} at {rollout['weight']}%" in texts(at)
    endpoints = frame_with(at, "Endpoint").set_index("Endpoint")
    assert endpoints.loc["chat-pro", "Rollout"] == rollout["phase"]


# --- actions -------------------------------------------------------------------------------


def split_of(mesh: DemoMesh) -> list[dict]:
    return mesh.get("endpoints", "chat-pro")["spec"]["trafficSplit"]


def confirm(at: AppTest, typed: str) -> AppTest:
    at.text_input(key="dashboard.confirm_typed").input(typed)
    return at.button(key="dashboard.confirm_go").click().run()


def test_rollback_waits_for_the_endpoint_name(fresh: DemoMesh, app: App) -> None:
    at = app(fresh, "canary")
    at.button(key="canary.rollback").click().run()
    assert "Type **chat-pro** to confirm" in [t.label for t in at.text_input][-1]

    confirm(at, "chat")  # a wrong name changes nothing and keeps asking
    assert any("Type 'chat-pro' exactly" in e.value for e in at.error)
    assert len(split_of(fresh)) == 2
    at.button(key="dashboard.confirm_cancel").click().run()
    assert not any(t.key == "dashboard.confirm_typed" for t in at.text_input)
    assert len(split_of(fresh)) == 2

    at.button(key="canary.rollback").click().run()
    confirm(at, "chat-pro")
    assert split_of(fresh) == []
    assert any("rolled back: all traffic to chat-70b@q4_k_m" in s.value for s in at.success)
    endpoints = frame_with(at, "Endpoint").set_index("Endpoint")
    assert endpoints.loc["chat-pro", "Split"] == "all to model"

    at.switch_page("views/events.py").run()  # recorded: the API's event and this session's log
    events = frames(at)[0]
    assert any("rolled back to chat-70b@q4_k_m" in m for m in events["Message"])
    mine = frames(at)[-1]
    assert list(mine["Action"]) == ["rollback"] and bool(mine["OK"][0])


def test_promote_and_set_the_split(fresh: DemoMesh, app: App) -> None:
    at = app(fresh, "canary")
    w = f"canary.w.chat-pro.{fresh.get('endpoints', 'chat-pro')['metadata']['resourceVersion']}"
    at.number_input(key=f"{w}.{BASELINE}").set_value(70)
    at.number_input(key=f"{w}.{CANARY}").set_value(20)
    at.button(key="canary.set_split").click().run()
    assert any("add up to 90%" in e.value for e in at.error)  # not sent
    assert split_of(fresh)[1]["weight"] == 10

    at.number_input(key=f"{w}.{CANARY}").set_value(30)
    at.button(key="canary.set_split").click().run()  # no zero weight: no dialog
    assert [s["weight"] for s in split_of(fresh)] == [70, 30]
    assert any("traffic split set" in s.value for s in at.success)

    w = f"canary.w.chat-pro.{fresh.get('endpoints', 'chat-pro')['metadata']['resourceVersion']}"
    at.number_input(key=f"{w}.{BASELINE}").set_value(100)
    at.number_input(key=f"{w}.{CANARY}").set_value(0)
    at.button(key="canary.set_split").click().run()  # a split to 0 % is confirmed
    assert "will get no traffic" in texts(at)
    confirm(at, "chat-pro")
    assert [s["weight"] for s in split_of(fresh)] == [100, 0]

    w = f"canary.w.chat-pro.{fresh.get('endpoints', 'chat-pro')['metadata']['resourceVersion']}"
    at.number_input(key=f"{w}.{BASELINE}").set_value(50)
    at.number_input(key=f"{w}.{CANARY}").set_value(50)
    at.button(key="canary.set_split").click().run()
    at.button(key="canary.promote").click().run()
    confirm(at, "chat-pr")
    assert fresh.get("endpoints", "chat-pro")["spec"]["modelRef"] == BASELINE
    confirm(at, "chat-pro")
    spec = fresh.get("endpoints", "chat-pro")["spec"]
    assert (spec["modelRef"], spec["trafficSplit"]) == (CANARY, [])
    assert any(f"promoted to {CANARY}" in s.value for s in at.success)


def node_spec(mesh: DemoMesh, name: str) -> dict:
    return mesh.get("nodes", name)["spec"]


def test_node_actions(fresh: DemoMesh, app: App) -> None:
    at = app(fresh, "fleet")
    at.multiselect(key="fleet.targets").set_value(["edge-l4-1", "edge-l4-2"]).run()
    at.button(key="fleet.cordon").click().run()  # not destructive: at once, for both
    assert all(node_spec(fresh, n)["cordoned"] for n in ("edge-l4-1", "edge-l4-2"))
    assert len(at.success) == 2

    at.multiselect(key="fleet.targets").set_value(["eu-h100-1"]).run()
    at.button(key="fleet.drain").click().run()
    confirm(at, "eu-h100-2")
    assert not node_spec(fresh, "eu-h100-1").get("drain")
    confirm(at, "eu-h100-1")
    assert node_spec(fresh, "eu-h100-1")["drain"]["actor"] == "admin"

    at.multiselect(key="fleet.targets").set_value(["us-a100-1", "eu-h100-2"]).run()
    at.button(key="fleet.quarantine").click().run()
    assert any("needs a reason" in e.value for e in at.error)
    at.text_input(key="fleet.reason").input("ECC errors")
    at.button(key="fleet.quarantine").click().run()
    confirm(at, "us-a100-1")  # several nodes: their count is typed
    assert not node_spec(fresh, "us-a100-1").get("quarantine")
    confirm(at, "2 nodes")
    assert node_spec(fresh, "us-a100-1")["quarantine"]["reason"] == "ECC errors"
    statuses = frames(at)[0].set_index("Node")["Status"]
    assert "Quarantined" in statuses["us-a100-1"] and "Cordoned" in statuses["edge-l4-1"]

    at.multiselect(key="fleet.targets").set_value(["us-a100-1", "edge-l4-1"]).run()
    at.button(key="fleet.unquarantine").click().run()
    assert not node_spec(fresh, "us-a100-1").get("quarantine")
    assert any("quarantine lifted" in s.value for s in at.success)
    # The API's own message for the node that was not quarantined.
    assert any("node 'edge-l4-1' is not quarantined" in e.value for e in at.error)

    at.multiselect(key="fleet.targets").set_value(["edge-l4-1"]).run()
    at.button(key="fleet.uncordon").click().run()
    assert not node_spec(fresh, "edge-l4-1")["cordoned"]


def test_job_actions(fresh: DemoMesh, app: App) -> None:
    def spec() -> dict:
        return fresh.get("jobs", "ft-news")["spec"]

    at = app(fresh, "jobs")
    at.button(key="jobs.pause").click().run()
    assert spec()["paused"] is True
    assert frames(at)[0].set_index("Job").loc["ft-news", "Paused"]
    at.button(key="jobs.resume").click().run()
    assert spec()["paused"] is False
    at.button(key="jobs.checkpoint").click().run()
    assert spec()["checkpointRequests"] == 1
    at.number_input(key="jobs.gpus.ft-news").set_value(8)
    at.button(key="jobs.scale").click().run()
    assert spec()["targetGpus"] == 8
    at.number_input(key="jobs.gpus.ft-news").set_value(6)
    at.button(key="jobs.scale").click().run()  # the API refuses it, and says why
    assert any("not a multiple of tp*pp = 4" in e.value for e in at.error)
    assert spec()["targetGpus"] == 8
