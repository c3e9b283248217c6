"""The dashboard's data shaping, without Streamlit: SLO tables and series, canary splits and
rollouts, fleet heatmap cells, pools, events, permissions, actions, and how `infermesh
dashboard` and `infermesh up` start Streamlit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly
import plotly.graph_objects as go
import pytest

from infermesh.context import Context
from infermesh.dashboard import (
    SERVER,
    canary_data,
    charts,
    events_data,
    fleet_data,
    jobs_data,
    launch,
    plot,
    series_data,
    slo_data,
)
from infermesh.dashboard.access import Principal
from infermesh.dashboard.actions import ActionRequest, confirmed
from infermesh.dashboard.timerange import RANGES, step_for, time_range
from infermesh.store.auth import new_token
from infermesh.up import Plan, services

WINDOWS = [
    {"window": "5m", "seconds": 300, "good": 50, "total": 100, "ratio": 0.5, "burn": 100.0},
    {"window": "1h", "seconds": 3600, "good": 900, "total": 1000, "ratio": 0.9, "burn": 20.0},
    {"window": "30d", "seconds": 2592000, "good": 9900, "total": 10000, "ratio": 0.99, "burn": 2.0},
]
ALERTS = [
    {"rule": "page-1h-5m", "severity": "page", "longWindow": "1h", "shortWindow": "5m",
     "factor": 14.4, "firing": True, "since": "2026-01-05T10:00:05.000Z"},
]  # fmt: skip


def slo(name: str, phase: str, remaining: float | None, **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if remaining is not None:
        status |= {
            "budgetRemaining": remaining,
            "errorBudget": 0.005,
            "windows": WINDOWS,
            "alerts": ALERTS,
            "exhaustionSeconds": 0,
        }
    return {
        "metadata": {"name": name},
        "spec": {
            "target": {"kind": "Endpoint", "name": "chat"},
            "sli": "availability",
            "objective": 99.5,
            "window": "30d",
            **spec,
        },
        "status": status,
    }


def test_time_ranges_keep_charts_to_a_few_hundred_points() -> None:
    assert [(r.label, r.step) for r in RANGES] == [
        ("15m", 10),
        ("1h", 10),
        ("6h", 60),
        ("1d", 300),
        ("7d", 1800),
        ("30d", 7200),
    ]
    assert all(r.points <= 360 for r in RANGES)
    assert time_range("6h").since == "-21600s" and step_for(120) == 10
    with pytest.raises(ValueError):
        time_range("soon")


def test_budget_buckets_and_the_overview_puts_the_urgent_first() -> None:
    assert [slo_data.budget_bucket(x)[0] for x in (1.0, 0.5, 0.3, 0.01, 0.0, -7.3, None)] == [
        "healthy",
        "healthy",
        "watch",
        "low",
        "exhausted",
        "exhausted",
        "no data",
    ]
    slos = [
        slo("quiet", "OK", 0.9),
        slo("new", "Pending", None),
        slo("burning", "Breaching", -2.0),
        slo("lat", "Warning", 0.4, sli="latency", thresholdMs=300, objective=95),
    ]
    frame = slo_data.overview(slos)
    assert list(frame["SLO"]) == ["burning", "lat", "new", "quiet"]
    row = frame.iloc[0]
    assert (row["Budget left %"], row["Budget"], row["Current %"]) == (-200.0, "exhausted", 99.0)
    assert (row["Burn 1h"], row["Alerts"], row["Exhaustion"]) == (20.0, "page-1h-5m", "now")
    assert frame.iloc[1]["SLI"] == "latency<=300ms"
    assert frame.iloc[2]["Budget"] == "no data"
    assert slo_data.phase_counts(slos)["Breaching"] == 1
    assert slo_data.overview([]).empty
    assert len(charts.budget_bars(frame).data[0].x) == 4


def test_tiles_and_the_burn_rate_table() -> None:
    s = slo("chat-avail", "Breaching", -1.0)
    tiles = {t.label: t.value for t in slo_data.tiles(s)}
    assert tiles == {
        "Objective": "99.5%",
        "Availability": "99.000%",
        "Error budget left": "-100.0%",
        "Burn rate 1h": "20.00x",
        "Exhaustion": "now",
    }
    rules = slo_data.burn_rules(s)
    row = rules.iloc[0].to_dict()
    assert row["Exhaustion"] == "2d2h"  # 30 days at 14.4x
    assert row["Threshold"] == "14.4x (7.2% bad)"
    assert (row["Short burn"], row["Long burn"], row["State"]) == (100.0, 20.0, "firing")
    assert slo_data.burn_rules(slo("new", "Pending", None)).empty
    assert slo_data.thresholds(s) == {"ratio": 0.995, "error_rate": pytest.approx(0.005)}
    lat = slo("lat", "OK", 1.0, sli="latency", thresholdMs=300, objective=95)
    assert slo_data.thresholds(lat) == {"ratio": 0.95, "latency": 300.0}
    assert slo_data.series_filters(slo("d", "OK", 1.0, domain="edge-eu")) == {
        "endpoint": "chat",
        "domain": "edge-eu",
    }
    job = slo("job", "OK", None, target={"kind": "Job", "name": "ft"}, sli="step_time")
    assert slo_data.series_filters(job) is None
    job["spec"]["thresholdMs"] = 250
    job["status"]["current"] = {"stepTimeP95Ms": 212.5, "jobPhase": "Running"}
    assert [(t.label, t.value) for t in slo_data.training_tiles(job)] == [
        ("Objective", "step_time<=250ms"),
        ("Step time p95", "212.5 ms"),
        ("Job phase", "Running"),
    ]


def test_burndown_ends_at_the_budget_remaining_and_breaches_merge() -> None:
    answer = {
        "points": [
            {"t": 0, "good": 100, "total": 100, "ratio": 1.0, "burn": 0.0},
            {"t": 10, "good": 90, "total": 100, "ratio": 0.9, "burn": 20.0},
            {"t": 20, "good": 95, "total": 100, "ratio": 0.95, "burn": 10.0},
            {"t": 40, "good": 100, "total": 100, "ratio": 1.0, "burn": 0.0},
            {"t": 50, "good": 0, "total": 100, "ratio": 0.0, "burn": 200.0},
        ]
    }
    points = slo_data.points_frame(answer)
    burn = slo_data.burndown(points, 0.005)
    assert burn["remaining"].iloc[0] == 1.0
    # 115 bad of 500 valid against a 0.5 % budget: 1 - 0.23 / 0.005
    assert burn["remaining"].iloc[-1] == pytest.approx(1 - (115 / 500) / 0.005)
    assert burn["remaining"].is_monotonic_decreasing
    spans = slo_data.breaches(points, 10)
    assert [(a.value // 10**9, b.value // 10**9) for a, b in spans] == [(10, 30), (50, 60)]
    assert slo_data.burndown(slo_data.points_frame(None), 0.005).empty
    assert slo_data.breaches(slo_data.points_frame({}), 10) == []


def test_series_frames_by_revision_and_the_threshold_drawn() -> None:
    answer = {
        "series": [
            {
                "revision": "m@b",
                "total": {"requests": 90, "errors": 0, "error_rate": 0.0, "latency_p95_ms": 50},
                "points": [{"t": 0, "requests": 90, "rps": 9.0, "latency_p95_ms": 50.0}],
            },
            {
                "revision": "m@c",
                "total": {"requests": 10, "errors": 5, "error_rate": 0.5, "latency_p95_ms": 150},
                "points": [{"t": 0, "requests": 10, "rps": 1.0, "latency_p95_ms": None}],
            },
        ]
    }
    frame = series_data.frame(answer, by="revision")
    assert list(frame["revision"]) == ["m@b", "m@c"] and frame["latency_p95_ms"].isna().iloc[1]
    totals = series_data.totals(answer, "revision", order=["m@c", "m@b"])
    assert list(totals["revision"]) == ["m@c", "m@b"]
    assert totals.iloc[0]["Error ratio %"] == 50.0
    fig = charts.time_chart(
        frame,
        [("latency_p95_ms", "p95")],
        "Latency",
        threshold=100.0,
        breaches=[(pd.Timestamp(0, unit="s", tz="UTC"), pd.Timestamp(10, unit="s", tz="UTC"))],
        split_by="revision",
        colours=charts.colours(["m@c", "m@b"]),
    )
    assert [t.name for t in fig.data] == ["m@c", "m@b"]
    assert fig.layout.shapes[0].y0 == 100.0 and fig.layout.shapes[1].type == "rect"
    assert series_data.frame(None).empty


ENDPOINT = {
    "metadata": {"name": "chat", "labels": {"tier": "gold"}},
    "spec": {
        "modelRef": "chat-70b@q4",
        "domains": [{"name": "edge-eu", "weight": 100}],
        "trafficSplit": [
            {"modelRef": "chat-70b@fp8", "weight": 25},
            {"modelRef": "chat-70b@q4", "weight": 75},
        ],
    },
}


def policy(name: str, targets: list[dict[str, Any]], steps: list[int]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"appliesTo": targets, "rollout": {"steps": steps, "stepIntervalSeconds": 60}},
    }


def test_revisions_splits_and_their_checks() -> None:
    assert canary_data.revisions(ENDPOINT) == [
        ("chat-70b@q4", 75, "baseline"),
        ("chat-70b@fp8", 25, "canary"),
    ]
    plain = {"metadata": {"name": "x"}, "spec": {"modelRef": "m@1", "domains": []}}
    assert canary_data.revisions(plain) == [("m@1", 100, "baseline")]
    assert canary_data.canaries(ENDPOINT) == ["chat-70b@fp8"] and canary_data.canaries(plain) == []
    split, problem = canary_data.build_split({"q4": 90, "chat-70b@awq": 10}, ENDPOINT)
    assert problem is None
    assert split == [
        {"modelRef": "chat-70b@q4", "weight": 90},
        {"modelRef": "chat-70b@awq", "weight": 10},
    ]
    assert canary_data.build_split({"q4": 90}, ENDPOINT)[1] == (
        "weights add up to 90%; they must add up to 100%"
    )
    assert "listed twice" in str(canary_data.build_split({"q4": 50, "chat-70b@q4": 50}, ENDPOINT))
    split, _ = canary_data.build_split({"q4": 100, "fp8": 0}, ENDPOINT)
    assert canary_data.zeroes(split) == ["chat-70b@fp8"]
    frame = canary_data.endpoints_frame([ENDPOINT, plain])
    assert list(frame["Split"]) == ["chat-70b@fp8=25%, chat-70b@q4=75%", "all to model"]


def test_the_rollout_comes_from_status_or_the_applying_policy() -> None:
    policies = [
        policy("project-wide", [], [10, 100]),
        policy("by-labels", [{"kind": "Endpoint", "matchLabels": {"tier": "gold"}}], [20, 100]),
        policy("named", [{"kind": "Endpoint", "name": "chat"}], [5, 25, 50, 100]),
        policy("other", [{"kind": "Endpoint", "name": "other"}], [1, 2]),
    ]
    plan = canary_data.rollout(ENDPOINT, policies)
    assert plan is not None and plan.source == "policy" and plan.policy == "named"
    assert (plan.steps, plan.weight, plan.step) == ([5, 25, 50, 100], 25, 1)
    assert canary_data.rollout(ENDPOINT, policies[3:]) is None
    assert canary_data.position([5, 25], 3) is None

    status = {
        "phase": "Progressing",
        "canary": "chat-70b@fp8",
        "baseline": "chat-70b@q4",
        "steps": [5, 25, 50, 100],
        "step": 1,
        "weight": 25,
        "nextStepAt": "2026-01-05T10:05:00Z",
        "comparison": {
            "canary": {"requests": 100, "error_rate": 0.02, "p95_ms": 140, "ttft_ms": 60},
            "baseline": {"requests": 300, "error_rate": 0.01, "p95_ms": 100, "ttft_ms": 50},
        },
        "verdict": "healthy",
    }
    degraded = {"actions": ["hedge", "local-only"], "since": "t0", "reason": "slow WAN"}
    live = {**ENDPOINT, "status": {"rollout": status, "degrade": degraded}}
    plan = canary_data.rollout(live, policies)
    assert plan is not None and (plan.source, plan.phase, plan.step) == ("status", "Progressing", 1)
    compared = canary_data.comparison_frame(plan.comparison).set_index("Metric")
    assert compared.loc["Latency p95 (ms)", "Canary − baseline"] == 40
    assert canary_data.degrade_text(live) == "degraded: hedge, local-only since t0 (slow WAN)"
    assert canary_data.degrade_text(ENDPOINT) is None
    assert len(charts.rollout_chart(plan.steps, plan.step, plan.weight).data[0].x) == 4


def node(name: str, domain: str, cls: str, util: float, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"domain": domain, "nodeClassRef": cls, **spec},
        "status": {
            "gpus": [
                {"utilPct": util, "memUsedMiB": 1024, "memTotalMiB": 4096, "tempC": 50 + i}
                for i in range(2)
            ],
            "facts": {"gpu": "L4", "gpuCount": 2},
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "Cordoned", "status": "True" if spec.get("cordoned") else "False"},
                {"type": "ResolvedRefs", "status": "True"},
            ],
        },
    }


def test_nodes_as_heatmap_cells_filters_and_conditions() -> None:
    nodes = [
        node("a", "edge", "l4", 10),
        node("b", "edge", "l4", 90, cordoned=True),
        node("c", "cloud", "h100", 50),
    ]
    frame = fleet_data.frame(nodes)
    assert list(frame["Node"]) == ["c", "a", "b"]  # by domain, class, name
    row = frame.set_index("Node").loc["b"]
    assert (row["Util %"], row["VRAM %"], row["Temp °C"], row["GPUs"]) == (90, 25, 51, "2xL4")
    assert row["Status"] == "Ready,Cordoned"
    grid = fleet_data.grid(frame, "Util")
    assert grid.rows == ["cloud · h100", "edge · l4"]
    assert grid.z == [[50.0, None], [10.0, 90.0]]
    assert grid.text[1] == ["a (Ready)", "b (Ready,Cordoned)"]
    only = fleet_data.apply(frame, fleet_data.Filters(domains=("edge",), states=("Cordoned",)))
    assert list(only["Node"]) == ["b"]
    assert list(fleet_data.apply(frame, fleet_data.Filters(text="C"))["Node"]) == ["c"]
    conds = fleet_data.conditions(nodes)
    assert list(conds["Node"]) == ["b"] and conds.iloc[0]["Condition"] == "Cordoned"
    assert fleet_data.summary(frame)["Cordoned"] == 1
    assert fleet_data.frame([]).empty


def test_jobs_and_what_their_pools_drew() -> None:
    jobs = [
        {
            "metadata": {"name": "ft", "project": "p"},
            "spec": {"parallelism": {"dp": 2, "tp": 2}, "capacityPoolRef": "gold"},
            "status": {
                "phase": "Running",
                "gpus": 4,
                "step": 50,
                "totalSteps": 200,
                "gpuHours": 1.5,
                "costUSD": 4.5,
                "pool": "p/gold",
            },
        },
        {
            "metadata": {"name": "queued", "project": "p"},
            "spec": {"capacityPoolRef": "gold", "targetGpus": 8},
            "status": {"phase": "Pending"},
        },
    ]
    frame = jobs_data.frame(jobs).set_index("Job")
    assert (frame.loc["ft", "GPUs"], frame.loc["ft", "Progress %"]) == ("4/4", 25.0)
    assert frame.loc["queued", "GPUs"] == "0/8"
    pools = [{"metadata": {"name": "gold", "project": "p"}, "spec": {"quotaGpuHours": 10}}]
    usage = jobs_data.pools(pools, jobs).iloc[0]
    assert (usage["GPU-hours"], usage["Cost USD"], usage["GPUs in use"]) == (1.5, 4.5, 4)
    assert pd.isna(usage["Budget USD"])
    assert len(charts.pool_chart(jobs_data.pools(pools, jobs)).data) == 2


def test_events_newest_first_and_audit_diffs() -> None:
    items = [
        {"time": "2026-01-05T10:00:00.000Z", "type": "Normal", "actor": "admin", "message": "a"},
        {"time": "2026-01-05T10:05:00.000Z", "type": "Warning", "actor": "bob", "message": "b"},
    ]
    frame = events_data.events(items)
    assert list(frame["Who"]) == ["bob", "admin"]
    assert list(events_data.events(items, events_data.EventFilter(who="ADM"))["Who"]) == ["admin"]
    assert events_data.EventFilter(kind="Node", type="Warning").query() == {
        "kind": "Node",
        "type": "Warning",
    }
    counts = events_data.per_bucket(frame)
    assert counts["Events"].sum() == 2 and events_data.bucket_size(300) == "1min"
    diff = [{"path": "spec.cordoned", "before": False, "after": True}] * 6
    assert events_data.changed(diff).endswith("; and 2 more")
    audit = events_data.audit([{"seq": 1, "diff": diff[:1]}, {"seq": 2, "actor": "x"}])
    assert list(audit["Seq"]) == [2, 1]
    assert audit.iloc[1]["Changed"] == "spec.cordoned: False → True"


def test_who_may_act_follows_the_api_roles() -> None:
    viewer = Principal.from_whoami({"subject": "v", "roles": ["viewer"], "projects": ["p"]})
    assert not viewer.may_change("Node", "p") and not viewer.reads_audit
    ops = Principal.from_whoami({"subject": "o", "roles": ["platformAdmin"], "projects": ["p"]})
    assert ops.may_change("Node", "p") and ops.may_change("Endpoint", "p")
    assert not ops.may_change("Job", "p") and not ops.may_change("Node", "q")
    admin = Principal.from_whoami({"subject": "a", "roles": ["orgAdmin"], "projects": ["*"]})
    assert admin.may_change("Job", "anything") and admin.reads_audit


def test_destructive_actions_need_the_name_typed() -> None:
    drain = ActionRequest.of("nodes", "drain", ["n1"])
    assert drain.destructive and drain.confirm_word == "n1" and drain.title == "Drain node n1"
    assert not confirmed(drain, "n2") and not confirmed(drain, None) and confirmed(drain, " n1 ")
    several = ActionRequest.of("nodes", "quarantine", ["n1", "n2"], {"reason": "ECC"})
    assert several.confirm_word == "2 nodes" and confirmed(several, "2 nodes")
    assert several.title == "Quarantine 2 nodes: n1, n2"
    cordon = ActionRequest.of("nodes", "cordon", ["n1"])
    assert not cordon.destructive and confirmed(cordon, "")
    assert ActionRequest.of("endpoints", "rollback", ["chat"]).destructive
    split = ActionRequest.of("endpoints", "trafficSplit", ["chat"], destructive=True)
    assert split.destructive


def test_streamlit_runs_headless_on_loopback_without_telemetry_or_the_token_in_argv() -> None:
    argv = launch.streamlit_argv()
    assert argv[1:5] == ["-m", "streamlit", "run", str(SERVER)] and Path(argv[4]).is_file()
    flags = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert launch.streamlit_argv("0.0.0.0", 9000)[6] == "0.0.0.0"
    token = new_token()
    ctx = Context(api_url="http://127.0.0.1:1", token=token, project="p")
    env = launch.streamlit_env(ctx, {"INFERMESH_TOKEN": "stale", "PATH": "/bin"})
    assert env["INFERMESH_TOKEN"] == token and env["INFERMESH_API"] == "http://127.0.0.1:1"
    assert env["INFERMESH_PROJECT"] == "p" and env["PATH"] == "/bin"
    assert "INFERMESH_TOKEN" not in launch.streamlit_env(Context(), {"INFERMESH_TOKEN": "x"})
    assert launch.url("0.0.0.0", 8501) == "http://127.0.0.1:8501"


def test_up_starts_the_dashboard_last_on_loopback(tmp_path: Path) -> None:
    token = new_token()
    plan = Plan(tmp_path, ["127.0.0.1:2379"], 8080, token, None, dashboard_port=8555)
    last = services(plan)[-1]
    assert last.name == "dashboard" and last.url == "http://127.0.0.1:8555"
    assert last.ready_url == "http://127.0.0.1:8555/_stcore/health"
    assert last.argv[-5:] == ["dashboard", "--address", "127.0.0.1", "--port", "8555"]
    assert token not in " ".join(last.argv) and last.env == {"INFERMESH_TOKEN": token}
    plan.dashboard_port = 0  # --no-dashboard
    assert "dashboard" not in [s.name for s in services(plan)]


def test_charts_draw_with_the_plotly_js_that_plotly_py_writes_for() -> None:
    # An upgrade of plotly.py fails here until `make plotly-bundle` builds the matching
    # plotly.js into dashboard/assets/.
    assert plotly.offline.get_plotlyjs_version() == plot.PLOTLY_JS_VERSION
    assert f"plotly.js v{plot.PLOTLY_JS_VERSION} " in plot.BUNDLE.read_text()[:100]
    heatmap = charts.heatmap([[50.0, None]], [["n1", ""]], ["eu/h100"], "GPU util", unit="%")
    figure = json.loads(plot.payload(heatmap, "fleet.util"))
    assert figure["config"] == plot.CONFIG and figure["layout"]["uirevision"] == "fleet.util"


def test_a_trace_the_bundle_cannot_draw_is_refused_by_name() -> None:
    polar = go.Figure(go.Scatterpolar(r=[1, 2], theta=[0, 90]))
    with pytest.raises(ValueError, match=r"cannot draw \['scatterpolar'\] traces"):
        plot.payload(polar, "k")
