"""`/v1/metrics/series`: routers post SLI buckets, consoles and `mesh stats` read them back."""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from infermesh.errors import BadRequest, Forbidden
from infermesh.sli import SeriesBatch, parse_duration
from infermesh.store.api.http import json_response, read_json
from infermesh.store.api.objects import project_param
from infermesh.store.api.state import ApiState, mesh
from infermesh.store.auth import Principal
from infermesh.store.series import DEFAULT_BY, DIMENSIONS

router = APIRouter()

INGEST_ROLES = ("orgAdmin", "platformAdmin")
DEFAULT_WINDOW_S = 15 * 60
DEFAULT_STEP_S = 10
MAX_POINTS = 11_000  # per series, as Prometheus caps a range query
_EPOCH = re.compile(r"\d+(\.\d+)?")


def parse_batch(body: Any) -> SeriesBatch:
    """The body as a SeriesBatch; a 400 naming the first field at fault."""
    try:
        return SeriesBatch.model_validate(body)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
            for err in exc.errors()
        ]
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BadRequest(
            f"{first['field']}: {first['message']}{more}",
            {"field": first["field"], "errors": errors},
        ) from None


def check_ingest(state: ApiState, principal: Principal, batch: SeriesBatch) -> None:
    """Routers post with a platform token; every bucket's project must be one it sees."""
    if not any(role in INGEST_ROLES for role in principal.roles):
        raise Forbidden(
            f"role {' or '.join(INGEST_ROLES)} required to post series "
            f"({principal.subject} has: {', '.join(principal.roles) or 'no roles'})",
            {"requiredRoles": list(INGEST_ROLES)},
        )
    for project in sorted({b.project for b in batch.buckets}):
        if not principal.sees_project(project, state.tenant_of):
            raise Forbidden(
                f"{principal.subject} has no access to project {project!r} "
                "(named by a bucket of this batch; nothing was stored)",
                {"project": project, "subject": principal.subject},
            )


def parse_when(value: str, now: float, name: str) -> float:
    """Epoch seconds (a plain number), `now`, or a duration before now (`-5m`, `5m`)."""
    text = value.strip()
    try:
        if text == "now":
            return now
        if _EPOCH.fullmatch(text):
            when = float(text)
        else:
            when = now - parse_duration(text.removeprefix("-"))
        if not math.isfinite(when):
            raise ValueError(text)
        return when
    except ValueError:
        raise BadRequest(
            f"{name}: expected epoch seconds or a duration before now such as -5m, got {value!r}",
            {"field": name},
        ) from None


@dataclass(frozen=True)
class SeriesQuery:
    project: str
    since: int
    until: int
    step_s: int
    filters: dict[str, str]
    by: tuple[str, ...]


def parse_query(params: dict[str, str], project: str, now: float) -> SeriesQuery:
    """The query string of a series read; each error names its parameter."""
    try:
        step = int(params.get("step") or DEFAULT_STEP_S)
    except ValueError:
        step = 0
    if step < 1:
        raise BadRequest("step: must be a whole number of seconds >= 1", {"field": "step"})
    until = parse_when(params.get("until") or "now", now, "until")
    since = parse_when(params.get("since") or f"-{DEFAULT_WINDOW_S}s", now, "since")
    # Points start on step boundaries, so a chart's points stay put from one refresh to the next.
    start, end = int(since) // step * step, math.ceil(until)
    if end <= start:
        raise BadRequest("since: must be before until", {"field": "since"})
    if (end - start) / step > MAX_POINTS:
        raise BadRequest(
            f"step: {step}s gives more than {MAX_POINTS} points over the window; use a larger step",
            {"field": "step"},
        )
    by_param = params.get("by") or ",".join(DEFAULT_BY)
    by = tuple(filter(None, (d.strip() for d in by_param.split(","))))
    if not by or any(d not in DIMENSIONS for d in by) or len(set(by)) != len(by):
        raise BadRequest(
            f"by: a comma-separated list of distinct dimensions among {', '.join(DIMENSIONS)}",
            {"field": "by"},
        )
    filters = {d: params[d] for d in DIMENSIONS if params.get(d) is not None}
    return SeriesQuery(project, start, end, step, filters, by)


@router.post("/v1/metrics/series")
async def ingest(request: Request) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    batch = parse_batch(await read_json(request))
    check_ingest(state, principal, batch)
    stored, expired = await asyncio.to_thread(state.series.ingest, batch)
    return json_response({"stored": stored, "expired": expired})


@router.get("/v1/metrics/series")
async def query(request: Request) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    project = project_param(request)
    if project == "*":
        raise BadRequest("project: series are read one project at a time", {"field": "project"})
    state.check(principal, "read", "Endpoint", project)
    q = parse_query(dict(request.query_params), project, time.time())
    series = await asyncio.to_thread(
        state.series.query,
        q.project,
        since=q.since,
        until=q.until,
        step_s=q.step_s,
        filters=q.filters,
        by=q.by,
    )
    return json_response(
        {
            "project": q.project,
            "since": q.since,
            "until": q.until,
            "step": q.step_s,
            "by": list(q.by),
            "series": series,
        }
    )
