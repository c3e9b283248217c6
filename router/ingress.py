"""The router's HTTP/1.1 server: parse a request (llhttp, through `httptools`), run its handler,
write the answer; keep-alive, pipelining, flow control, a hang-up cancels the handler.

A web framework's request path (aiohttp's: request and response objects, multidicts, a URL
dispatcher, signals) cost ~0.2 ms of Python per request on a cold path, which at low load is
every request: the largest part of what the router added to a stream's first token. The router
serves a handful of routes, so this module does what those need and nothing else. The head of a
streamed answer goes out with its first chunk, in one write.

Limits: request heads up to `MAX_HEAD_BYTES`, bodies up to `max_body_bytes` (413 before the body
is read when Content-Length says so, and `Expect: 100-continue` answered only within it), idle
keep-alive connections (and requests that trickle in) closed after `idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httptools

from infermesh.errors import BadRequest, MeshError, MethodNotAllowed, NotFound, PayloadTooLarge

MAX_HEAD_BYTES = 64 * 1024
DRAIN_FACTOR = 4  # a refused body is read and dropped up to this many times the limit
MAX_PIPELINED = 16  # requests read ahead of the one being answered before reading pauses
log = logging.getLogger(__name__)

_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Content",
    429: "Too Many Requests", 499: "Client Closed Request", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}  # fmt: skip


class Request:
    """One request, its body read whole."""

    __slots__ = ("body", "headers", "keep_alive", "match", "method", "path", "query")

    def __init__(
        self, method: str, target: str, headers: dict[str, str], body: bytes, keep_alive: bool
    ) -> None:
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers  # names in lower case; repeated ones joined with ", "
        self.body = body
        self.keep_alive = keep_alive
        self.match = ""  # the route's variable part: an endpoint's name

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Reply:
    """The answer to one request: `send` a whole one, or `start`, `write`..., `end` a stream
    (chunked). Writing after the caller hung up raises ConnectionResetError."""

    __slots__ = ("_conn", "_head", "_keep_alive", "finished", "headers", "started", "status")

    def __init__(self, conn: _Connection, keep_alive: bool) -> None:
        self._conn, self._keep_alive = conn, keep_alive
        self.status = 0
        self.headers: dict[str, str] = {}
        self._head = b""
        self.started = self.finished = False

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._begin(status, {"Content-Type": content_type, **(headers or {})}, len(body))
        self._conn.write(self._head + body)
        self.finished = True

    def send_json(self, status: int, data: Any, headers: Mapping[str, str] | None = None) -> None:
        self.send(status, json.dumps(data).encode(), headers=headers)

    def start(self, status: int, headers: Mapping[str, str]) -> None:
        """The head of a streamed answer; it goes out with the first chunk."""
        self._begin(status, headers, None)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        frame = b"%x\r\n%s\r\n" % (len(data), data)
        if self._head:
            frame, self._head = self._head + frame, b""
        await self._conn.send(frame)

    async def end(self) -> None:
        await self._conn.send(self._head + b"0\r\n\r\n")
        self._head = b""
        self.finished = True

    def _begin(self, status: int, headers: Mapping[str, str], length: int | None) -> None:
        if self.started:
            raise RuntimeError("the answer has begun already")
        self.started, self.status = True, status
        self.headers = dict(headers)
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n", _date_line()]
        for name, value in self.headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        if length is None:
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            lines.append(f"Content-Length: {length}\r\n")
        if not self._keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        self._head = "".join(lines).encode("latin-1")


Handler = Callable[[Request, Reply], Awaitable[None]]


class Routes:
    """Exact paths, plus one pattern: PREFIX{name}SUFFIX (`/v1/endpoint/{name}:invoke`)."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[str, str, str, Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        if "{" in path:
            prefix, rest = path.split("{", 1)
            suffix = rest.split("}", 1)[1]
            self._patterns.append((method, prefix, suffix, handler))
        else:
            self._exact.setdefault(path, {})[method] = handler

    def resolve(self, request: Request) -> Handler:
        by_method = self._exact.get(request.path)
        if by_method is None:
            for method, prefix, suffix, handler in self._patterns:
                path = request.path
                if path.startswith(prefix) and path.endswith(suffix):
                    name = path[len(prefix) : len(path) - len(suffix)]
                    if name and "/" not in name and method == request.method:
                        request.match = name
                        return handler
            raise NotFound(f"no route {request.method} {request.path}", {"path": request.path})
        handler = by_method.get(request.method)
        if handler is None:
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}",
                {"allowed": sorted(by_method)},
            )
        return handler


class Ingress:
    """Serves `routes` on a socket until `stop`."""

    def __init__(
        self, routes: Routes, *, max_body_bytes: int, idle_timeout_s: float = 75.0
    ) -> None:
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let answers in progress finish for `grace_s`, then hang up."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while any(c.task is not None for c in self._connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def handle(self, request: Request, reply: Reply) -> None:
        try:
            handler = self.routes.resolve(request)
        except MeshError as exc:
            reply.send_json(exc.status, exc.to_json())
            return
        await handler(request, reply)


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed as they arrive, answered one at a time."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        # A request refused before its body was read (too large): answered at once, its body
        # still read (and dropped) so the caller can read the answer, then the connection ends.
        self.refusal: MeshError | None = None
        self.reading = True
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.idle: asyncio.TimerHandle | None = None

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio leaves Nagle on for accepted sockets of proto 0: a stream's last small
            # write would wait for the caller's delayed ACK (40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ingress._connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(BadRequest("protocol upgrades are not served here"))
            self._close()
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(f"malformed HTTP request: {exc}"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.ingress._connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        if self.task is not None:
            self.task.cancel()  # the caller hung up: stop its work (the runtime sees it too)
        self.pending.clear()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    # httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.body_bytes, self.head_bytes = b"", {}, [], 0, 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        limit = self.ingress.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            self._refuse(_too_large(int(length), limit))
        elif (
            self.headers.get("expect", "").lower() == "100-continue"
            and self.transport is not None
            and self.task
            is None  # never into another answer's bytes (the caller waits, then sends)
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        limit = self.ingress.max_body_bytes
        if self.refusal is not None:
            if self.body_bytes > DRAIN_FACTOR * limit:  # not reading forever for anyone
                self._close()
            return
        if self.body_bytes > limit:
            self._refuse(_too_large(self.body_bytes, limit))
            self.body = []
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.idle is not None:  # armed until a whole request is in: a trickling one ends too
            self.idle.cancel()
            self.idle = None
        if self.refusal is not None:
            self._close()
            return
        method = self.parser.get_method().decode("latin-1")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = Request(
            method, self.url.decode("latin-1"), self.headers, body, self.parser.should_keep_alive()
        )
        self.pending.append(request)
        if len(self.pending) > MAX_PIPELINED and self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()
        if self.task is None:
            self._next()

    # answering --------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is None:
            raise ConnectionResetError("the caller hung up")
        self.transport.write(data)

    async def send(self, data: bytes) -> None:
        self.write(data)
        while self.write_paused and self.transport is not None:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained
        if self.transport is None:
            raise ConnectionResetError("the caller hung up")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _next(self) -> None:
        request = self.pending.popleft()
        if not self.reading and self.transport is not None:
            self.reading = True
            self.transport.resume_reading()
        self.task = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        reply = Reply(self, request.keep_alive)
        try:
            await self.ingress.handle(request, reply)
        except (asyncio.CancelledError, ConnectionResetError):
            self.task = None
            return  # the caller is gone
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            if not reply.started:
                reply.send_json(500, MeshError("internal error").to_json())
        self.task = None
        if not reply.finished or not request.keep_alive:
            self._close()  # a cut-off stream must not look whole; or the caller asked
        elif self.pending:
            self._next()
        elif self.refusal is not None:
            self._close()
        elif self.transport is not None:
            self._arm_idle()

    def _refuse(self, error: MeshError) -> None:
        """Answer a request that cannot be served (the first such error wins); the connection
        ends after it. Behind an answer in progress it just ends after that answer."""
        if self.refusal is not None:
            return
        self.refusal = error
        if self.task is None and self.transport is not None:
            Reply(self, keep_alive=False).send_json(error.status, error.to_json())

    def _close(self) -> None:
        if self.transport is not None and self.task is None:
            self.transport.close()  # after what is written has gone out

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            self._refuse(BadRequest(f"request head over {MAX_HEAD_BYTES} bytes"))
            raise ValueError("head over the limit")  # stops the parser: data_received closes

    def _arm_idle(self) -> None:
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.ingress.idle_timeout_s, self.abort)

    def _wake_writer(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is {size} bytes; the limit is {limit}", {"limit": limit, "size": size}
    )


_date = [0, ""]  # the second, and its Date header line


def _date_line() -> str:
    """The Date header, formatted once a second."""
    now = int(time.time())
    if _date[0] != now:
        stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        _date[:] = [now, f"Date: {stamp}\r\n"]
    return str(_date[1])
