"""The router's HTTP/1.1 client to runtimes: keep-alive connections per runtime, a request in one
write, the answer's body handed on as it arrives.

A general client (aiohttp's `ClientSession`) costs about 0.5 ms of Python per request on a cold
path (URL objects, header multidicts, cookie jars, tracing hooks, a stream reader), and at low
load every request runs cold: that was half of what the router added to a stream's first token.
This one does only what forwarding needs: a pre-built head, llhttp (`httptools`) to parse the
answer, flow control, and a closed connection as the runtime's signal that its caller is gone.

Failures are `UpstreamError` (an `OSError`, like the socket errors under it). A request on a
reused keep-alive connection that the runtime had already closed is sent again once, on a new
connection, when not a byte of the answer came back: that is a stale connection, not a runtime
failing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Mapping

import httptools

HIGH_WATER = 256 * 1024  # buffered body bytes that pause reading from the runtime
LOW_WATER = 64 * 1024


class UpstreamError(ConnectionError):
    """The runtime could not be reached, or its answer broke off or was not HTTP."""


class UpstreamResponse:
    """One answer: status and headers at once, then the body as it arrives."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status: int = conn.parser.get_status_code()
        self.headers: dict[str, str] = conn.headers  # names in lower case

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    async def read_some(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; b"" at the end."""
        return await self._conn.read_some()

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.read_some():
            parts.append(chunk)
        return b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self.read_some():
            yield chunk

    def at_eof(self) -> bool:
        """The whole body arrived and was read."""
        return self._conn.complete and not self._conn.buffer

    def close(self) -> None:
        """Done with the answer: a whole one frees the connection for the next request, a partial
        one hangs up (the runtime sees its caller leave and stops generating)."""
        self._conn.release()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: UpstreamPool, address: tuple[str, int]) -> None:
        self.pool, self.address = pool, address
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.buffer: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False  # a byte of the current answer came back
        self.error: UpstreamError | None = None
        self.framed = False  # the answer says its length (Content-Length or chunked)
        self.idle_since = 0.0
        self.reused = False

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed HTTP answer from the runtime: {exc}"))
            self._hang_up()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self.complete:
            return
        if self.head_done and not self.framed and exc is None:
            self.on_message_complete()  # a body that ends when the connection does
            return
        reason = f": {exc}" if exc else ""
        self._fail(UpstreamError(f"the runtime closed the connection{reason}"))

    # httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key in ("content-length", "transfer-encoding"):
            self.framed = True
        self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.buffer.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # the parser forgets once it resets
        self._wake()

    # the request ------------------------------------------------------------------------
    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.headers = {}
        self.head_done = self.complete = self.keep_alive = self.received = self.framed = False
        self.error = None
        self.transport.write(request)

    async def head(self) -> None:
        while not self.head_done:
            await self._wait()

    async def read_some(self) -> bytes:
        while not self.buffer:
            if self.complete:
                return b""
            await self._wait()
        if len(self.buffer) == 1:
            chunk = self.buffer.popleft()
        else:
            chunk = b"".join(self.buffer)
            self.buffer.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def release(self) -> None:
        if self.complete and not self.buffer and self.keep_alive:
            self.pool.put_back(self)
        else:
            self._hang_up()

    # inner ------------------------------------------------------------------------------
    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self._wake()

    def _hang_up(self) -> None:
        self.complete = False
        if self.transport is not None:
            self.transport.abort()  # no lingering: the runtime should see the hang-up now


class UpstreamPool:
    """Keep-alive connections to every runtime, reused most-recent first."""

    def __init__(self, *, connect_timeout_s: float = 2.0, idle_timeout_s: float = 30.0) -> None:
        self.connect_timeout_s, self.idle_timeout_s = connect_timeout_s, idle_timeout_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def post(
        self, base_url: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """Send `body` to `base_url` + `path` and wait for the answer's status and headers."""
        address = _address(base_url)
        request = _head(address, path, headers, len(body)) + body
        conn = self._reusable(address)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except UpstreamError:
                if conn.received:
                    raise
                # The runtime closed this idle connection as we wrote: send it again, fresh.
        return await self._exchange(await self._connect(address), request)

    async def close(self) -> None:
        for conn in list(self._open):
            conn._hang_up()
        self._idle.clear()
        self._open.clear()

    # used by connections ----------------------------------------------------------------
    def put_back(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        conn.reused = True
        self._idle.setdefault(conn.address, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    # inner ------------------------------------------------------------------------------
    def _reusable(self, address: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.transport is not None and now - conn.idle_since < self.idle_timeout_s:
                return conn
            conn._hang_up()
        return None

    async def _connect(self, address: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, address), *address),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise UpstreamError(
                f"no connection to {address[0]}:{address[1]} within {self.connect_timeout_s} s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {address[0]}:{address[1]}: {exc}") from None
        self._open.add(conn)
        return conn

    async def _exchange(self, conn: _Connection, request: bytes) -> UpstreamResponse:
        try:
            conn.send(request)
            await conn.head()
        except BaseException:  # failed, or cancelled (a lost race, a caller gone): hang up
            conn._hang_up()
            raise
        return UpstreamResponse(conn)


def _head(address: tuple[str, int], path: str, headers: Mapping[str, str], length: int) -> bytes:
    fields = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        fields.append(f"{name}: {value}\r\n")
    return (
        f"POST {path} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n{''.join(fields)}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode("latin-1")


def _address(base_url: str) -> tuple[str, int]:
    """("host", port) of an http:// base URL such as a replica's."""
    rest = base_url.removeprefix("http://")
    if rest is base_url and not base_url.startswith("http://"):
        raise ValueError(f"runtime URL must be http://host:port, got {base_url!r}")
    hostport = rest.split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host:
        return hostport, 80
    return host.strip("[]"), int(port)
