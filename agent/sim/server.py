"""The simulator's HTTP server: vLLM's OpenAI-compatible routes, /metrics and the fault admin.

| route | does |
|---|---|
| `POST /v1/chat/completions`, `POST /v1/completions` | generate, streaming (SSE) or not |
| `GET /v1/models` | the served model |
| `GET /health` | 200, empty body |
| `GET /metrics` | Prometheus text (see `metrics`) |
| `GET/POST/DELETE /admin/faults` | fault injection (see `faults`) |

Every response carries `X-Request-Id`: the client's, or one made up. As in vLLM, it is also the
tail of the response id (`chatcmpl-<id>`, `cmpl-<id>`).

Two ways to run: `serve()` blocks (the `infermesh sim-runtime` command); `start()` runs the server
as a task in the caller's event loop and returns a `RunningSim`, so one process can host a fleet
of simulators, each its own uvicorn server on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infermesh.agent.sim.engine import EngineClosed
from infermesh.agent.sim.faults import FaultError, parse_patch, returned_error_status
from infermesh.agent.sim.metrics import SimMetrics
from infermesh.agent.sim.profiles import DEFAULT_WEIGHTS_GIB
from infermesh.agent.sim.protocol import (
    ApiError,
    GenerationRequest,
    StopChecker,
    bad_request,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    parse_chat,
    parse_completion,
    usage,
    usage_chunk,
)
from infermesh.agent.sim.simulator import Plan, SimConfig, Simulator
from infermesh.agent.sim.tokens import next_piece
from infermesh.agent.sim.wan import caller_location

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 1
_STOP_TIMEOUT_S = 5.0
_HANDLERS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}
)


def create_app(config: SimConfig, *, on_crash: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app of one simulator. `on_crash` runs for the crash fault, after the response;
    by default the process exits."""
    sim = Simulator(config)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        sim.engine.start()
        try:
            yield
        finally:
            await sim.engine.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
        ],
        middleware=[Middleware(RequestContext, metrics=sim.metrics)],
        exception_handlers={ApiError: _api_error, EngineClosed: _engine_closed},
        lifespan=lifespan,
    )
    app.state.sim = sim
    app.state.on_crash = on_crash or _exit_process
    return app


def serve(
    *,
    port: int,
    model: str,
    host: str = "127.0.0.1",
    profile: str = "H100",
    max_num_seqs: int = 256,
    seed: int | None = None,
    time_scale: float = 1.0,
    max_model_len: int = 8192,
    max_num_batched_tokens: int = 8192,
    kv_capacity_tokens: int | None = None,
    weights_gib: float = DEFAULT_WEIGHTS_GIB,
    gpu_uuid: str | None = None,
    log_level: str = "warning",
) -> None:
    """Run one simulator until interrupted (SIGINT/SIGTERM)."""
    config = SimConfig(
        model=model,
        profile=profile,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        kv_capacity_tokens=kv_capacity_tokens,
        weights_gib=weights_gib,
        seed=seed,
        time_scale=time_scale,
        gpu_uuid=gpu_uuid,
        host=host,
        port=port,
    )
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=int(_STOP_TIMEOUT_S),
    )


async def start(config: SimConfig) -> RunningSim:
    """Serve `config` on its host and port (0: any free port) in this event loop."""
    running = RunningSim(config)
    await running.start()
    return running


class RunningSim:
    """A simulator served from a task of the current event loop. Use `start()` to make one, and
    `stop()` to end it, also after a crash fault (it reaps what the crash left behind)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.app = create_app(config, on_crash=self._crash)
        self.simulator: Simulator = self.app.state.sim
        self.crashed = False
        self.port = 0
        self._server = _EmbeddedServer(
            uvicorn.Config(
                self.app,
                log_config=None,  # the host program owns logging
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=int(_STOP_TIMEOUT_S),
            )
        )
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None  # the crash's engine shutdown

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))  # errors surface here, not in uvicorn
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._serve(sock), name=f"sim-{self.port}")
        while not self._server.started:
            if self._task.done():
                sock.close()
                await self._task
                raise RuntimeError(f"simulator on port {self.port} stopped during start-up")
            await asyncio.sleep(0.01)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits on start-up failures; that must not end the host
            raise RuntimeError(f"simulator on port {self.port} failed to start") from exc

    async def stop(self) -> None:
        """End in-flight requests, stop serving and wait for the server's task; idempotent."""
        await self.simulator.engine.close()
        task = self._task
        if task is None:
            return
        if not task.done():
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT_S)
            except TimeoutError:
                self._server.force_exit = True
                await task
        # After a forced exit uvicorn leaves request tasks behind; they end once their
        # connections are gone, and must not outlive the simulator.
        leftovers = set(self._server.server_state.tasks)
        if leftovers:
            _, pending = await asyncio.wait(leftovers, timeout=_STOP_TIMEOUT_S)
            for straggler in pending:
                straggler.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _crash(self) -> None:
        """The crash fault in a shared process: drop every connection, as a dead process would,
        and stop serving (the host's other simulators live on)."""
        log.warning("crash fault: simulator %s stops", self.url)
        self.crashed = True
        for connection in list(self._server.server_state.connections):
            connection.transport.abort()  # uvicorn's protocols keep their transport here
        self._server.should_exit = self._server.force_exit = True
        self._closing = asyncio.ensure_future(self.simulator.engine.close())


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside another program's event loop: that program owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RequestContext:
    """Gives each request its id (echoed as `X-Request-Id`) and counts responses by status."""

    def __init__(self, app: ASGIApp, metrics: SimMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        handler = path if path in _HANDLERS else "none"

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-Id", request_id)
                if link := scope["state"].get("link_class"):  # which WAN link the caller paid
                    headers.append("X-InferMesh-Link-Class", link)
                self.metrics.http_response(handler, scope["method"], message["status"])
            await send(message)

        await self.app(scope, receive, send_with_id)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat")


async def completions(request: Request) -> Response:
    return await _generate(request, "completion")


async def models(request: Request) -> Response:
    sim = _sim(request)
    model = sim.config.model
    card = {
        "id": model,
        "object": "model",
        "created": sim.created,
        "owned_by": "vllm",
        "root": model,
        "parent": None,
        "max_model_len": sim.config.max_model_len,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": sim.created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
    return _json_response({"object": "list", "data": [card]})


async def health(_: Request) -> Response:
    return Response(status_code=200)


async def metrics(request: Request) -> Response:
    return Response(_sim(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def admin_faults(request: Request) -> Response:
    sim = _sim(request)
    if request.method == "DELETE":
        sim.clear_faults()
    elif request.method == "POST":
        try:
            patch = parse_patch(await _read_json(request))
        except FaultError as exc:
            raise bad_request(str(exc), exc.param or None) from None
        sim.apply(patch)
        if patch.crash:
            on_crash: Callable[[], None] = request.app.state.on_crash

            async def crash() -> None:  # async, so it runs on the loop, not in a worker thread
                on_crash()

            return _json_response(
                sim.fault_state() | {"crash": True}, background=BackgroundTask(crash)
            )
    return _json_response(sim.fault_state())


@dataclass(frozen=True)
class _Piece:
    text: str
    finish_reason: str | None
    stop_reason: str | None
    tokens: int  # completion tokens so far


async def _generate(request: Request, kind: str) -> Response:
    sim = _sim(request)
    forced = request.headers.get("x-return-error")
    if forced is not None:
        try:
            status = returned_error_status(forced)
        except FaultError as exc:
            raise bad_request(str(exc), exc.param) from None
        raise ApiError(status, f"injected error (X-Return-Error: {status})")
    body = await _read_json(request)
    parse = parse_chat if kind == "chat" else parse_completion
    generation = parse(body, sim.config.model)
    if sim.inject_error():
        raise ApiError(500, "injected error (error_rate fault)")
    link, delay = sim.config.wan.delay_s(caller_location(request.headers))
    if link is not None:
        request.state.link_class = link
        await asyncio.sleep(delay * sim.config.time_scale)  # the round trip, before any byte
    plan = sim.plan(generation)
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    reply = _Reply(kind, prefix + request.state.request_id, int(time.time()), sim.config.model)
    pieces = _pieces(sim, generation, plan)
    if generation.stream:
        events = _events(reply, pieces, len(generation.prompt), generation.include_usage)
        return EventSourceResponse(events, sep="\n", ping=0)
    return await _whole(request, reply, pieces, len(generation.prompt))


async def _pieces(
    sim: Simulator, generation: GenerationRequest, plan: Plan
) -> AsyncIterator[_Piece]:
    """The reply's text, token by token, as the engine produces it."""
    checker = StopChecker(generation.stop)
    outputs = sim.engine.generate(
        generation.prompt, plan.output_tokens, finish_reason=plan.finish_reason
    )
    async with aclosing(outputs):
        async for out in outputs:
            eos = out.finished and plan.finish_reason == "stop"
            text = checker.push("" if eos else next_piece(plan.rng))
            if checker.stop_reason is not None:
                sim.engine.abort(out.request_id, "stop")
                yield _Piece(text, "stop", checker.stop_reason, out.index + 1)
                return
            finish = plan.finish_reason if out.finished else None
            yield _Piece(text, finish, None, out.index + 1)


@dataclass(frozen=True)
class _Reply:
    kind: str
    id: str
    created: int
    model: str

    def chunk(self, piece: _Piece) -> dict[str, Any]:
        if self.kind == "chat":
            return chat_chunk(
                self.id,
                self.created,
                self.model,
                {"content": piece.text},
                piece.finish_reason,
                piece.stop_reason,
            )
        return completion_chunk(
            self.id, self.created, self.model, piece.text, piece.finish_reason, piece.stop_reason
        )


async def _events(
    reply: _Reply, pieces: AsyncIterator[_Piece], prompt_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """SSE data as vLLM sends it: (chat: a role chunk with the first token), a chunk per token,
    the last one with `finish_reason`, the usage chunk if asked, then `[DONE]`."""
    tokens = 0
    try:
        async with aclosing(pieces):
            async for piece in pieces:
                if tokens == 0 and reply.kind == "chat":
                    role = {"role": "assistant", "content": ""}
                    yield _dumps(chat_chunk(reply.id, reply.created, reply.model, role))
                yield _dumps(reply.chunk(piece))
                tokens = piece.tokens
    except EngineClosed as exc:
        yield _dumps(ApiError(503, str(exc)).to_json())
        yield "[DONE]"
        return
    if include_usage:
        used = usage(prompt_tokens, tokens)
        yield _dumps(usage_chunk(reply.kind, reply.id, reply.created, reply.model, used))
    yield "[DONE]"


async def _whole(
    request: Request, reply: _Reply, pieces: AsyncIterator[_Piece], prompt_tokens: int
) -> Response:
    """A non-streaming reply; a client that hangs up first cancels the work (as vLLM does)."""

    async def collect() -> tuple[str, _Piece]:
        texts: list[str] = []
        last: _Piece | None = None
        async with aclosing(pieces):
            async for piece in pieces:
                texts.append(piece.text)
                last = piece
        # The engine yields at least one token, and the last one always says why it ended.
        assert last is not None and last.finish_reason is not None
        return "".join(texts), last

    work = asyncio.ensure_future(collect())
    hangup = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not work.done():
            work.cancel()
        await asyncio.gather(work, hangup, return_exceptions=True)
    if work.cancelled():
        return Response(status_code=499)  # nobody reads it: the client is gone
    text, last = work.result()
    used = usage(prompt_tokens, last.tokens)
    build = chat_response if reply.kind == "chat" else completion_response
    finish = last.finish_reason
    assert finish is not None
    body = build(reply.id, reply.created, reply.model, text, finish, last.stop_reason, used)
    return _json_response(body)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sim(request: Request) -> Simulator:
    return request.app.state.sim


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _json_response(
    data: Any, status: int = 200, background: BackgroundTask | None = None
) -> Response:
    return Response(
        _dumps(data).encode(), status, media_type="application/json", background=background
    )


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json_response(exc.to_json(), exc.status)


async def _engine_closed(_: Request, exc: Exception) -> Response:
    return _json_response(ApiError(503, f"the simulator is shutting down: {exc}").to_json(), 503)


def _exit_process() -> None:
    log.error("crash fault: the simulator process exits with status %d", CRASH_EXIT_CODE)
    logging.shutdown()
    os._exit(CRASH_EXIT_CODE)
