"""The console driven key by key (Textual's pilot) over fixed data (console/demo.py through
`StaticSource`, the app's data seam): views and their names, history, drilling, filters, sort,
marks, help, the palette, read-only mode, CSV export, live updates and the dialogs' defaults.
Actions reaching the real API are in test_console_api.py."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.command import CommandList
from textual.pilot import Pilot
from textual.widgets import Button, Input

from infermesh.console import demo
from infermesh.console.app import ConsoleApp
from infermesh.console.config import Settings
from infermesh.console.detail import DetailPane
from infermesh.console.dialogs import ConfirmScreen
from infermesh.console.header import HeaderBar
from infermesh.console.help import HelpScreen
from infermesh.console.palette import ConsoleCommands
from infermesh.console.source import StaticSource

SIZE = (160, 45)


def demo_app(source: Any = None, **settings: Any) -> ConsoleApp:
    source = source or demo.source()
    config = Settings(api_url="demo", token=None, project="default", context="local")
    config = Settings(**(config.__dict__ | settings))
    return ConsoleApp(source, config=config, clock=lambda: demo.NOW)


async def until(pilot: Pilot[Any], condition: Callable[[], Any], what: str, timeout: float = 20):
    """Wait (pausing the pilot) until `condition()` holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await pilot.pause(0.05)


async def settled(pilot: Pilot[Any], kinds: tuple[str, ...] = ("nodes", "events")) -> None:
    """Every stream of the fixed data has arrived and been drawn."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    wanted = (*kinds, "endpoints", "jobs", "slos", "metrics", "domains")
    await until(
        pilot,
        lambda: all(app.state.objects.get(k) for k in wanted) and not app.buffer,
        "the fixed data arrived",
    )
    app.flush()
    await pilot.pause()


def console(pilot: Pilot[Any]) -> ConsoleApp:
    assert isinstance(pilot.app, ConsoleApp)
    return pilot.app


def names(app: ConsoleApp) -> list[str]:
    """The rows of the table on screen, in order (names without the project)."""
    table = app.browser.table
    assert table is not None
    return [str(r.key.value).split("/", 1)[-1] for r in table.ordered_rows]


def cell(app: ConsoleApp, key: str, column: str) -> str:
    table = app.browser.table
    assert table is not None
    return table.get_cell(key, column).plain


def palette_hits(app: ConsoleApp) -> list[str]:
    found = app.screen.query(CommandList)
    if not found:
        return []
    options = found.first(CommandList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


async def command(pilot: Pilot[Any], text: str, *, typed: bool = False) -> None:
    """`:text` enter (typed key by key, or the prompt filled at once: typing is slow)."""
    await prompt(pilot, "colon", text, typed)


async def filter_by(pilot: Pilot[Any], text: str, *, typed: bool = False) -> None:
    await prompt(pilot, "slash", text, typed)


async def prompt(pilot: Pilot[Any], key: str, text: str, typed: bool) -> None:
    await pilot.press(key)
    if typed:
        await pilot.press(*text)
    else:
        pilot.app.screen.query_one("#prompt", Input).value = text
    await pilot.press("enter")
    await pilot.pause()


async def test_views_by_name_and_alias() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        assert app.browser.view_name == "nodes"
        headers = app.browser.table.headers  # type: ignore[union-attr]
        for header in ("DOMAIN", "CLASS", "UTIL", "VRAM", "TEMP", "POWER", "IN-FLIGHT", "STATUS"):
            assert header in headers
        expected = {
            "ep": ("endpoints", "chat-pro"),
            "jobs": ("jobs", "ft-news-xxl"),
            "slo": ("slo", "chat-pro-ttft"),
            "ev": ("events", None),
            "domains": ("domains", "cloud-eu"),
            "pools": ("pools", "train-gold"),
            "policies": ("policies", "eu-wan-guard"),
            "strategies": ("strategies", "hybrid_mesh@1.0"),
            "no": ("nodes", "eu-h100-2"),
            "endpoints": ("endpoints", "chat-lite"),
            "events": ("events", None),
        }
        for typed, (view, row) in expected.items():
            await command(pilot, typed, typed=typed in ("ep", "no"))  # typing is slow: two
            assert app.browser.view_name == view, typed
            if row is not None:
                assert row in names(app), (typed, names(app))
        assert len(names(app)) == len(demo.events())
        await command(pilot, "bogus")
        assert app.browser.view_name == "events"  # an unknown name goes nowhere, and says so
        assert any("no view 'bogus'" in n.message for n in app._notifications)


async def test_history_last_view_and_escape() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)

        async def press(key: str) -> str:
            await pilot.press(key)
            await pilot.pause()
            return app.browser.view_name

        await command(pilot, "ep")
        await command(pilot, "jobs")
        assert await press("left_square_bracket") == "endpoints"
        assert await press("left_square_bracket") == "nodes"
        assert await press("left_square_bracket") == "nodes"  # the start: nowhere further back
        assert await press("right_square_bracket") == "endpoints"
        assert await press("minus") == "nodes"  # the view before this one
        assert await press("minus") == "endpoints"  # and back again
        assert await press("escape") == "nodes"


async def test_enter_drills_from_an_endpoint_to_its_replicas_and_on_to_a_node() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        await command(pilot, "ep")
        table = app.browser.table
        assert table is not None
        table.move_cursor(row=table.get_row_index("default/chat-pro"))
        await pilot.press("enter")
        await until(pilot, lambda: app.browser.view_name == "replicas", "the replicas view")
        # chat-pro serves q4_k_m and fp8 in edge-eu and cloud-eu: not the L4s (chat-8b), not
        # the US nodes.
        assert sorted(names(app)) == ["edge-h100-1", "eu-a100-1", "eu-h100-1", "eu-h100-2"]
        replicas = app.browser.table
        assert replicas is not None
        assert "SERVES" in replicas.headers
        replicas.move_cursor(row=replicas.get_row_index("default/eu-h100-2"))
        await pilot.press("enter")
        await until(pilot, lambda: app.browser.view_name == "nodes", "the node")
        detail = app.browser.query_one(DetailPane)
        await until(pilot, lambda: "[7] H100-80G" in detail.text, "the node's GPUs")
        assert app.browser.table.cursor_key == "default/eu-h100-2"  # type: ignore[union-attr]
        await pilot.press("escape")  # closes the pane
        await pilot.press("escape")  # then goes back
        await pilot.pause()
        assert app.browser.view_name == "replicas"


async def test_filters_regex_inverted_and_key_value() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        everything = names(app)
        assert len(everything) == 8
        await filter_by(pilot, "h100", typed=True)
        assert names(app) == ["edge-h100-1", "eu-h100-1", "eu-h100-2", "us-h100-1"]
        await filter_by(pilot, "!h100")
        assert names(app) == ["edge-l4-1", "edge-l4-2", "eu-a100-1", "us-a100-1"]
        await filter_by(pilot, "domain=cloud-eu")
        assert names(app) == ["eu-a100-1", "eu-h100-1", "eu-h100-2"]
        await filter_by(pilot, "tier=silver,domain=cloud-.*")  # a label, and a column
        assert names(app) == ["eu-a100-1", "us-a100-1"]
        await filter_by(pilot, "status!=Ready")  # what is not plainly Ready
        assert names(app) == ["eu-a100-1", "us-h100-1"]
        await filter_by(pilot, "[unclosed")
        assert names(app) == ["eu-a100-1", "us-h100-1"]  # a bad regex changes nothing
        assert any("not a valid regex" in n.message for n in app._notifications)
        await pilot.press("escape")
        await pilot.pause()
        assert names(app) == everything


async def test_sort_keys_reverse_and_stay_put_across_views() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        await pilot.press("G")  # shift+g: by GPU utilisation, lowest first
        await pilot.pause()
        assert names(app)[0] == "us-h100-1"
        await pilot.press("G")  # again: highest first
        await pilot.pause()
        assert names(app)[:2] == ["eu-h100-2", "edge-l4-2"]
        await command(pilot, "ep")
        await pilot.press("L")  # endpoints by p95 latency
        await pilot.pause()
        assert names(app) == ["chat-lite", "chat-pro", "chat-us"]
        await pilot.press("minus")
        await pilot.pause()
        assert names(app)[:2] == ["eu-h100-2", "edge-l4-2"]
        table = app.browser.table
        assert (
            table is not None
            and str(table.columns[next(iter(k for k in table.columns if k.value == "util"))].label)
            == "UTIL↓"
        )
        await pilot.press("minus")
        await pilot.pause()
        assert names(app) == ["chat-lite", "chat-pro", "chat-us"]


async def test_space_marks_rows_and_ctrl_u_clears_them() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        await pilot.press("space", "space")
        await pilot.pause()
        table = app.browser.table
        assert table is not None
        assert table.selection() == ["default/edge-h100-1", "default/edge-l4-1"]
        assert "2 marked" in str(app.browser.query_one("#crumbs").render())
        await pilot.press("ctrl+u")
        await pilot.pause()
        assert table.selection() == ["default/edge-l4-2"]  # the cursor moved on with each mark


async def test_help_is_built_from_the_live_bindings() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        rows = app.screen.rows
        assert ("Actions", "Q", "Quarantine...") in rows
        assert ("Sort", "shift+g", "Sort by UTIL") in rows
        assert ("Navigation", ":", "Go to view") in rows
        assert not any(r[2] == "Traffic split..." for r in rows)  # not in the nodes view
        await pilot.press("escape")
        await command(pilot, "ep")
        await pilot.press("question_mark")
        await pilot.pause()
        assert ("Actions", "%", "Traffic split...") in app.screen.rows  # type: ignore[attr-defined]
        assert not any(r[1] == "Q" for r in app.screen.rows)  # type: ignore[attr-defined]


async def test_the_palette_offers_views_and_the_views_commands() -> None:
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"view jobs")
        await until(pilot, lambda: palette_hits(app), "the palette's hits")
        assert palette_hits(app)[0].startswith("View Jobs")
        await pilot.press("enter")
        await until(pilot, lambda: app.browser.view_name == "jobs", "the jobs view")
        offered = [c.description for c in ConsoleCommands(app.browser)._commands()]
        assert "Scale..." in offered and "View Nodes" in offered
        assert "Cordon" not in offered  # a nodes action, and this is the jobs view


async def test_readonly_unbinds_every_action() -> None:
    app = demo_app(readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        bindings = app.browser.active_bindings
        for key in ("c", "u", "r", "Q", "U"):
            assert key not in bindings, key
        assert "colon" in bindings and "slash" in bindings
        assert app.browser.query_one(HeaderBar).readonly
        assert " RO " in str(app.browser.query_one(HeaderBar).render())
        await pilot.press("Q", "c")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("question_mark")
        await pilot.pause()
        assert not any(r[0] == "Actions" for r in app.screen.rows)  # type: ignore[attr-defined]
        await pilot.press("escape")
        await command(pilot, "ep")
        assert "percent_sign" not in app.browser.active_bindings
        assert "P" not in app.browser.active_bindings and "R" not in app.browser.active_bindings
        await command(pilot, "jobs")
        assert not {"p", "s", "k", "u", "ctrl+k"} & set(app.browser.active_bindings)
        offered = [c.description for c in ConsoleCommands(app.browser)._commands()]
        assert "Scale..." not in offered and "View Nodes" in offered


async def test_typed_confirmation_needs_the_exact_name_and_a_reason() -> None:
    source = demo.source()
    async with demo_app(source).run_test(size=SIZE) as pilot:
        await settled(pilot)
        app = console(pilot)
        await pilot.press("Q")  # quarantine edge-h100-1 (the first row)
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        dialog = app.screen
        confirm = dialog.query_one("#confirm", Button)
        assert confirm.disabled
        await pilot.click("#typed")
        await pilot.press(*"edge-h100-1")
        await pilot.pause()
        assert confirm.disabled  # the reason is still missing
        await pilot.click("#reason")
        await pilot.press(*"ECC errors")
        await pilot.pause()
        assert not confirm.disabled
        dialog.query_one("#typed", Input).value = "edge-h100-2"
        await pilot.pause()
        assert confirm.disabled  # not the node's name
        dialog.query_one("#typed", Input).value = "edge-h100-1"
        await pilot.pause()
        await pilot.click("#confirm")
        await until(pilot, lambda: source.calls, "the action sent")
        assert source.calls == [("nodes", "edge-h100-1", "quarantine", {"reason": "ECC errors"})]


async def test_live_changes_are_coalesced_into_cell_updates() -> None:
    source = demo.source()
    app = demo_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        flushes = app.flushes
        node = next(n for n in demo.nodes() if n["metadata"]["name"] == "edge-h100-1")
        for util in range(1, 51):  # a burst: 50 changes of one node
            node["status"]["gpus"][0]["utilPct"] = float(util)
            source.push("nodes", "MODIFIED", {**node, "status": {**node["status"]}})
        await until(pilot, lambda: cell(app, "default/edge-h100-1", "util") == "50%", "util 50%")
        assert app.flushes - flushes <= 3  # a burst is drawn a few times, not 50
        assert len(app.state.util["default/edge-h100-1"][0]) > 1  # the sparkline's history
        gone = demo.nodes()[0]  # edge-l4-1
        source.push("nodes", "DELETED", gone)
        new = demo.node("edge-l4-9", "edge-l4-eu", "edge-eu", "L4-24G", [5.0], seed=9)
        source.push("nodes", "ADDED", new)
        await until(pilot, lambda: "edge-l4-9" in names(app), "the new node")
        assert "edge-l4-1" not in names(app)
        assert names(app) == sorted(names(app))  # the new row took its place in the sort


async def test_events_newest_first_warnings_only_and_followed_live() -> None:
    source = demo.source()
    app = demo_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await command(pilot, "ev")
        table = app.browser.table
        assert table is not None
        times = [table.get_cell(r.key, "time").plain for r in table.ordered_rows]
        assert times == sorted(times, reverse=True)
        await pilot.press("w")
        await pilot.pause()
        types = {table.get_cell(r.key, "type").plain for r in table.ordered_rows}
        assert types == {"Warning"}
        assert "warnings only" in str(app.browser.query_one("#crumbs").render())
        await pilot.press("w")
        await pilot.pause()
        newest = demo.events()[0] | {"id": "zz-new", "time": demo.stamp(-5), "reason": "Cordon"}
        source.push_event(newest)
        await until(pilot, lambda: table.row_count == len(demo.events()) + 1, "the new event")
        assert table.ordered_rows[0].key.value == "zz-new"
        await filter_by(pilot, "quarantine")
        assert table.row_count == 1  # the search


async def test_ctrl_s_saves_the_table_as_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERMESH_HOME", str(tmp_path))
    async with demo_app().run_test(size=SIZE) as pilot:
        await settled(pilot)
        await filter_by(pilot, "domain=cloud-us")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: list(tmp_path.glob("*.csv")), "the CSV file")
        path = next(tmp_path.glob("infermesh-nodes-*.csv"))
        rows = list(csv.reader(path.open()))
        assert rows[0][:3] == ["NAME", "DOMAIN", "CLASS"]
        assert [r[0] for r in rows[1:]] == ["us-a100-1", "us-h100-1"]
        assert any(str(path) in n.message for n in console(pilot)._notifications)


async def test_a_production_context_is_red() -> None:
    app = demo_app(production=True, context="prod-eu")
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        assert app.theme == "infermesh-production"
        assert "PRODUCTION" in str(app.browser.query_one(HeaderBar).render())


def test_static_source_records_actions_without_a_loop() -> None:
    source = StaticSource({"nodes": demo.nodes()})
    assert source.objects["nodes"][0]["metadata"]["name"] == "edge-l4-1"
    assert source.calls == []
