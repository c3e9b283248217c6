"""The console's pure parts: filters, history, the coalescing buffer and `apply`, the columns and
their thresholds, the action specs, the key registry, the context settings, CSV export."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from infermesh.answers import WatchEvent
from infermesh.cli.printers import rollout_summary
from infermesh.console import actions, commands, demo, feed
from infermesh.console.config import settings
from infermesh.console.csv_export import export_dir, export_path, write_csv
from infermesh.console.filter import FilterError, parse
from infermesh.console.history import History, Place
from infermesh.console.state import ConsoleState
from infermesh.console.theme import is_production
from infermesh.console.views import VIEWS, Ctx, row, view_for
from infermesh.console.views.base import CRIT, OK, WARN, Cell

NODES = VIEWS["nodes"]


def ctx(state: ConsoleState | None = None) -> Ctx:
    return Ctx(demo.NOW, state)


def cells_of(view: str, obj: dict[str, Any], state: ConsoleState | None = None) -> dict[str, Cell]:
    spec = VIEWS[view]
    return {c.id: cell for c, cell in zip(spec.columns, row(spec, obj, ctx(state)), strict=True)}


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in items if o["metadata"]["name"] == name)


# --- filter ---------------------------------------------------------------------------------


def test_filter_regex_invert_and_pairs() -> None:
    cells = {"NAME": "eu-h100-2", "DOMAIN": "cloud-eu", "STATUS": "Ready,Cordoned"}
    labels = {"tier": "gold"}
    assert parse("h100").matches(labels, cells)  # type: ignore[union-attr]
    assert not parse("!h100").matches(labels, cells)  # type: ignore[union-attr]
    assert not parse("H100").matches(labels, cells)  # type: ignore[union-attr]  # smart case
    assert parse("/domain=cloud-.*").matches(labels, cells)  # type: ignore[union-attr]
    assert not parse("domain=cloud").matches(labels, cells)  # type: ignore[union-attr]  # whole
    assert parse("tier=gold,status=.*Cordoned").matches(labels, cells)  # type: ignore[union-attr]
    assert parse("tier!=silver").matches(labels, cells)  # type: ignore[union-attr]
    assert not parse("!tier=gold").matches(labels, cells)  # type: ignore[union-attr]
    assert not parse("zone=a").matches(labels, cells)  # type: ignore[union-attr]  # no such key
    assert parse("") is None and parse("/") is None
    with pytest.raises(FilterError, match="not a valid regex"):
        parse("[oops")
    with pytest.raises(FilterError, match="needs a pattern"):
        parse("!")


# --- history --------------------------------------------------------------------------------


def test_history_back_forward_and_last() -> None:
    h = History(Place("nodes"))
    h.go(Place("endpoints"))
    h.go(Place("jobs"))
    assert h.back() == Place("endpoints")
    assert h.forward() == Place("jobs")
    assert h.forward() is None
    assert h.last() == Place("endpoints")
    assert h.last() == Place("jobs")  # `-` twice: back where we were
    h.back()
    h.go(Place("slo"))  # a new visit drops what was ahead
    assert h.forward() is None
    assert str(Place("replicas", "default/chat")) == "replicas(default/chat)"


# --- feed -----------------------------------------------------------------------------------


def test_the_buffer_keeps_the_last_write_of_each_key() -> None:
    buffer = feed.Coalescer()
    buffer.put("nodes", "p/a", {"v": 1})
    buffer.put("nodes", "p/a", {"v": 2})
    buffer.put("nodes", "p/b", None)
    buffer.put("jobs", "p/j", {"v": 3})
    assert buffer.received == 4
    batches = {b.kind: b for b in buffer.drain()}
    assert batches["nodes"].changes == {"p/a": {"v": 2}, "p/b": None}
    assert not buffer
    buffer.put("nodes", "p/a", {"v": 4})
    buffer.reset("nodes", {"p/c": {"v": 5}})  # a snapshot replaces what was pending
    assert [(b.kind, b.changes, b.reset) for b in buffer.drain()] == [
        ("nodes", {"p/c": {"v": 5}}, True)
    ]


def test_apply_adds_removes_and_changes_only_the_cells_that_changed() -> None:
    table = feed.TableState(NODES)
    node = by_name(demo.nodes(), "eu-h100-1")
    delta = feed.apply({"default/eu-h100-1": node}, table, ctx())
    assert [k for k, _ in delta.added] == ["default/eu-h100-1"] and not delta.changed
    hotter = json.loads(json.dumps(node))
    for gpu in hotter["status"]["gpus"]:
        gpu["tempC"] = 91.0
    delta = feed.apply({"default/eu-h100-1": hotter}, table, ctx())
    ((_, diff),) = delta.changed
    assert [NODES.columns[i].id for i in diff] == ["temp"]  # only the cell that changed
    assert next(iter(diff.values())).style == CRIT
    assert not feed.apply({"default/eu-h100-1": hotter}, table, ctx())  # nothing new
    table.filter = parse("cloud-us")
    delta = feed.resync({"default/eu-h100-1": hotter}, table, ctx())
    assert delta.removed == ["default/eu-h100-1"]  # filtered out
    assert feed.apply({"default/gone": None}, table, ctx()).removed == []


def test_tick_redraws_only_the_ages() -> None:
    table = feed.TableState(NODES)
    nodes = {f"default/{n['metadata']['name']}": n for n in demo.nodes()}
    feed.apply(nodes, table, ctx())
    assert not feed.tick(nodes, table, ctx())  # the same time: nothing moved
    later = Ctx(demo.NOW + timedelta(days=2), None)
    delta = feed.tick(nodes, table, later)
    assert len(delta.changed) == len(nodes)
    assert {tuple(diff) for _, diff in delta.changed} == {(len(NODES.columns) - 1,)}  # AGE
    assert table.shown["default/edge-l4-1"][-1].plain == "4d"


def test_state_keeps_history_and_finds_an_endpoints_slos() -> None:
    state = ConsoleState(max_events=3)
    node = by_name(demo.nodes(), "edge-l4-2")
    state.apply("nodes", {"default/edge-l4-2": node})
    state.apply("nodes", {"default/edge-l4-2": node})
    assert list(state.util["default/edge-l4-2"][0]) == [82.5, 82.5]
    state.apply("nodes", {}, reset=True)
    assert state.util == {} and state.objects["nodes"] == {}
    state.apply("slos", {f"default/{s['metadata']['name']}": s for s in demo.slos()}, True)
    assert [s["metadata"]["name"] for s in state.endpoint_slos("default/chat-pro")] == [
        "chat-pro-latency-p95",
        "chat-pro-ttft",
    ]
    events = demo.events()
    touched = state.apply("events", {e["id"]: e for e in events})
    assert len(state.objects["events"]) == 3  # the newest three kept
    assert set(state.objects["events"]) == {e["id"] for e in events[:3]}
    assert touched == {e["id"] for e in events}


async def test_follow_turns_the_opening_state_into_one_reset() -> None:
    class Source:
        async def watch(self, kind: str) -> Any:
            a, b = demo.nodes()[:2]
            for event in (
                WatchEvent("ADDED", a, "1"),
                WatchEvent("BOOKMARK", {}, "2"),
                WatchEvent("DELETED", a, "3"),
                WatchEvent("RESYNC", {}, ""),
                WatchEvent("ADDED", b, "4"),
                WatchEvent("BOOKMARK", {}, "4"),
            ):
                yield event

    buffer = feed.Coalescer()
    await feed.follow(Source(), "nodes", buffer)  # type: ignore[arg-type]
    (batch,) = buffer.drain()
    assert batch.reset and list(batch.changes) == ["default/edge-l4-2"]


# --- columns --------------------------------------------------------------------------------


def test_node_columns_and_thresholds() -> None:
    nodes = demo.nodes()
    hot = cells_of("nodes", by_name(nodes, "eu-h100-2"))
    assert (hot["util"].plain, hot["util"].style) == ("97%", CRIT)
    assert hot["gpus"].plain == "8xH100-80G"
    assert hot["vram"].plain == "601/637Gi"
    assert cells_of("nodes", by_name(nodes, "edge-l4-1"))["util"].style == OK
    quarantined = cells_of("nodes", by_name(nodes, "eu-a100-1"))["status"]
    assert (quarantined.plain, quarantined.style) == ("Ready,Quarantined", CRIT)
    draining = cells_of("nodes", by_name(nodes, "us-h100-1"))["status"]
    assert (draining.plain, draining.style) == ("Ready,Draining,Cordoned", WARN)
    bare = {"metadata": {"name": "n", "project": "default"}, "spec": {}}
    empty = cells_of("nodes", bare)
    assert empty["util"].plain == "-" and empty["status"].plain == "Unknown"
    assert empty["util"].sort > hot["util"].sort  # missing values sort last


def test_endpoint_columns_with_and_without_rollout() -> None:
    state = ConsoleState()
    state.apply("metrics", demo.METRICS, True)
    state.apply("slos", {f"default/{s['metadata']['name']}": s for s in demo.slos()}, True)
    endpoints = demo.endpoints()
    pro = cells_of("endpoints", by_name(endpoints, "chat-pro"), state)
    assert pro["rollout"].plain == "25% 2/4 Progressing"
    assert pro["degrade"].plain == "hedge"
    assert pro["split"].plain == "q4_k_m=75,fp8=25"
    assert pro["slo"].plain == "Warning"
    lite = cells_of("endpoints", by_name(endpoints, "chat-lite"), state)
    assert (lite["p95"].plain, lite["p95"].style) == ("171ms", CRIT)  # over its 150 ms target
    assert lite["errors"].style == CRIT and lite["slo"].plain == "Breaching"
    assert lite["rollout"].plain == "-" and lite["degrade"].plain == "-"
    odd = by_name(endpoints, "chat-us") | {
        "status": {"rollout": {"phase": "Holding"}, "degrade": "nonsense"}
    }
    cells = cells_of("endpoints", odd)  # no state: no metrics, no SLOs
    assert cells["rollout"].plain == "Holding" and cells["degrade"].plain == "-"
    assert cells["p95"].plain == "-" and cells["slo"].plain == "-"
    assert rollout_summary({"weight": 100, "steps": [5, 100], "step": 1, "phase": "Promoted"}) == (
        "100% 2/2 Promoted"
    )


def test_job_and_slo_columns() -> None:
    jobs = demo.jobs()
    running = cells_of("jobs", by_name(jobs, "ft-news-xxl"))
    assert running["gpus"].plain == "8 [4-8]"
    assert running["step"].plain == "1540/2000"
    assert running["ckpt"].plain == "1500 (3m)"
    assert running["gpuhours"].plain == "12.43/200000"
    assert cells_of("jobs", by_name(jobs, "pretrain-tiny"))["gpuhours"].style == WARN
    assert cells_of("jobs", by_name(jobs, "lora-support"))["phase"].plain == "Paused"
    slos = demo.slos()
    breaching = cells_of("slo", by_name(slos, "chat-lite-latency-p95"))
    assert breaching["budget"].plain == "-21.0%" and breaching["budget"].style == CRIT
    assert breaching["burn1h"].plain == "16.70x" and breaching["burn1h"].style == CRIT
    assert breaching["burn3d"].style == CRIT  # over 1x, the 3d rule's factor
    assert breaching["alerts"].plain == "page-1h-5m,page-6h-30m"
    ok = cells_of("slo", by_name(slos, "chat-us-availability"))
    assert ok["alerts"].plain == "-" and ok["status"].style == OK


def test_event_columns_sort_by_real_time() -> None:
    events = demo.events()
    older = cells_of("events", events[1])["time"]
    newer = cells_of("events", events[0])["time"]
    assert newer.sort > older.sort
    assert cells_of("events", events[4])["type"].style == WARN


# --- actions, keys, settings, export ----------------------------------------------------------


def test_split_parsing_and_preview() -> None:
    split = actions.parse_split("q4_k_m=80, fp8=20", "chat-70b@q4_k_m")
    assert split == [
        {"modelRef": "chat-70b@q4_k_m", "weight": 80},
        {"modelRef": "chat-70b@fp8", "weight": 20},
    ]
    for bad, message in (
        ("q4=50", "add up to 50"),
        ("fp8", "revision=weight"),
        ("a=50 a=50", "listed twice"),
        ("", "at least one"),
    ):
        with pytest.raises(actions.SplitError, match=message):
            actions.parse_split(bad, "m@a")
    before = [("chat-70b@q4_k_m", 100)]
    assert actions.split_preview(before, split) == [
        ("chat-70b@q4_k_m", 100, 80),
        ("chat-70b@fp8", 0, 20),
    ]
    assert actions.split_text(before) == "q4_k_m=100"


def test_which_actions_need_the_name_typed() -> None:
    typed = {a.id for a in actions.ACTIONS if a.typed}
    assert typed == {"nodes.drain", "nodes.quarantine", "endpoints.rollback", "jobs.kill"}
    quarantine = actions.BY_ID["nodes.quarantine"]
    assert quarantine.reason == "required"
    assert actions.typed_phrase(quarantine, ["gpu-1"]) == "gpu-1"
    assert actions.typed_phrase(quarantine, ["gpu-1", "gpu-2"]) == "2 nodes"
    assert actions.body(actions.BY_ID["nodes.drain"], {"timeoutSeconds": 60, "force": True}) == {
        "timeoutSeconds": 60,
        "force": True,
    }


def test_the_registry_binds_each_key_once_per_view_and_readonly_drops_actions() -> None:
    assert commands.check_unique(commands.REGISTRY) == []
    action_keys = {a.key for a in actions.ACTIONS}
    sort_keys = {c.key for c in commands.REGISTRY if c.group == "Sort"}
    assert not action_keys & sort_keys  # Q sorts nowhere: it quarantines in one view only
    everything = {c.action for c in commands.commands(readonly=False)}
    readonly = {c.action for c in commands.commands(readonly=True)}
    assert {f"act('{a.id}')" for a in actions.ACTIONS} <= everything
    assert not any(a.startswith("act(") for a in readonly)
    assert not any(b.action.startswith("act(") for b in commands.bindings(readonly=True))
    for name in (
        "nodes",
        "no",
        "ep",
        "endpoints",
        "jobs",
        "slo",
        "ev",
        "events",
        "domains",
        "pools",
        "policies",
        "strategies",
    ):
        assert view_for(name) is not None, name
    assert view_for("replicas") is None  # reached by drilling, not by name


def test_settings_from_the_context_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("INFERMESH_API", "INFERMESH_TOKEN", "INFERMESH_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INFERMESH_HOME", str(tmp_path))
    (tmp_path / "context.json").write_text(
        json.dumps(
            {"api_url": "http://127.0.0.1:9", "token": "t", "name": "prod-eu", "readonly": True}
        )
    )
    s = settings([])
    assert (s.api_url, s.token, s.readonly, s.production) == ("http://127.0.0.1:9", "t", True, True)
    other = tmp_path / "lab.json"
    other.write_text(json.dumps({"api_url": "http://lab:1", "production": False, "project": "x"}))
    s = settings(["--context", str(other), "--token", "flag", "--readonly"])
    assert (s.api_url, s.token, s.project, s.context, s.readonly, s.production) == (
        "http://lab:1",
        "flag",
        "x",
        "lab",
        True,
        False,
    )
    assert is_production("eu-production", {}) and not is_production("reproduce", {})
    assert is_production("lab", {"production": True})


def test_csv_export(tmp_path: Path) -> None:
    assert export_dir({"INFERMESH_HOME": str(tmp_path)}) == tmp_path
    path = export_path("nodes", demo.NOW, tmp_path)
    assert path.name == "infermesh-nodes-20261122-104207.csv"
    write_csv(path, ["NAME", "UTIL"], [["a", "1%"]])
    assert export_path("nodes", demo.NOW, tmp_path).name.endswith("-2.csv")
    assert path.read_text().splitlines() == ["NAME,UTIL", "a,1%"]
    assert demo.stamp(60) < demo.stamp(0)
    assert (demo.NOW - timedelta(seconds=1)).year == 2026
