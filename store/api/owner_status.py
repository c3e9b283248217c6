"""Objects whose owner writes their status: the API's object merged with the owner's report.

An agent reports its node and the scheduler its jobs, each under `{root}/status/{plural}/...`,
straight into etcd (DESIGN.md §2), so neither writer overwrites the other. The functions here
serve the merge for any such kind: a get, a list and a watch show the object users declared with
the status its owner observed, both halves in one revision-ordered stream. The kind's routes
(nodes.py, jobs.py) are thin handlers over them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from infermesh.errors import NotFound
from infermesh.store.api.http import json_response
from infermesh.store.api.objects import authorized, match_labels, project_param, stale_header
from infermesh.store.api.state import ApiState, mesh
from infermesh.store.api.streams import PING_S, sse, start_revision, watch_etcd
from infermesh.store.etcd import WatchEvent
from infermesh.store.repository import Obj, decode


@dataclass(frozen=True)
class Owned:
    """How one kind's two halves make the object users see."""

    kind: str
    plural: str
    unreported: Obj  # the status shown while the owner has written none
    # The object shown for a report alone (a node its agent registered); None: no report is
    # shown without its object.
    from_report: Callable[[Obj, str, str], Obj] | None = None


def merged(
    owned: Owned, obj: Obj | None, report: Obj | None, project: str, name: str
) -> Obj | None:
    """The object users see (status: the report, then the object's own conditions); None when
    there is nothing to show."""
    if obj is None:
        if report is None or owned.from_report is None:
            return None
        obj = owned.from_report(report, project, name)
    own = (obj.get("status") or {}).get("conditions") or []
    if report is not None and report.get("uid") not in (None, obj["metadata"].get("uid")):
        report = None  # written for an earlier object of the same name, now deleted
    base = owned.unreported if report is None else report
    status = {**base, "conditions": [*(base.get("conditions") or []), *own]}
    return {**obj, "status": status}


def stored_object(state: ApiState, owned: Owned, project: str, name: str) -> Obj | None:
    stored = state.repo.cached(owned.kind, project, name)
    return stored.obj if stored else None


def _report(state: ApiState, owned: Owned, project: str, name: str) -> Obj | None:
    return state.reports[owned.plural].get(state.keys.status(owned.plural, project, name))


def view(state: ApiState, owned: Owned, project: str, name: str) -> Obj | None:
    obj, report = stored_object(state, owned, project, name), _report(state, owned, project, name)
    return merged(owned, obj, report, project, name)


def all_views(state: ApiState, owned: Owned, project: str | None) -> list[Obj]:
    """Every object of a project (None: of every project), sorted by project and name."""
    names: set[tuple[str, str]] = set()
    for s in state.repo.list(owned.kind, project):
        names.add((s.obj["metadata"]["project"], s.obj["metadata"]["name"]))
    if owned.from_report is not None:
        for key, _ in state.reports[owned.plural].items(state.keys.statuses(owned.plural, project)):
            ident = state.keys.parse_status(key)
            names.add((ident.project, ident.name))
    views = (view(state, owned, p, n) for p, n in sorted(names))
    return [v for v in views if v is not None]


# the routes' bodies ------------------------------------------------------------------------


def list_response(request: Request, owned: Owned) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    project = project_param(request)
    selector = request.query_params.get("labelSelector")
    if project == "*":
        items = [
            v
            for v in all_views(state, owned, None)
            if principal.sees_project(v["metadata"]["project"], state.tenant_of)
        ]
    else:
        state.check(principal, "read", owned.kind, project)
        items = all_views(state, owned, project)
    meta = {"resourceVersion": str(state.objects.revision), "stale": state.objects.stale}
    body = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [v for v in items if match_labels(v, selector)],
        "metadata": meta,
    }
    return json_response(body, headers=stale_header(state))


def get_response(request: Request, owned: Owned, name: str) -> Response:
    state, _, _, project = authorized(request, owned.plural, "read")
    found = view(state, owned, project, name)
    if found is None:
        raise NotFound(f"{owned.kind} {name!r} not found in project {project!r}")
    return json_response(found, headers=stale_header(state))


def _half(value: bytes, revision: int, is_object: bool) -> Obj:
    """One half from a watch event: the object, or the owner's report."""
    return decode("", value, revision).obj if is_object else json.loads(value)


def watch_response(request: Request, owned: Owned) -> Response:
    """Both halves of every object, in one revision-ordered stream (resumable by Last-Event-ID)."""
    state = mesh(request)
    principal = state.authenticate(request)
    project = project_param(request)
    every = project == "*"
    if not every:
        state.check(principal, "read", owned.kind, project)
    scope = None if every else project
    objects = state.keys.objects(owned.plural, scope)
    reports = state.keys.statuses(owned.plural, scope)
    selector = request.query_params.get("labelSelector")
    after = start_revision(request)

    def visible(obj: Obj) -> bool:
        return principal.sees_project(obj["metadata"]["project"], state.tenant_of) and match_labels(
            obj, selector
        )

    def convert(event: WatchEvent) -> dict[str, Any] | None:
        if event.type not in ("PUT", "DELETE"):
            return None
        if event.key.startswith(objects):
            ident, is_object = state.keys.parse_object(event.key), True
        elif event.key.startswith(reports):
            ident, is_object = state.keys.parse_status(event.key), False
        else:
            return None  # a neighbour inside the watched range
        p, n = ident.project, ident.name
        other = _report(state, owned, p, n) if is_object else stored_object(state, owned, p, n)

        def pair(mine: Obj | None) -> tuple[Obj | None, Obj | None]:
            return (mine, other) if is_object else (other, mine)

        def shown(mine: bool) -> bool:
            """Is the object shown with this half there (or not) and the other as it is?"""
            obj, report = (mine, other is not None) if is_object else (other is not None, mine)
            return obj or (report and owned.from_report is not None)

        existed = event.type == "DELETE" or event.create_revision != event.mod_revision
        if event.type == "PUT":
            mine = _half(event.value, event.mod_revision, is_object)
            kind = "MODIFIED" if shown(existed) else "ADDED"
        elif shown(False):  # the other half still shows the object
            mine, kind = None, "MODIFIED"
        elif shown(True) and event.prev_value is not None:  # gone: show what it was
            mine, kind = _half(event.prev_value, event.mod_revision, is_object), "DELETED"
        else:
            return None
        found = merged(owned, *pair(mine), p, n)
        return sse(kind, found, event.mod_revision) if found and visible(found) else None

    async def stream() -> AsyncIterator[dict[str, Any]]:
        nonlocal after
        if after is None:
            after = state.objects.revision
            for found in all_views(state, owned, scope):
                if visible(found):
                    yield sse("ADDED", found)
            yield sse("BOOKMARK", {"resourceVersion": str(after)}, after)
        end = reports[:-1] + "0"  # just past the reports prefix
        async for item in watch_etcd(state, objects, after, convert, prev_kv=True, end=end):
            yield item

    return EventSourceResponse(stream(), ping=PING_S)
