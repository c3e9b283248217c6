#!/usr/bin/env python
"""Console benchmark: `infermesh-console` following 2,000 nodes that change at 10 % a second.

    .venv/bin/python bench/console.py [--nodes 2000] [--rate 0.10] [--seconds 20]
                                      [--gpus 8] [--wait-idle S] [--out bench/results/console.json]
    .venv/bin/python bench/console.py --screens [--screens-dir docs/console]

The app runs headless (`App.run_test`, a 160x45 terminal) in this process on fixed data: the
nodes go in through the app's data seam (`StaticSource`, console/source.py), and a producer
pushes changed nodes into its watch stream at `rate` x `nodes` a second (in 20 chunks a
second), exactly as the API's watch would deliver them. No API, no etcd: the figure is the
console's own cost, from the stream to the table (coalescing buffer, ConsoleState.apply, the
pure `feed.apply`, `update_cell` by row key, Textual's rendering).

Two phases of `seconds / 2` each: the nodes view sorted by name (a change touches cells
only), then sorted by GPU utilisation, highest first (every batch re-sorts the table). Each
reports:
- the time of one flush (apply one coalesced batch: the state, the diff, the table's cells),
  median / p95 / max ms, and the changes per batch;
- the console's CPU: process CPU time / wall time over the phase (the producer included, a
  small share);
- input responsiveness: every 1.5 s a key press switches views (`:ep` enter, then `-` back)
  while updates flow; the time from the first key to the new view on screen.

Target (issue 7): one batch <= 100 ms. `--screens` instead writes an SVG of each view, on the
demo data (console/demo.py), into docs/console/.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import ROOT, latency_summary, machine_facts, percentile, wait_until_idle, write_report
from textual import events

from infermesh.console import demo
from infermesh.console.app import ConsoleApp
from infermesh.console.source import StaticSource

TARGET_MS = 100.0
SIZE = (160, 45)
CHUNKS_PER_S = 20


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Meter:
    """Wraps the app's flush: how long each takes and how many changes it drew."""

    def __init__(self, app: ConsoleApp) -> None:
        self.app = app
        self.times: list[float] = []
        self.sizes: list[int] = []
        original = app.flush

        def timed() -> None:
            pending = sum(len(b.changes) for b in app.buffer._pending.values())
            t0 = time.perf_counter()
            original()
            if pending:
                self.times.append(time.perf_counter() - t0)
                self.sizes.append(pending)

        app.flush = timed  # type: ignore[method-assign]

    def reset(self) -> None:
        self.times, self.sizes = [], []


def changed(node: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The node with new readings, as its agent's next report would have them."""
    new = copy.copy(node)
    status = dict(node["status"])
    gpus = []
    for gpu in status["gpus"]:
        util = max(0.0, min(100.0, gpu["utilPct"] + rng.uniform(-15, 15)))
        gpus.append(
            gpu
            | {
                "utilPct": round(util, 1),
                "tempC": round(40 + util * 0.45, 1),
                "powerW": round(700 * (0.25 + 0.7 * util / 100), 1),
            }
        )
    status["gpus"] = gpus
    status["inFlight"] = rng.randint(0, 30)
    new["status"] = status
    return new


async def produce(
    source: StaticSource, nodes: list[dict[str, Any]], rate: float, stop: asyncio.Event
) -> int:
    """Push `rate` x len(nodes) changed nodes a second, in CHUNKS_PER_S chunks."""
    rng = random.Random(7)
    per_chunk = max(1, round(rate * len(nodes) / CHUNKS_PER_S))
    sent = 0
    start = time.perf_counter()
    while not stop.is_set():
        for _ in range(per_chunk):
            i = rng.randrange(len(nodes))
            nodes[i] = changed(nodes[i], rng)
            source.push("nodes", "MODIFIED", nodes[i])
        sent += per_chunk
        next_at = start + sent / (per_chunk * CHUNKS_PER_S)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return sent


KEYS = {"colon": ":", "e": "e", "p": "p", "enter": "\r", "minus": "-"}


async def switch_views(
    app: ConsoleApp, every: float, stop: asyncio.Event, out: list[float]
) -> None:
    """Every `every` s: `:ep` enter (or `-` back to the nodes), as a terminal delivers the keys
    (posted to the app at once), timed from the first key to the new view's table up to date
    on the screen."""
    to_endpoints = True
    while not stop.is_set():
        await asyncio.sleep(every)
        if stop.is_set():
            return
        want = "endpoints" if to_endpoints else "nodes"
        keys = ("colon", "e", "p", "enter") if to_endpoints else ("minus",)
        t0 = time.perf_counter()
        for key in keys:
            app.post_message(events.Key(key, KEYS[key]))
        while app.browser.view_name != want or app.browser.place in app.browser.pending:
            await asyncio.sleep(0.001)
        out.append(time.perf_counter() - t0)
        to_endpoints = not to_endpoints


async def phase(
    pilot: Any,
    app: ConsoleApp,
    meter: Meter,
    source: StaticSource,
    nodes: list[dict[str, Any]],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    meter.reset()
    stop = asyncio.Event()
    switches: list[float] = []
    received = app.buffer.received
    cpu0, wall0 = cpu_s(), time.perf_counter()
    producer = asyncio.create_task(produce(source, nodes, rate, stop))
    switcher = asyncio.create_task(switch_views(app, 1.5, stop, switches))
    await asyncio.sleep(seconds)
    stop.set()
    sent = await producer
    await switcher
    wall, cpu = time.perf_counter() - wall0, cpu_s() - cpu0
    ms = sorted(t * 1000 for t in meter.times)
    return {
        "seconds": round(wall, 2),
        "changes_sent": sent,
        "changes_received": app.buffer.received - received,
        "batches": len(ms),
        "changes_per_batch_median": statistics.median(meter.sizes) if meter.sizes else 0,
        "batch_ms": {
            "median": round(statistics.median(ms), 2) if ms else None,
            "p95": round(percentile(ms, 95), 2) if ms else None,
            "max": round(ms[-1], 2) if ms else None,
        },
        "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
        "view_switch_ms": latency_summary(switches),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    nodes = demo.fleet(args.nodes, args.gpus)
    source = StaticSource({"nodes": nodes, "endpoints": demo.endpoints()}, label="bench")
    app = ConsoleApp(source)
    meter = Meter(app)
    async with app.run_test(size=SIZE) as pilot:
        t0 = time.perf_counter()
        while app.browser.table is None or app.browser.table.row_count < args.nodes:
            await asyncio.sleep(0.05)
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("the nodes never all arrived")
        first_draw = time.perf_counter() - t0
        half = args.seconds / 2
        by_name = await phase(pilot, app, meter, source, nodes, args.rate, half)
        if app.browser.view_name != "nodes":
            await pilot.press("minus")
        await pilot.press("G", "G")  # by GPU utilisation, highest first
        by_util = await phase(pilot, app, meter, source, nodes, args.rate, half)
        rows = app.browser.tables[next(iter(app.browser.tables))].row_count
    return {
        "first_listing_s": round(first_draw, 2),
        "rows": rows,
        "phases": {"sorted_by_name": by_name, "sorted_by_util": by_util},
    }


async def screens(directory: Path) -> list[Path]:
    """An SVG of each view on the demo data, as docs/console.md shows them."""
    from textual.widgets import Input

    directory.mkdir(parents=True, exist_ok=True)
    shots: list[tuple[str, tuple[str, ...], str | None]] = [
        ("nodes", ("d",), "default/eu-h100-1"),
        ("endpoints", ("d",), "default/chat-pro"),
        ("replicas", ("enter",), "default/chat-pro"),
        ("jobs", (), None),
        ("slo", ("d",), "default/chat-lite-latency-p95"),
        ("events", (), None),
        ("domains", (), None),
        ("pools", (), None),
        ("policies", (), None),
        ("strategies", (), None),
        ("help", ("question_mark",), None),
        ("quarantine", ("Q",), "default/eu-a100-1"),
        ("split", ("percent_sign",), "default/chat-pro"),
    ]
    written = []
    for name, keys, row in shots:
        source = demo.source()
        app = ConsoleApp(source, clock=lambda: demo.NOW)
        async with app.run_test(size=SIZE) as pilot:
            while not (app.state.objects.get("metrics") and app.state.objects.get("events")):
                await pilot.pause(0.05)
            for step in range(1, 12):  # a history for the sparklines
                for node in demo.nodes():
                    for i, gpu in enumerate(node["status"]["gpus"]):
                        gpu["utilPct"] = float((gpu["utilPct"] + 17 * step * (i + 1)) % 100)
                    source.push("nodes", "MODIFIED", node)
                while source.queued("nodes"):
                    await pilot.pause(0.01)
                app.flush()
            view = {
                "nodes": None,
                "help": None,
                "quarantine": None,
                "split": "ep",
                "replicas": "ep",
                "endpoints": "ep",
            }.get(name, name)
            if view:
                await pilot.press("colon")
                app.screen.query_one("#prompt", Input).value = view
                await pilot.press("enter")
            await pilot.pause()
            table = app.browser.table
            if row is not None and table is not None:
                table.move_cursor(row=table.get_row_index(row))
            if keys:
                await pilot.press(*keys)
            await pilot.pause(0.3)
            written.append(Path(app.save_screenshot(f"{name}.svg", path=str(directory))))
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--rate", type=float, default=0.10, help="share of the nodes changing a second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="wait up to this long for a quiet machine first",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console.json")
    p.add_argument("--screens", action="store_true", help="write the docs' SVGs instead")
    p.add_argument("--screens-dir", type=Path, default=ROOT / "docs" / "console")
    args = p.parse_args()
    if args.screens:
        for path in asyncio.run(screens(args.screens_dir)):
            print(f"wrote {path}")
        return 0
    started = dt.datetime.now(dt.UTC)
    busy = wait_until_idle(args.wait_idle) if args.wait_idle else None
    result = asyncio.run(run(args))
    print(
        f"{args.nodes} nodes x {args.gpus} GPUs, {args.rate:.0%} changing a second "
        f"({args.rate * args.nodes:.0f} changes/s), {args.seconds:.0f} s headless, "
        f"160x45; first listing drawn in {result['first_listing_s']} s"
    )
    worst = 0.0
    for name, ph in result["phases"].items():
        b, v = ph["batch_ms"], ph["view_switch_ms"]
        worst = max(worst, b["p95"] or 0)
        print(
            f"  {name:15} batch median {b['median']} ms  p95 {b['p95']} ms  max {b['max']} ms"
            f"  ({ph['batches']} batches, {ph['changes_per_batch_median']} changes each)  "
            f"CPU {ph['cpu_percent_of_one_core']} % of a core  view switch p50 "
            f"{v.get('p50')} ms max {v.get('max')} ms"
        )
    verdict = "met" if worst <= TARGET_MS else "missed"
    print(f"target: one batch <= {TARGET_MS:.0f} ms (p95): {verdict}")
    report = {
        "benchmark": "console",
        "command": " ".join(["bench/console.py", *sys.argv[1:]]),
        "params": {
            "nodes": args.nodes,
            "gpus_per_node": args.gpus,
            "rate": args.rate,
            "seconds": args.seconds,
            "terminal": list(SIZE),
        },
        "target_ms": TARGET_MS,
        "verdict": verdict,
        "machine": machine_facts() | {"busy_before_percent": busy},
        **result,
    }
    write_report(args.out, report, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
