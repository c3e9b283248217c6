"""The router's HTTP front: `POST /v1/endpoint/{name}:invoke`, the OpenAI routes, `/metrics`.

The router's own HTTP/1.1 server in front (ingress.py) and client behind (upstream.py), so a
streamed chunk goes from the runtime to the caller with one read and one write. Handlers stay
thin: authenticate, parse, then `RouterService` decides and forwards; this module only moves
bytes and maps errors to JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import ServerSentEvent

from infermesh.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    MeshError,
    Unauthorized,
)
from infermesh.model import Endpoint
from infermesh.model.policy import IdempotencyPolicy
from infermesh.router.admission import Rejected
from infermesh.router.idempotency import StoredResponse, fingerprint
from infermesh.router.ingress import Ingress, Reply, Request, Routes
from infermesh.router.invocation import Invocation, Kind, kind_of, parse_body, read_stream
from infermesh.router.proxy import Attempt
from infermesh.router.service import Plan, RouterService, RouterSettings
from infermesh.router.signals import Outcome, ship
from infermesh.router.view import RouterView
from infermesh.store import auth
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout

PASS_HEADERS = ("Content-Type", "X-Request-Id")
log = logging.getLogger(__name__)


def send_error(reply: Reply, exc: MeshError) -> None:
    headers = {}
    if isinstance(exc, Rejected):
        headers["Retry-After"] = str(exc.retry_after_s)
    reply.send_json(exc.status, exc.to_json(), headers)


class RouterApp:
    """The routes around one `RouterService`."""

    def __init__(self, service: RouterService) -> None:
        self.service = service
        self.view = service.view
        routes = Routes()
        routes.add("POST", "/v1/endpoint/{name}:invoke", self.invoke)
        routes.add("POST", "/v1/chat/completions", self.chat)
        routes.add("POST", "/v1/completions", self.completions)
        routes.add("GET", "/v1/models", self.models)
        routes.add("GET", "/metrics", self.metrics)
        routes.add("GET", "/healthz", self.healthz)
        routes.add("GET", "/readyz", self.healthz)
        self.routes = routes

    # routes ------------------------------------------------------------------------------
    async def invoke(self, request: Request, reply: Reply) -> None:
        await self._serve(request, reply, None, request.match)

    async def chat(self, request: Request, reply: Reply) -> None:
        await self._serve(request, reply, "chat", None)

    async def completions(self, request: Request, reply: Reply) -> None:
        await self._serve(request, reply, "completion", None)

    async def models(self, request: Request, reply: Reply) -> None:
        try:
            principal = self._principal(request)
            project = self._project(request, principal)
            self._may_see(principal, project)
        except MeshError as exc:
            send_error(reply, exc)
            return
        data = [
            {"id": e.metadata.name, "object": "model", "created": 0, "owned_by": project}
            for e in self.view.objects("endpoints", project)
        ]
        reply.send_json(200, {"object": "list", "data": data})

    async def metrics(self, _: Request, reply: Reply) -> None:
        reply.send(200, generate_latest(self.service.signals.registry), CONTENT_TYPE_LATEST)

    async def healthz(self, _: Request, reply: Reply) -> None:
        status = {"ok": True, "stale": self.view.stale, "generation": self.view.generation}
        reply.send_json(200, status)

    # auth --------------------------------------------------------------------------------
    def _principal(self, request: Request) -> auth.Principal | None:
        header = request.header("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
        principal = self.view.principal(token.strip())
        if principal is None:
            raise Unauthorized("invalid or revoked token")
        return principal

    def _project(self, request: Request, principal: auth.Principal | None) -> str:
        project = request.header("X-InferMesh-Project")
        if project:
            return project
        if principal is not None:
            named = [p for p in principal.projects if p != "*"]
            if len(named) == 1:
                return named[0]
        return "default"

    def _may_see(self, principal: auth.Principal | None, project: str) -> None:
        if principal is None:
            raise Unauthorized(
                "missing bearer token: send 'Authorization: Bearer <token>' "
                "(the token is in your context file or INFERMESH_TOKEN)"
            )
        if not principal.sees_project(project, self.view.tenant_of):
            raise Forbidden(
                f"{principal.subject} has no access to project {project!r}",
                {"project": project, "subject": principal.subject},
            )

    def _authorize(self, principal: auth.Principal | None, endpoint: Endpoint) -> None:
        if principal is None and not endpoint.spec.auth.required:
            return  # a public endpoint
        self._may_see(principal, endpoint.metadata.project)

    # the request path --------------------------------------------------------------------
    async def _serve(
        self, request: Request, reply: Reply, route_kind: Kind | None, name: str | None
    ) -> None:
        started = time.monotonic()
        outcome: Outcome | None = None
        try:
            principal = self._principal(request)
            raw = request.body  # the ingress refused one over the limit (413)
            body = parse_body(raw, self.service.settings.max_body_bytes)
            kind = kind_of(body, route_kind)
            if name is None:
                name = body.get("model")
                if not isinstance(name, str) or not name:
                    raise BadRequest(
                        "model: required, the name of the endpoint to call", {"field": "model"}
                    )
            project = self._project(request, principal)
            endpoint = self.service.endpoint(project, name)
            self._authorize(principal, endpoint)
            tenant = self.view.tenant_of(project)
            idempotency_key = request.header("Idempotency-Key")
            inv = Invocation(
                endpoint=name,
                project=project,
                kind=kind,
                body=body,
                stream=read_stream(body),
                idempotency_key=idempotency_key,
                domain_hint=request.header("X-Domain-Hint"),
                traceparent=request.header("traceparent"),
                session=request.header("X-Session-Id"),
                explain=request.header("X-InferMesh-Explain") in ("1", "true"),
                fingerprint=fingerprint(raw) if idempotency_key else "",  # only a key needs it
            )
            outcome = Outcome(project, name, "", "", tenant, 0, 0.0)
            if inv.explain:
                plan = self.service.plan(inv, endpoint, tenant)
                reply.send_json(200, self.service.explain(plan))
                return
            await self._admitted(reply, inv, endpoint, tenant, outcome)
        except MeshError as exc:
            if outcome is not None:
                outcome.status = exc.status
                outcome.rejected = exc.details.get("limit") if exc.status == 429 else None
            send_error(reply, exc)
        finally:
            if outcome is not None and outcome.status:
                outcome.latency_s = time.monotonic() - started
                self.service.signals.record(outcome)

    async def _admitted(
        self,
        reply: Reply,
        inv: Invocation,
        endpoint: Endpoint,
        tenant: str,
        outcome: Outcome,
    ) -> None:
        service = self.service
        route_policy = service.view.route(inv.project, endpoint, endpoint.spec.modelRef).policy
        scope = (tenant, f"{inv.project}/{inv.endpoint}")
        if inv.idempotency_key:
            stored = await self._idempotent(inv, scope, route_policy.idempotency)
            if stored is not None:  # the first call's answer: replay it, run nothing
                outcome.status = 0  # a replay is not a new request
                await _replay(reply, stored)
                return
        key = f"{inv.project}/{inv.endpoint}"
        inflight = service.signals.inflight.labels(inv.endpoint)
        ticket = None

        def release() -> None:
            if ticket is not None:
                inflight.dec()
                ticket.release()

        try:
            ticket = await service.admission.try_acquire(key, tenant, route_policy.admission)
            inflight.inc()
            plan = service.plan(inv, endpoint, tenant)
            outcome.revision, outcome.strategy = plan.revision, plan.strategy
            result = await service.forward(plan, inv)
        except BaseException:
            if inv.idempotency_key:
                service.idempotency.abandon(scope, inv.idempotency_key)
            release()
            raise
        try:
            winner = result.winner
            outcome.target, outcome.domain = winner.replica.node, winner.replica.domain or ""
            outcome.ttft_s = winner.ttft_ms / 1000.0
            outcome.hedged = result.hedges_fired > 0
            outcome.hedge_won = winner.hedge
            outcome.status = winner.status
            outcome.prompt_tokens = plan.ctx.prompt_tokens
            await self._relay(reply, inv, plan, winner, outcome, scope)
        finally:
            release()

    async def _idempotent(
        self, inv: Invocation, scope: tuple[str, str], policy: IdempotencyPolicy
    ) -> StoredResponse | None:
        """None: this call owns the key and runs; else the stored answer of the first call."""
        key = inv.idempotency_key
        assert key is not None
        begun = self.service.idempotency.begin(
            scope, key, inv.fingerprint, policy.ttlSeconds, time.monotonic()
        )
        if begun.new:
            return None
        if begun.mismatch:
            raise Invalid(
                f"Idempotency-Key {key!r} was already used with a different request body; "
                "use a new key for a new request",
                {"idempotencyKey": key},
            )
        if begun.in_flight:
            if policy.onInFlight == "reject":
                raise Conflict(
                    f"a request with Idempotency-Key {key!r} is still running; "
                    "retry after it finishes to get its result",
                    {"idempotencyKey": key},
                )
            return await begun.wait()
        return begun.response

    async def _relay(
        self,
        reply: Reply,
        inv: Invocation,
        plan: Plan,
        winner: Attempt,
        outcome: Outcome,
        scope: tuple[str, str],
    ) -> None:
        """Copy the winner's answer to the caller as it arrives; keep it for Idempotency-Key."""
        headers = {}
        for name in PASS_HEADERS:
            value = winner.response.header(name)
            if value is not None:
                headers[name] = value
        headers["X-InferMesh-Target"] = winner.replica.node
        headers["X-InferMesh-Strategy"] = plan.strategy
        headers["X-InferMesh-Revision"] = plan.revision
        if inv.stream:
            headers["Cache-Control"] = "no-cache"
        keep: list[bytes] | None = [] if inv.idempotency_key else None
        events = 0
        completed = False
        try:
            reply.start(winner.status, headers)
            chunk: bytes | None = winner.first
            rest = winner.rest()
            while chunk is not None:
                await reply.write(chunk)
                events += chunk.count(b"data:")
                if keep is not None:
                    keep.append(chunk)
                try:
                    chunk = await anext(rest, None)
                except OSError as exc:
                    # After the first byte there is no retry: end the stream with an error event.
                    outcome.status = 502
                    tail = _stream_error(f"the runtime on {winner.replica.node} failed: {exc!s}")
                    await reply.write(tail)
                    await reply.end()
                    return
            await reply.end()
            completed = True
        except ConnectionResetError:
            # The caller hung up mid-answer (a write failed): neither a runtime's failure nor
            # an error to log; 499 as nginx counts it, so the SLIs leave it out.
            outcome.status = 499
        except asyncio.CancelledError:  # the caller hung up and the ingress cancelled the handler
            outcome.status = 499
            raise
        finally:
            winner.close()
            outcome.completion_tokens = max(0, events - 2) if inv.stream else 0
            if inv.idempotency_key:
                if completed and keep is not None:
                    stored = StoredResponse(winner.status, headers, b"".join(keep), keep)
                    self.service.idempotency.complete(scope, inv.idempotency_key, stored)
                else:
                    self.service.idempotency.abandon(scope, inv.idempotency_key)


def _stream_error(message: str) -> bytes:
    error = {"error": {"code": "BadGateway", "message": message, "details": {}}}
    return (
        ServerSentEvent(data=json.dumps(error)).encode() + ServerSentEvent(data="[DONE]").encode()
    )


async def _replay(reply: Reply, stored: StoredResponse) -> None:
    reply.start(stored.status, {**stored.headers, "X-InferMesh-Idempotent-Replay": "true"})
    for chunk in stored.chunks or [stored.body]:
        await reply.write(chunk)
    await reply.end()


async def serve_router(
    store: EtcdStore,
    keys: KeyLayout,
    settings: RouterSettings,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    api_url: str | None = None,
    token: str | None = None,
) -> None:
    """Serve until `stop` is set; `port` 0 picks a free one (logged)."""
    view = RouterView(store, keys)
    await view.start()
    service = RouterService(view, settings)
    await service.start()
    ingress = Ingress(RouterApp(service).routes, max_body_bytes=settings.max_body_bytes)
    sock = socket.create_server((host, port), reuse_port=False)
    await ingress.start(sock)
    log.info("router listening on http://%s:%d", host, sock.getsockname()[1])
    shipping = None
    if api_url and token and service.session is not None:
        shipping = asyncio.create_task(
            ship(
                service.signals,
                service.session,
                api_url,
                token,
                stop,
                every_s=service.settings.ship_every_s,
            )
        )
    try:
        await stop.wait()
    finally:
        if shipping is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shipping, 5)
        await ingress.stop()
        await service.stop()
        await view.stop()
