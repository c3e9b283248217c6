"""Where the console's data comes from: the seam between the app and the network.

`MeshSource` is the real one: every read and write through the SDK (`AsyncMeshClient`), never
etcd. `StaticSource` holds fixed objects (screenshots, snapshot tests, the benchmark) and lets
its owner push changes into its watch streams as if the API had sent them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from infermesh.answers import WatchEvent
from infermesh.client import AsyncMeshClient
from infermesh.console.views.base import key_of
from infermesh.errors import Unavailable

Obj = dict[str, Any]
METRICS_WINDOW = "-5m"  # the SLI totals the endpoints view shows: the last five minutes


class MeshSource:
    """The control-plane API, through the SDK."""

    def __init__(self, client: AsyncMeshClient) -> None:
        self.client = client
        self.label = client.base_url
        self.project = client.project

    def watch(self, kind: str) -> AsyncIterator[WatchEvent]:
        """The current state (ADDED..., BOOKMARK), then every change; the SDK resumes a dropped
        stream by itself and raises `Unavailable` once it cannot for 30 s."""
        return self.client.watch(kind)

    def events_stream(self, last_event_id: str | None) -> AsyncIterator[Obj]:
        return self.client.events_stream(last_event_id=last_event_id or None)

    async def recent_events(self, limit: int) -> tuple[list[Obj], str | None]:
        items = await self.client.events(limit=limit)
        return list(items), items.resource_version or None

    async def slos(self) -> dict[str, Obj]:
        listed = await self.client.list("slos")
        return {key_of(o): o for o in listed.items}

    async def metrics(self) -> dict[str, Obj]:
        """SLI totals per endpoint over the last minutes (`GET /v1/metrics/series`)."""
        answer = await self.client.series(by="endpoint", since=METRICS_WINDOW)
        project = answer.get("project") or self.project
        return {
            f"{project}/{s.get('endpoint')}": dict(s.get("total") or {})
            for s in answer.get("series") or []
        }

    async def health(self) -> str:
        """`live`, or `stale` when the API answers from its cache because etcd is down;
        raises `Unavailable` when the API cannot be reached."""
        try:
            await self.client.readyz()
        except Unavailable as exc:
            if "url" in exc.details:  # the SDK's own: no answer from the API at all
                raise
            return "stale"  # the API's 503: it is up, etcd is not
        return "live"

    async def action(
        self, kind: str, name: str, verb: str, body: Obj, project: str | None = None
    ) -> Obj:
        if verb == "promote":
            return await self.client.promote(
                name, body.get("revision"), reason=body.get("reason", ""), project=project
            )
        if verb == "rollback":
            return await self.client.rollback(name, reason=body.get("reason", ""), project=project)
        if verb == "delete":
            await self.client.delete(kind, name, project=project)
            return {}
        return await self.client.action(kind, name, verb, body, project=project)

    async def close(self) -> None:
        await self.client.aclose()


class StaticSource:
    """Fixed objects, served like the API serves them; `push` and `push_event` feed changes
    into the open streams. Actions are recorded in `calls`, not carried out."""

    def __init__(
        self,
        objects: Mapping[str, Iterable[Obj]],
        *,
        events: Iterable[Obj] = (),
        slos: Iterable[Obj] = (),
        metrics: Mapping[str, Obj] | None = None,
        label: str = "fixed data",
        project: str = "default",
    ) -> None:
        self.objects = {kind: list(items) for kind, items in objects.items()}
        self.events = list(events)
        self.slo_items = list(slos)
        self.metric_totals = dict(metrics or {})
        self.label = label
        self.project = project
        self.calls: list[tuple[str, str, str, Obj]] = []
        self._queues: dict[str, asyncio.Queue[Any]] = {}

    def _queue(self, kind: str) -> asyncio.Queue[Any]:
        return self._queues.setdefault(kind, asyncio.Queue())

    def push(self, kind: str, type_: str, obj: Obj) -> None:
        """A change, as the API's watch of `kind` would send it."""
        self._queue(kind).put_nowait(WatchEvent(type_, obj, ""))

    def queued(self, kind: str) -> int:
        """Changes pushed to `kind`'s stream that the console has not taken yet."""
        return self._queue(kind).qsize()

    def push_event(self, event: Obj) -> None:
        self._queue("events").put_nowait(event)

    async def watch(self, kind: str) -> AsyncIterator[WatchEvent]:
        for obj in self.objects.get(kind, []):
            yield WatchEvent("ADDED", obj, "")
        yield WatchEvent("BOOKMARK", {}, "1")
        queue = self._queue(kind)
        while True:
            yield await queue.get()

    async def events_stream(self, last_event_id: str | None) -> AsyncIterator[Obj]:
        queue = self._queue("events")
        while True:
            yield await queue.get()

    async def recent_events(self, limit: int) -> tuple[list[Obj], str | None]:
        return self.events[:limit], None

    async def slos(self) -> dict[str, Obj]:
        return {key_of(o): o for o in self.slo_items}

    async def metrics(self) -> dict[str, Obj]:
        return dict(self.metric_totals)

    async def health(self) -> str:
        return "live"

    async def action(
        self, kind: str, name: str, verb: str, body: Obj, project: str | None = None
    ) -> Obj:
        self.calls.append((kind, name, verb, body))
        return {}

    async def close(self) -> None:
        return None
