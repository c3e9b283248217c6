"""HTTP plumbing shared by the routes: JSON in and out, errors, the body limit, request metrics."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infermesh.errors import BadRequest, Invalid, MeshError, PayloadTooLarge

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "infermesh_api_requests_total", "Control-plane API requests", ["method", "route", "code"]
)
LATENCY = Histogram(
    "infermesh_api_request_duration_seconds",
    "Control-plane API request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return encoded_response(
        json.dumps(data, separators=(",", ":"), default=str).encode(), status, headers
    )


def encoded_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error_response(exc: MeshError) -> Response:
    return json_response(exc.to_json(), exc.status)


def query_flag(request: Request, name: str) -> bool:
    """A yes/no query parameter (`?dryRun=true`); absent is no."""
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


async def read_json(request: Request) -> Any:
    """The request body as JSON; a clear 400 when it is not."""
    raw = await request.body()
    if not raw:
        raise BadRequest("request body is empty; send a JSON document")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


async def mesh_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, MeshError)
    return error_response(exc)


async def validation_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
        for err in exc.errors()
    ]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return error_response(Invalid(message, {"errors": errors}))


async def unexpected_error_handler(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(MeshError(f"internal error: {type(exc).__name__}"))


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before any handler sees them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(
            f"request body exceeds the limit of {self.limit} bytes", {"limitBytes": self.limit}
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error_response(too_large)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await error_response(too_large)(scope, receive, send)


class _TooLarge(Exception):
    pass


class RequestMetrics:
    """Count and time requests by route template (never by raw path: names would explode)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
