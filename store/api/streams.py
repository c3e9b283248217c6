"""Watch streams over SSE (`/v1/watch/{plural}`, `/v1/events/stream`) and the events listing.

Every SSE event carries the etcd revision as its id, so a client that reconnects with
`Last-Event-ID` resumes exactly where it stopped: no event missed, none repeated. When that
revision has been compacted away the stream says RESYNC and the client lists again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from infermesh.errors import BadRequest
from infermesh.store.api.http import json_response
from infermesh.store.api.objects import match_labels, project_param, resolve_kind
from infermesh.store.api.state import ApiState, mesh
from infermesh.store.auth import Principal
from infermesh.store.etcd import WatchEvent
from infermesh.store.keys import CLUSTER_SCOPE
from infermesh.store.repository import Stored, decode

router = APIRouter()

PING_S = 15
EVENT_PAGE = 500
EVENT_SCAN_PAGES = 40  # a filtered listing looks at the newest 20,000 events at most


def start_revision(request: Request) -> int | None:
    """Where to resume: Last-Event-ID wins over ?resourceVersion=; None means 'from now'."""
    raw = request.headers.get("last-event-id") or request.query_params.get("resourceVersion")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(
            f"resourceVersion: not a revision: {raw!r}", {"field": "resourceVersion"}
        ) from None
    if value < 0:
        raise BadRequest("resourceVersion: must be >= 0", {"field": "resourceVersion"})
    return value


def sse(event: str, data: Any, revision: int | None = None) -> dict[str, Any]:
    if isinstance(data, Stored):  # already encoded
        text = data.json.decode()
    else:
        text = json.dumps(data, separators=(",", ":"), default=str)
    out = {"event": event, "data": text}
    if revision is not None:
        out["id"] = str(revision)
    return out


async def watch_etcd(
    state: ApiState,
    prefix: str,
    after: int,
    convert: Callable[[WatchEvent], dict[str, Any] | None],
    *,
    prev_kv: bool = False,
    end: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """SSE items for the changes under `prefix` (or in [prefix, end)) after revision `after`."""
    batches = (
        state.store.watch_prefix(prefix, after + 1, prev_kv=prev_kv)
        if end is None
        else state.store.watch_range(prefix, end, after + 1, prev_kv=prev_kv)
    )
    async for batch in batches:
        for event in batch:
            if event.type == "RESYNC":
                yield sse(
                    "RESYNC",
                    {
                        "message": f"revision {after} was compacted; list again",
                        "compactRevision": event.mod_revision,
                    },
                )
                return
            out = convert(event)
            if out is not None:
                yield out


@router.get("/v1/watch/{plural}")
async def watch(plural: str, request: Request) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    cls = resolve_kind(plural)
    project = project_param(request)
    every_project = project == "*" or cls.cluster_scoped
    if not every_project:
        state.check(principal, "read", cls.__name__, project)
    selector = request.query_params.get("labelSelector")
    after = start_revision(request)
    prefix = state.keys.objects(cls.plural, None if every_project else project)

    def visible(stored: Stored) -> bool:
        obj = stored.obj
        proj = obj["metadata"].get("project", CLUSTER_SCOPE)
        return (
            cls.cluster_scoped or principal.sees_project(proj, state.tenant_of)
        ) and match_labels(obj, selector)

    def convert(event: WatchEvent) -> dict[str, Any] | None:
        if event.type == "PUT":
            obj = decode(event.key, event.value, event.mod_revision)
            kind = "ADDED" if event.create_revision == event.mod_revision else "MODIFIED"
        else:
            if event.type != "DELETE" or event.prev_value is None:
                return None
            obj = decode(event.key, event.prev_value, event.mod_revision)
            kind = "DELETED"
        return sse(kind, obj, event.mod_revision) if visible(obj) else None

    async def stream() -> AsyncIterator[dict[str, Any]]:
        nonlocal after
        if after is None:  # no position: the current state first, then changes
            after = state.objects.revision
            for _, obj in state.objects.items(prefix):
                if visible(obj):
                    yield sse("ADDED", obj)
            yield sse("BOOKMARK", {"resourceVersion": str(after)}, after)
        async for item in watch_etcd(state, prefix, after, convert, prev_kv=True):
            yield item

    return EventSourceResponse(stream(), ping=PING_S)


def event_filter(
    request: Request, principal: Principal, state: ApiState
) -> Callable[[dict[str, Any]], bool]:
    q = request.query_params
    kind, name, etype = q.get("kind"), q.get("name"), q.get("type")
    project = q.get("project")

    def keep(event: dict[str, Any]) -> bool:
        proj = event.get("project", CLUSTER_SCOPE)
        if proj == CLUSTER_SCOPE:
            if "orgAdmin" not in principal.roles:
                return False
        elif not principal.sees_project(proj, state.tenant_of):
            return False
        return (
            (not project or project == "*" or proj == project)
            and (not kind or event.get("kind", "").lower() == kind.lower())
            and (not name or event.get("name") == name)
            and (not etype or event.get("type") == etype)
        )

    return keep


def events_prefix(state: ApiState, request: Request) -> str:
    project = request.query_params.get("project")
    return state.keys.events(None if not project or project == "*" else project)


@router.get("/v1/events")
async def list_events(request: Request) -> Response:
    """Recent events, newest first, read from the newest backwards (never the whole log)."""
    state = mesh(request)
    principal = state.authenticate(request)
    keep = event_filter(request, principal, state)
    try:
        limit = max(1, min(int(request.query_params.get("limit", "100")), 10_000))
    except ValueError:
        raise BadRequest("limit: must be an integer", {"field": "limit"}) from None
    since = request.query_params.get("since")
    prefix = events_prefix(state, request)
    events: list[dict[str, Any]] = []
    before: str | None = None
    revision = 0  # of the first page: a stream from here misses and repeats nothing
    for _ in range(EVENT_SCAN_PAGES):
        page, read_at = await state.store.newest(prefix, EVENT_PAGE, before=before)
        revision = revision or read_at
        for kv in page:
            event = json.loads(kv.value)
            if since and event.get("time", "") < since:
                page = []  # older than asked for: stop here
                break
            if keep(event):
                events.append({**event, "revision": kv.mod_revision})
        if len(events) >= limit or len(page) < EVENT_PAGE:
            break
        before = page[-1].key
    events.sort(key=lambda e: (e.get("time", ""), e["revision"]), reverse=True)
    return json_response({"items": events[:limit], "metadata": {"resourceVersion": str(revision)}})


@router.get("/v1/events/stream")
async def stream_events(request: Request) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    keep = event_filter(request, principal, state)
    after = start_revision(request)
    prefix = events_prefix(state, request)

    def convert(event: WatchEvent) -> dict[str, Any] | None:
        if event.type != "PUT":
            return None  # expiry of old events is not news
        data = json.loads(event.value)
        return (
            sse("event", {**data, "revision": event.mod_revision}, event.mod_revision)
            if keep(data)
            else None
        )

    async def stream() -> AsyncIterator[dict[str, Any]]:
        start = after if after is not None else await state.store.revision()
        async for item in watch_etcd(state, prefix, start, convert):
            yield item

    return EventSourceResponse(stream(), ping=PING_S)
