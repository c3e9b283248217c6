"""`/v1/{plural}` CRUD and `/v1/apply`: thin handlers over the repository."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from infermesh.errors import BadRequest, Invalid, MeshError, NotFound
from infermesh.model import BUILTIN_STRATEGIES, Resource, Strategy, kind_for, parse_object
from infermesh.references import missing_references
from infermesh.store.api.http import encoded_response, json_response, query_flag, read_json
from infermesh.store.api.state import ApiState, mesh
from infermesh.store.auth import Principal, Verb
from infermesh.store.repository import Obj, Stored, WriteResult

router = APIRouter()

# Apply writes what others refer to first, so one manifest resolves within itself.
APPLY_ORDER = [
    "Project",
    "Domain",
    "NodeClass",
    "CapacityPool",
    "Strategy",
    "Model",
    "Policy",
    "Node",
    "Endpoint",
    "Job",
    "SLO",
]


def resolve_kind(plural: str) -> type[Resource]:
    try:
        cls = kind_for(plural)
    except MeshError:
        raise NotFound(f"unknown resource type {plural!r}") from None
    if cls.plural != plural:
        raise NotFound(f"unknown resource type {plural!r}; did you mean {cls.plural!r}?")
    return cls


def project_param(request: Request) -> str:
    return request.query_params.get("project") or "default"


def authorized(
    request: Request, plural: str, verb: Verb
) -> tuple[ApiState, Principal, type[Resource], str]:
    """The preamble of every object route: who calls, on what kind, in which project, allowed?"""
    state = mesh(request)
    principal = state.authenticate(request)
    cls = resolve_kind(plural)
    project = project_param(request)
    state.check(principal, verb, cls.__name__, project)
    return state, principal, cls, project


def parse_body_object(body: Any, cls: type[Resource], project: str) -> Resource:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    body.setdefault("apiVersion", "v1")
    body.setdefault("kind", cls.__name__)
    if body["kind"] != cls.__name__:
        raise BadRequest(
            f"kind: {body['kind']!r} does not belong at /v1/{cls.plural}", {"field": "kind"}
        )
    meta = body.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise Invalid("metadata: must be an object", {"field": "metadata"})
    if not cls.cluster_scoped:
        given = meta.setdefault("project", project)
        if given != project:
            raise BadRequest(
                f"metadata.project {given!r} does not match ?project={project}",
                {"field": "metadata.project"},
            )
    return parse_object(body)


def written(result: WriteResult, status: int = 200) -> Response:
    headers = (
        {"Warning": "; ".join(f'299 - "{w}"' for w in result.warnings)} if result.warnings else None
    )
    return json_response(result.object, status, headers)


def match_labels(obj: Obj, selector: str | None) -> bool:
    """`k=v`, `k!=v` and `k` (exists) terms, comma-separated, all must hold."""
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.strip()) != v.strip().lstrip("="):
                return False
        elif term not in labels:
            return False
    return True


@router.post("/v1/apply")
async def apply(request: Request) -> Response:
    """Server-side apply of many objects. Validation, permissions and (with strict) references are
    checked for all of them before anything is written."""
    state = mesh(request)
    principal = state.authenticate(request)
    project = project_param(request)
    strict = query_flag(request, "strict")
    dry_run = query_flag(request, "dryRun")
    body = await read_json(request)
    items = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise BadRequest('apply takes {"items": [objects...]} with at least one object')

    resources: list[Resource] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise BadRequest("each item must be a JSON object")
            if item.get("kind") and not isinstance(item.get("metadata"), dict):
                raise Invalid("metadata: required", {"field": "metadata"})
            if isinstance(item.get("metadata"), dict):
                item["metadata"].setdefault("project", project)
            resources.append(parse_object(item))
        except MeshError as exc:
            errors.append(
                {
                    "index": i,
                    "kind": item.get("kind") if isinstance(item, dict) else None,
                    "message": exc.message,
                    **exc.details,
                }
            )
    if errors:
        raise Invalid(
            "; ".join(f"item {e['index']}: {e['message']}" for e in errors), {"errors": errors}
        )
    seen: set[tuple[str, str, str]] = set()
    for r in resources:
        ident = (r.kind, r.metadata.project, r.metadata.name)
        if ident in seen:
            raise Invalid(f"{r.kind} {r.metadata.name!r} appears twice in one apply")
        seen.add(ident)
        state.check(principal, "write", r.kind, r.metadata.project)

    def exists(kind: str, proj: str, name: str) -> bool:
        return (kind, proj, name) in seen or state.repo.exists(kind, proj, name)

    def names(kind: str, proj: str) -> list[str]:
        return [n for k, p, n in seen if (k, p) == (kind, proj)] + state.repo.names(kind, proj)

    lookup = (exists, names)

    if strict:
        dangling = [
            f"{r.kind} {r.metadata.name} -> {m.kind} {m.name}"
            for r in resources
            for m in missing_references(r, *lookup)
        ]
        if dangling:
            raise Invalid(
                "unresolved references (strict): "
                + "; ".join(dangling)
                + ". Apply the referenced objects first, or drop --strict",
                {"unresolved": dangling},
            )

    order = {k: i for i, k in enumerate(APPLY_ORDER)}
    results = []
    for r in sorted(resources, key=lambda r: order.get(r.kind, len(order))):
        if dry_run:
            warnings = [f"{m.kind} {m.name} not found" for m in missing_references(r, *lookup)]
            current = state.repo.cached(r.kind, r.metadata.project, r.metadata.name)
            action = "created" if current is None else "configured"
            results.append(
                {
                    "kind": r.kind,
                    "name": r.metadata.name,
                    "project": r.metadata.project,
                    "action": f"{action} (dry run)",
                    "warnings": warnings,
                }
            )
            continue
        res = await state.repo.apply(r, principal.subject, lookup)
        results.append(
            {
                "kind": r.kind,
                "name": r.metadata.name,
                "project": r.metadata.project,
                "action": res.action,
                "warnings": res.warnings,
                "resourceVersion": res.object["metadata"].get("resourceVersion"),
            }
        )
    # report in the manifest's order, as the user wrote it
    position = {(r.kind, r.metadata.name, r.metadata.project): i for i, r in enumerate(resources)}
    results.sort(key=lambda x: position[(x["kind"], x["name"], x["project"])])
    return json_response({"results": results})


def builtin_strategy(name: str, project: str) -> Stored:
    obj = BUILTIN_STRATEGIES[name].to_dict()
    obj["metadata"]["project"] = project
    return Stored(obj, json.dumps(obj, separators=(",", ":")).encode())


def with_builtins(items: list[Stored], project: str) -> list[Stored]:
    """Built-in strategies exist in every project; an applied one of the same name wins."""
    stored = {s.obj["metadata"]["name"] for s in items}
    extra = [builtin_strategy(n, project) for n in BUILTIN_STRATEGIES if n not in stored]
    return sorted(items + extra, key=lambda s: s.obj["metadata"]["name"])


def stale_header(state: ApiState) -> dict[str, str] | None:
    return {"X-InferMesh-Stale": "true"} if state.objects.stale else None


@router.get("/v1/{plural}")
async def list_objects(plural: str, request: Request) -> Response:
    state = mesh(request)
    principal = state.authenticate(request)
    cls = resolve_kind(plural)
    selector = request.query_params.get("labelSelector")
    project = project_param(request)
    if project == "*" or cls.cluster_scoped:  # every project the caller may see
        items = [
            s
            for s in state.repo.list(cls.__name__, None)
            if cls.cluster_scoped
            or principal.sees_project(s.obj["metadata"]["project"], state.tenant_of)
        ]
    else:
        state.check(principal, "read", cls.__name__, project)
        items = state.repo.list(cls.__name__, project)
    if cls is Strategy and project != "*":
        items = with_builtins(items, project)
    meta = {"resourceVersion": str(state.objects.revision), "stale": state.objects.stale}
    body = b"".join(
        (
            b'{"apiVersion":"v1","kind":"List","items":[',
            b",".join(s.json for s in items if match_labels(s.obj, selector)),
            b'],"metadata":',
            json.dumps(meta).encode(),
            b"}",
        )
    )
    return encoded_response(body, headers=stale_header(state))


@router.get("/v1/{plural}/{name}")
async def get_object(plural: str, name: str, request: Request) -> Response:
    state, _, cls, project = authorized(request, plural, "read")
    stored = state.repo.cached(cls.__name__, project, name)
    if stored is None and cls is Strategy and name in BUILTIN_STRATEGIES:
        stored = builtin_strategy(name, project)
    if stored is None:
        raise NotFound(f"{cls.__name__} {name!r} not found in project {project!r}")
    return encoded_response(stored.json, headers=stale_header(state))


@router.post("/v1/{plural}")
async def create_object(plural: str, request: Request) -> Response:
    state, principal, cls, project = authorized(request, plural, "write")
    resource = parse_body_object(await read_json(request), cls, project)
    return written(await state.repo.create(resource, principal.subject), 201)


@router.put("/v1/{plural}/{name}")
async def replace_object(plural: str, name: str, request: Request) -> Response:
    state, principal, cls, project = authorized(request, plural, "write")
    resource = parse_body_object(await read_json(request), cls, project)
    if resource.metadata.name != name:
        raise BadRequest(
            f"metadata.name {resource.metadata.name!r} does not match the URL ({name!r})",
            {"field": "metadata.name"},
        )
    return written(await state.repo.replace(resource, principal.subject))


@router.patch("/v1/{plural}/{name}")
async def patch_object(plural: str, name: str, request: Request) -> Response:
    """JSON merge patch (RFC 7386) of labels, annotations and spec."""
    state, principal, cls, project = authorized(request, plural, "write")
    patch = await read_json(request)
    if not isinstance(patch, dict) or set(patch) - {"metadata", "spec"}:
        raise BadRequest(
            "a patch is a JSON object with 'spec' and/or 'metadata' (labels, annotations)"
        )
    meta_patch = patch.get("metadata") or {}
    if set(meta_patch) - {"labels", "annotations"}:
        raise BadRequest(
            "only metadata.labels and metadata.annotations can be patched", {"field": "metadata"}
        )

    def change(obj: Obj) -> Obj:
        for field in ("labels", "annotations"):
            if field in meta_patch:
                obj["metadata"][field] = merge_patch(
                    obj["metadata"].get(field) or {}, meta_patch[field]
                )
        if "spec" in patch:
            obj["spec"] = merge_patch(obj.get("spec") or {}, patch["spec"])
        return obj

    result = await state.repo.mutate(
        cls.__name__,
        project,
        name,
        principal.subject,
        change,
        action="update",
        reason="Patched",
        message=f"{cls.__name__} {name} patched",
    )
    return written(result)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@router.delete("/v1/{plural}/{name}")
async def delete_object(plural: str, name: str, request: Request) -> Response:
    state, principal, cls, project = authorized(request, plural, "write")
    result = await state.repo.delete(
        cls.__name__, project, name, principal.subject, request.query_params.get("resourceVersion")
    )
    await state.drop_owner_keys(cls.plural, project, name)
    return json_response(result.object)
