"""Live data in: the stream loops, the buffer that coalesces bursts, and `apply`, the pure step
from one coalesced batch to the least a table must redraw.

A watch delivers every change as it happens; a table redrawn on each would spend the terminal
on intermediate states nobody can read. So the loops only `put` changes into a `Coalescer`
(the last write of a key wins), and the app flushes it on a timer, at most four times a second:
each batch goes to `ConsoleState.apply`, then, for the view on screen, through `apply` into a
`Delta` (rows added, removed, and only the cells that changed) that the table widget applies
by row key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from infermesh.answers import WatchEvent
from infermesh.console.filter import Filter
from infermesh.console.views.base import Cell, Ctx, ViewSpec, key_of, row

Obj = dict[str, Any]
FLUSH_S = 0.25  # at most four redraws a second


@dataclass
class Batch:
    kind: str
    changes: dict[str, Obj | None] = field(default_factory=dict)  # None: deleted
    reset: bool = False  # the batch is the whole collection


class Coalescer:
    """Changes waiting for the next flush, by collection and key; the last write wins."""

    def __init__(self) -> None:
        self._pending: dict[str, Batch] = {}
        self.received = 0  # changes put, ever (a coalesced burst counts each)

    def put(self, kind: str, key: str, obj: Obj | None) -> None:
        batch = self._pending.setdefault(kind, Batch(kind))
        batch.changes[key] = obj
        self.received += 1

    def reset(self, kind: str, objects: Mapping[str, Obj]) -> None:
        """The whole collection, replacing whatever was pending for it."""
        self._pending[kind] = Batch(kind, dict(objects), reset=True)
        self.received += 1

    def drain(self) -> list[Batch]:
        batches, self._pending = list(self._pending.values()), {}
        return batches

    def __bool__(self) -> bool:
        return bool(self._pending)


# --- tables -----------------------------------------------------------------------------------


@dataclass
class TableState:
    """What one table shows: its rows' cells by key, and what decides which rows it shows."""

    spec: ViewSpec
    shown: dict[str, tuple[Cell, ...]] = field(default_factory=dict)
    filter: Filter | None = None
    keep: Callable[[Obj], bool] | None = None  # a view's own toggle (warnings only)

    def visible(self, obj: Obj, cells: tuple[Cell, ...]) -> bool:
        if self.keep is not None and not self.keep(obj):
            return False
        if self.filter is None:
            return True
        labels = (obj.get("metadata") or {}).get("labels") or {}
        by_header = {c.header: cell.plain for c, cell in zip(self.spec.columns, cells, strict=True)}
        return self.filter.matches(labels, by_header)


@dataclass
class Delta:
    added: list[tuple[str, tuple[Cell, ...]]] = field(default_factory=list)
    changed: list[tuple[str, dict[int, Cell]]] = field(default_factory=list)  # column -> cell
    removed: list[str] = field(default_factory=list)

    def touches(self, column: int) -> bool:
        """Whether rows came or went, or a cell of `column` changed (a sort must rerun)."""
        return bool(self.added) or any(column in cells for _, cells in self.changed)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def apply(batch: Mapping[str, Obj | None], table: TableState, ctx: Ctx) -> Delta:
    """Bring `table` up to date with each key's object in `batch` (None: gone) and say what
    changed: new rows, rows gone (deleted or filtered out), and per row the changed cells."""
    delta = Delta()
    spec, shown = table.spec, table.shown
    for key, obj in batch.items():
        cells = row(spec, obj, ctx) if obj is not None else None
        if cells is not None and not table.visible(obj, cells):  # type: ignore[arg-type]
            cells = None
        old = shown.get(key)
        if cells is None:
            if old is not None:
                del shown[key]
                delta.removed.append(key)
        elif old is None:
            shown[key] = cells
            delta.added.append((key, cells))
        else:
            diff = {
                i: new for i, (was, new) in enumerate(zip(old, cells, strict=True)) if was != new
            }
            if diff:
                shown[key] = cells
                delta.changed.append((key, diff))
    return delta


def resync(objects: Mapping[str, Obj], table: TableState, ctx: Ctx) -> Delta:
    """`apply` of every object of the view and of every row shown (a new filter, a view that
    comes back on screen)."""
    batch: dict[str, Obj | None] = dict(objects)
    for key in table.shown:
        batch.setdefault(key, None)
    return apply(batch, table, ctx)


def tick(objects: Mapping[str, Obj], table: TableState, ctx: Ctx) -> Delta:
    """The cells that depend on the time (ages), again for every row shown: what time alone
    changes, without recomputing whole rows."""
    delta = Delta()
    clocked = [(i, c) for i, c in enumerate(table.spec.columns) if c.clock]
    if not clocked:
        return delta
    for key, cells in table.shown.items():
        obj = objects.get(key)
        if obj is None:
            continue
        diff = {i: new for i, c in clocked if (new := c.cell(obj, ctx)) != cells[i]}
        if diff:
            table.shown[key] = tuple(diff.get(i, cell) for i, cell in enumerate(cells))
            delta.changed.append((key, diff))
    return delta


# --- streams ----------------------------------------------------------------------------------


class Source(Protocol):
    """What the stream loops read (console/source.py has the API's and a fixed one)."""

    def watch(self, kind: str) -> Any: ...  # AsyncIterator[WatchEvent]
    def events_stream(self, last_event_id: str | None) -> Any: ...  # AsyncIterator[Obj]
    async def recent_events(self, limit: int) -> tuple[list[Obj], str | None]: ...


async def follow(source: Source, kind: str, buffer: Coalescer) -> None:
    """One watch stream into the buffer. The stream opens with the current state (ADDED for
    each object, then BOOKMARK), which goes in as one reset, so objects deleted while the
    console was away leave too; a RESYNC (the position was compacted) starts a new snapshot."""
    snapshot: dict[str, Obj] | None = {}
    async for event in source.watch(kind):
        assert isinstance(event, WatchEvent)
        if event.type == "BOOKMARK":
            if snapshot is not None:
                buffer.reset(kind, snapshot)
                snapshot = None
            continue
        if event.type == "RESYNC":
            snapshot = {}
            continue
        key = key_of(event.object)
        gone = event.type == "DELETED"
        if snapshot is not None:
            if gone:
                snapshot.pop(key, None)
            else:
                snapshot[key] = event.object
        else:
            buffer.put(kind, key, None if gone else event.object)


def event_key(event: Obj) -> str:
    return str(event.get("id") or f"{event.get('time')}-{event.get('name')}")


async def follow_events(source: Source, buffer: Coalescer, backlog: int = 200) -> None:
    """The newest `backlog` events, then each new one as it is written (resumed after the
    listing, so none is missed or doubled)."""
    recent, resume_at = await source.recent_events(backlog)
    for event in recent:
        buffer.put("events", event_key(event), event)
    async for event in source.events_stream(resume_at):
        buffer.put("events", event_key(event), event)


async def poll(
    fetch: Callable[[], Awaitable[Mapping[str, Obj]]],
    kind: str,
    buffer: Coalescer,
    interval: float,
) -> None:
    """A collection the API cannot stream (SLO evaluations of implicit SLOs, SLI totals):
    listed every `interval` seconds, each listing a reset."""
    while True:
        buffer.reset(kind, await fetch())
        await asyncio.sleep(interval)
