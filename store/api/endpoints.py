"""Endpoints as users see them: the Endpoint object merged with the delivery controller's status.

The controller (store/delivery/controller.py) writes `{root}/status/endpoints/{project}/{name}`:
`rollout` (the canary's step, phase and its numbers against the baseline) and `degrade` (the
actions the Policy's SLO rules switched on). These routes serve the merge (owner_status.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from infermesh.store.api import owner_status
from infermesh.store.api.owner_status import Owned

router = APIRouter()

ENDPOINTS = Owned("Endpoint", "endpoints", {})


@router.get("/v1/endpoints")
async def list_endpoints(request: Request) -> Response:
    return owner_status.list_response(request, ENDPOINTS)


@router.get("/v1/endpoints/{name}")
async def get_endpoint(name: str, request: Request) -> Response:
    return owner_status.get_response(request, ENDPOINTS, name)


@router.get("/v1/watch/endpoints")
async def watch_endpoints(request: Request) -> Response:
    """Endpoint objects and their status, in one revision-ordered stream."""
    return owner_status.watch_response(request, ENDPOINTS)
