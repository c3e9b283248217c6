"""Audit log, tokens, identity, probes and metrics."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from infermesh.errors import BadRequest, Conflict, EtcdUnavailable
from infermesh.store import audit, auth
from infermesh.store.api.http import json_response, read_json
from infermesh.store.api.state import mesh

router = APIRouter()

ETCD_UP = Gauge("infermesh_api_etcd_up", "1 when the API's view of etcd is live, 0 when stale")
OBJECTS = Gauge("infermesh_api_objects", "Objects in the API's watch cache")


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    state = mesh(request)
    ok = state.objects.synced.is_set() and await state.store.healthy()
    body = {"status": "ok" if ok else "unavailable", "etcd": ok, "revision": state.objects.revision}
    return json_response(body, 200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = mesh(request)
    ETCD_UP.set(0 if state.objects.stale else 1)
    OBJECTS.set(len(state.objects))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/whoami")
async def whoami(request: Request) -> Response:
    state = mesh(request)
    return json_response(state.authenticate(request).to_json())


@router.post("/v1/tokens")
async def create_token(request: Request) -> Response:
    """Mint a token; the response is the only place it is ever shown."""
    state = mesh(request)
    principal = state.authenticate(request)
    state.require_admin(principal, "create tokens")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object: {subject, roles, projects}")
    new = auth.validate_principal(body)
    token = auth.new_token()
    if not await state.ensure_token(token, new, actor=principal.subject):
        raise Conflict("token collision; try again")
    return json_response({"token": token, **new.to_json()}, 201)


async def _audit_records(request: Request) -> tuple[list[dict], dict | None]:
    state = mesh(request)
    kvs, _ = await state.store.list_prefix(state.keys.audit())
    head = await state.store.get(state.keys.audit_head)
    return [json.loads(kv.value) for kv in kvs], (json.loads(head.value) if head else None)


@router.get("/v1/audit")
async def list_audit(request: Request) -> Response:
    state = mesh(request)
    state.require_admin(state.authenticate(request), "read the audit log")
    try:
        limit = max(1, min(int(request.query_params.get("limit", "100")), 10_000))
    except ValueError:
        raise BadRequest("limit: must be an integer", {"field": "limit"}) from None
    if state.objects.stale:
        raise EtcdUnavailable("etcd is unavailable; the audit log is read from etcd only")
    records, _ = await _audit_records(request)
    return json_response({"items": records[-limit:][::-1]})


@router.get("/v1/audit:verify")
async def verify_audit(request: Request) -> Response:
    state = mesh(request)
    state.require_admin(state.authenticate(request), "verify the audit log")
    records, head = await _audit_records(request)
    return json_response(audit.verify(records, head).to_json())
