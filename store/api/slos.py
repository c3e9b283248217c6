"""SLOs as users see them: SLO objects and the SLOs endpoints imply, with the evaluator's status.

Standalone SLOs are objects (created, replaced and deleted through `/v1/slos` like any kind);
implicit ones come from Endpoints' and Jobs' `spec.slo` (store/slo/definitions.py) and exist as
long as that spec says so. Both are served merged with what the SLO evaluator wrote to
`{root}/status/slos/{project}/{name}` (owner_status.py), and `GET /v1/slos/{name}/series` charts
an SLO's good and valid events and burn rate over time from the series store.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from infermesh.errors import BadRequest, NotFound
from infermesh.store.api import owner_status
from infermesh.store.api.http import json_response
from infermesh.store.api.objects import authorized, match_labels, project_param, stale_header
from infermesh.store.api.owner_status import Owned
from infermesh.store.api.series import parse_query
from infermesh.store.api.state import ApiState, mesh
from infermesh.store.repository import Obj
from infermesh.store.slo.definitions import SloDefinition, definitions
from infermesh.store.slo.reader import read_timeline

router = APIRouter()

NOT_EVALUATED = {
    "phase": "Pending",
    "reason": "NotEvaluated",
    "message": "not evaluated yet: the API's SLO evaluator runs every --slo-interval seconds",
}
TRAINING = {
    "phase": "Pending",
    "reason": "NotEvaluated",
    "message": "not evaluated yet: judged from the job's status every --slo-interval seconds",
}
SLOS = Owned("SLO", "slos", NOT_EVALUATED)
_TRAINING_SLOS = Owned("SLO", "slos", TRAINING)
_OWNER_KINDS = ("Endpoint", "Job")


def slo_definitions(state: ApiState, project: str | None) -> list[SloDefinition]:
    """Every SLO of a project (None: of every project), standalone and implicit."""
    slos = [s.obj for s in state.repo.list("SLO", project)]
    owners = [s.obj for kind in _OWNER_KINDS for s in state.repo.list(kind, project)]
    return definitions(slos, owners)


def served(state: ApiState, d: SloDefinition) -> Obj:
    """The SLO as `GET /v1/slos` shows it: its object with the evaluator's status."""
    report = state.reports["slos"].get(state.keys.status("slos", d.project, d.name))
    owned = SLOS if d.evaluated else _TRAINING_SLOS
    view = owner_status.merged(owned, d.obj, report, d.project, d.name)
    assert view is not None  # there is an object
    view["status"]["implicit"] = d.implicit
    return view


def find(state: ApiState, project: str, name: str) -> SloDefinition:
    for d in slo_definitions(state, project):
        if d.name == name:
            return d
    raise NotFound(
        f"SLO {name!r} not found in project {project!r} (neither an SLO object nor implied by "
        "an Endpoint's or Job's spec.slo)"
    )


@router.get("/v1/slos")
async def list_slos(request: Request) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    project = project_param(request)
    if project == "*":
        slos = [
            d
            for d in slo_definitions(state, None)
            if principal.sees_project(d.project, state.tenant_of)
        ]
    else:
        state.check(principal, "read", "SLO", project)
        slos = slo_definitions(state, project)
    selector = request.query_params.get("labelSelector")
    items = [v for v in (served(state, d) for d in slos) if match_labels(v, selector)]
    meta = {"resourceVersion": str(state.objects.revision), "stale": state.objects.stale}
    body = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": meta}
    return json_response(body, headers=stale_header(state))


@router.get("/v1/slos/{name}")
async def get_slo(name: str, request: Request) -> Response:
    state, _, _, project = authorized(request, "slos", "read")
    return json_response(served(state, find(state, project, name)), headers=stale_header(state))


@router.get("/v1/slos/{name}/series")
async def slo_series(name: str, request: Request) -> Response:
    """`{"project", "name", "sli", "objective", "window", "since", "until", "step", "points":
    [{"t", "good", "total", "ratio", "burn"}]}`: an SLO's events per step, for charts.
    `since`/`until`/`step` read as in `GET /v1/metrics/series`."""
    state, _, _, project = authorized(request, "slos", "read")
    d = find(state, project, name)
    if not d.evaluated:
        raise BadRequest(
            f"SLO {name!r} ({d.spec.sli} of {d.target_kind} {d.target_name}) has no series: "
            "training SLOs are not evaluated yet",
            {"field": "name"},
        )
    wanted = ("since", "until", "step")
    params = {k: v for k in wanted if (v := request.query_params.get(k))}
    q = parse_query(params, project, time.time())
    filters = {"endpoint": d.target_name} | ({"domain": d.domain} if d.domain else {})

    points = await asyncio.to_thread(
        read_timeline, state.series, project, filters, q.since, q.until, q.step_s, d.spec
    )
    body = {
        "project": project,
        "name": name,
        "sli": d.spec.sli,
        "objective": d.spec.objective,
        "window": d.spec.window,
        "since": q.since,
        "until": q.until,
        "step": q.step_s,
        "points": points,
    }
    return json_response(body)


@router.get("/v1/watch/slos")
async def watch_slos(request: Request) -> Response:
    """SLO objects and their status in one revision-ordered stream (implicit SLOs follow their
    Endpoint: watch endpoints for those)."""
    return owner_status.watch_response(request, SLOS)
