"""Jobs as users see them: the Job object merged with the scheduler's status, and the ranks' logs.

The scheduler writes a job's observed state to `{root}/status/jobs/{project}/{name}` and the last
few hundred lines its ranks printed to `{root}/logs/jobs/{project}/{name}` (`{"attempt",
"lines": [{"time", "rank", "line"}]}`, rewritten as lines arrive), straight into etcd. These routes
serve the merge (owner_status.py) and the logs, whole or followed as they grow.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from infermesh.errors import BadRequest, NotFound
from infermesh.model import Job
from infermesh.store.api import owner_status
from infermesh.store.api.http import json_response, query_flag
from infermesh.store.api.objects import authorized
from infermesh.store.api.owner_status import Owned
from infermesh.store.api.state import ApiState
from infermesh.store.api.streams import PING_S, sse, start_revision, watch_etcd
from infermesh.store.etcd import KeyValue, WatchEvent
from infermesh.store.repository import Obj

router = APIRouter()

NOT_SCHEDULED = {
    "phase": "Pending",
    "reason": "NotScheduled",
    "message": "the scheduler has not taken the job up yet (is `infermesh scheduler` running?)",
}

JOBS = Owned("Job", "jobs", NOT_SCHEDULED)


@router.get("/v1/jobs")
async def list_jobs(request: Request) -> Response:
    return owner_status.list_response(request, JOBS)


@router.get("/v1/jobs/{name}")
async def get_job(name: str, request: Request) -> Response:
    return owner_status.get_response(request, JOBS, name)


@router.get("/v1/watch/jobs")
async def watch_jobs(request: Request) -> Response:
    """Job objects and their status, in one revision-ordered stream."""
    return owner_status.watch_response(request, JOBS)


# logs --------------------------------------------------------------------------------------


def new_lines(before: Obj | None, after: Obj) -> list[Obj]:
    """The lines of `after` that `before` had not shown. The key holds the last lines, so what
    is new follows the longest overlap of the new list's head with the old list's tail (none:
    all of it is new, as when a writer starts a fresh list)."""
    lines: list[Obj] = after.get("lines") or []
    old: list[Obj] = (before or {}).get("lines") or []
    for k in range(min(len(old), len(lines)), 0, -1):
        if lines[k - 1] == old[-1] and lines[:k] == old[-k:]:
            return lines[k:]
    return lines


def _document(kv: KeyValue | None) -> Obj:
    return json.loads(kv.value) if kv is not None else {"attempt": 0, "lines": []}


def _count(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name}: must be a non-negative integer, got {raw!r}", {"field": name})
    return int(raw)


@dataclass(frozen=True)
class LogQuery:
    rank: int | None  # one rank's lines; None: every rank's
    tail: int | None  # the last N lines; None: all that are kept

    def answer(self, doc: Obj, lines: list[Obj], *, tail: bool = True) -> dict[str, Any]:
        """`{"attempt", "lines"}` of this query's lines among `lines` (of `doc`)."""
        mine = [x for x in lines if self.rank is None or x.get("rank") == self.rank]
        if tail and self.tail is not None:
            mine = mine[max(0, len(mine) - self.tail) :]
        return {"attempt": doc.get("attempt", 0), "lines": mine}


@router.get("/v1/jobs/{name}/logs")
async def job_logs(name: str, request: Request) -> Response:
    """`{"attempt", "lines"}`: a job's latest log lines, oldest first (`rank=` one rank's, `tail=`
    the last N); with `follow=true`, SSE `lines` events as ranks print them (resumable by
    Last-Event-ID)."""
    state, _, _, project = authorized(request, Job.plural, "read")
    if state.repo.cached(Job.__name__, project, name) is None:
        raise NotFound(f"Job {name!r} not found in project {project!r}")
    query = LogQuery(_count(request, "rank"), _count(request, "tail"))
    key = state.keys.logs("jobs", project, name)
    if query_flag(request, "follow"):
        return EventSourceResponse(_follow(state, key, start_revision(request), query), ping=PING_S)
    doc = _document(await state.store.get(key))
    return json_response(query.answer(doc, doc.get("lines") or []))


async def _follow(
    state: ApiState, key: str, after: int | None, query: LogQuery
) -> AsyncIterator[dict[str, Any]]:
    """The current lines first (unless resuming after a revision), then each change's new ones."""
    if after is None:
        after = await state.store.revision()
        kv = await state.store.get(key)
        doc = _document(kv)
        if kv is not None:
            after = max(after, kv.mod_revision)  # changed meanwhile: the watch starts past it
        yield sse("lines", query.answer(doc, doc.get("lines") or []), after)

    def convert(event: WatchEvent) -> dict[str, Any] | None:
        if event.type != "PUT":
            return None  # deleted with its job
        doc = json.loads(event.value)
        before = json.loads(event.prev_value) if event.prev_value else None
        answer = query.answer(doc, new_lines(before, doc), tail=False)
        return sse("lines", answer, event.mod_revision) if answer["lines"] else None

    # This key alone: a prefix watch would also see the jobs whose names start with this one's.
    async for item in watch_etcd(state, key, after, convert, prev_kv=True, end=key + "\0"):
        yield item
