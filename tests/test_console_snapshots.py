"""What each view looks like, frozen: the demo fleet (console/demo.py) at a fixed time, in a
160x45 terminal, compared with the SVGs in tests/__snapshots__/ (`pytest --snapshot-update`
rewrites them after a change you meant)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from infermesh.console import demo
from infermesh.console.app import ConsoleApp
from infermesh.console.header import HeaderBar
from infermesh.console.source import StaticSource
from tests.test_console_pilot import SIZE, command, console, demo_app, settled, until

Step = Callable[[Pilot[Any]], Awaitable[None]]


async def add_history(pilot: Pilot[Any], source: StaticSource) -> None:
    """More readings of every node, each flushed on its own, so the sparklines have a shape."""
    app = console(pilot)
    for step in range(1, 12):
        for node in demo.nodes():
            for i, gpu in enumerate(node["status"]["gpus"]):
                gpu["utilPct"] = float((gpu["utilPct"] + 17 * step * (i + 1)) % 100)
            source.push("nodes", "MODIFIED", node)
        await until(pilot, lambda: not source.queued("nodes"), "the readings taken")
        app.flush()


def steps(
    *keys: str, view: str | None = None, row: str | None = None, history: bool = False
) -> Step:
    async def run(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        app = console(pilot)
        if history:
            await add_history(pilot, app.source)
        await until(pilot, lambda: app.browser.query_one(HeaderBar).link == "live", "live")
        if view is not None:
            await command(pilot, view)
        if row is not None:
            table = app.browser.table
            assert table is not None
            table.move_cursor(row=table.get_row_index(row))
        if keys:
            await pilot.press(*keys)
        await pilot.pause()

    return run


VIEWS: dict[str, Step] = {
    "nodes": steps(),
    "endpoints_describe": steps("d", view="ep", row="default/chat-pro"),
    "jobs": steps(view="jobs"),
    "slo": steps(view="slo"),
    "events": steps(view="ev"),
    "domains": steps(view="domains"),
    "pools": steps(view="pools"),
    "policies": steps(view="policies"),
    "strategies": steps(view="strategies"),
    "replicas": steps("enter", view="ep", row="default/chat-pro"),
    "help": steps("question_mark"),
    "quarantine_dialog": steps("Q", row="default/eu-h100-2"),
    "split_dialog": steps("percent_sign", view="ep", row="default/chat-pro"),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_view_snapshot(name: str, snap_compare: Any) -> None:
    assert snap_compare(demo_app(), terminal_size=SIZE, run_before=VIEWS[name])


def test_node_detail_with_sparklines(snap_compare: Any) -> None:
    run = steps("d", row="default/eu-h100-1", history=True)
    assert snap_compare(demo_app(), terminal_size=SIZE, run_before=run)


def test_readonly_production_context(snap_compare: Any) -> None:
    app: ConsoleApp = demo_app(readonly=True, production=True, context="prod-eu")
    assert snap_compare(app, terminal_size=SIZE, run_before=steps())
