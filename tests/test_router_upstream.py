"""The router's client to runtimes (router/upstream.py) against a real HTTP/1.1 server on 127.0.0.1
that answers as runtimes do: Content-Length, chunked streams, a body that ends with the
connection, and hang-ups."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from infermesh.router.upstream import UpstreamError, UpstreamPool

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Runtime:
    """A tiny HTTP server: every request read whole, then `answer` writes the reply."""

    answer: Answer
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.answer(request, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
        finally:
            writer.close()


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Runtime]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Runtime:
        runtime = Runtime(answer)
        runtime.server = await asyncio.start_server(runtime.serve, "127.0.0.1", 0)
        servers.append(runtime.server)
        return runtime

    yield start
    for server in servers:
        server.close()


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(connect_timeout_s=2.0)
    yield pool
    await pool.close()


async def json_ok(_: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: r1\r\n"
        b'Content-Length: 11\r\n\r\n{"ok":true}'
    )
    await writer.drain()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_a_request_is_sent_whole_and_keep_alive_connections_are_reused(
    serve: Callable[[Answer], Awaitable[Runtime]], pool: UpstreamPool
) -> None:
    runtime = await serve(json_ok)
    for _ in range(3):
        answer = await pool.post(
            runtime.url,
            "/v1/chat/completions",
            b'{"a":1}',
            {"Content-Type": "application/json", "traceparent": "00-ab-cd-01"},
        )
        assert answer.status == 200
        assert answer.header("x-request-id") == "r1" and answer.header("Content-Type")
        assert await answer.read() == b'{"ok":true}'
        assert answer.at_eof()
        answer.close()
    assert runtime.connections == 1  # one connection served all three
    first = runtime.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"traceparent: 00-ab-cd-01\r\n" in first and first.endswith(b'\r\n\r\n{"a":1}')


async def test_a_stream_arrives_piece_by_piece_and_ends(
    serve: Callable[[Answer], Awaitable[Runtime]], pool: UpstreamPool
) -> None:
    release = asyncio.Event()

    async def stream(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b"data: one\n\n")
        )
        await writer.drain()
        await release.wait()
        writer.write(chunk(b"data: two\n\n") + b"0\r\n\r\n")
        await writer.drain()

    runtime = await serve(stream)
    answer = await pool.post(runtime.url, "/v1/completions", b"{}", {})
    assert await answer.read_some() == b"data: one\n\n"  # before the rest exists
    release.set()
    assert await answer.read_some() == b"data: two\n\n"
    assert await answer.read_some() == b""
    assert answer.at_eof()


async def test_a_body_that_ends_with_the_connection_is_whole(
    serve: Callable[[Answer], Awaitable[Runtime]], pool: UpstreamPool
) -> None:
    async def until_close(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    runtime = await serve(until_close)
    answer = await pool.post(runtime.url, "/x", b"{}", {})
    assert await answer.read() == b"all of it" and answer.at_eof()


async def test_closing_a_partial_answer_hangs_up_on_the_runtime(
    serve: Callable[[Answer], Awaitable[Runtime]], pool: UpstreamPool
) -> None:
    async def endless(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:  # generates until the caller leaves
            writer.write(chunk(b"data: token\n\n"))
            await writer.drain()
            await asyncio.sleep(0.01)

    runtime = await serve(endless)
    answer = await pool.post(runtime.url, "/x", b"{}", {})
    assert await answer.read_some()
    answer.close()
    await asyncio.wait_for(runtime.hung_up.wait(), 5)
    assert not answer.at_eof()


async def test_a_stale_keep_alive_connection_is_replaced_without_an_error(
    serve: Callable[[Answer], Awaitable[Runtime]], pool: UpstreamPool
) -> None:
    answered: set[asyncio.StreamWriter] = set()

    async def once_per_connection(request: bytes, writer: asyncio.StreamWriter) -> None:
        if writer in answered:  # closed as the next request came: an idle timeout's race
            writer.close()
            return
        answered.add(writer)
        await json_ok(request, writer)

    runtime = await serve(once_per_connection)
    for _ in range(3):
        answer = await pool.post(runtime.url, "/x", b"{}", {})
        assert await answer.read() == b'{"ok":true}'
        answer.close()
    assert runtime.connections == 3 and len(runtime.requests) == 5  # two sent again


async def test_a_runtime_that_fails_gives_a_clear_error(
    serve: Callable[[Answer], Awaitable[Runtime]], pool: UpstreamPool
) -> None:
    async def garbage(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()

    async def dies_mid_body(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    with pytest.raises(UpstreamError, match="malformed HTTP answer"):
        await pool.post((await serve(garbage)).url, "/x", b"{}", {})
    answer = await pool.post((await serve(dies_mid_body)).url, "/x", b"{}", {})
    assert await answer.read_some() == b"partial"
    with pytest.raises(UpstreamError, match="closed the connection"):
        await answer.read_some()
    closed = await serve(json_ok)
    url = closed.url
    assert closed.server is not None
    closed.server.close()
    await closed.server.wait_closed()
    with pytest.raises(UpstreamError, match="cannot connect"):
        await pool.post(url, "/x", b"{}", {})


async def test_a_header_with_a_line_break_is_refused_before_sending(pool: UpstreamPool) -> None:
    with pytest.raises(ValueError, match="line break"):
        await pool.post("http://127.0.0.1:9", "/x", b"{}", {"traceparent": "a\r\nEvil: 1"})


async def test_a_slow_reader_pauses_the_runtime_and_still_gets_every_byte(
    serve: Callable[[Answer], Awaitable[Runtime]], pool: UpstreamPool
) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, past the pause mark many times over

    async def big(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 65536):
            writer.write(body[i : i + 65536])
            await writer.drain()

    runtime = await serve(big)
    answer = await pool.post(runtime.url, "/x", b"{}", {})
    await asyncio.sleep(0.2)  # the pool buffers what it may, then stops reading
    got = bytearray()
    while piece := await answer.read_some():
        got += piece
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(0), 0.1)
    assert bytes(got) == body and answer.at_eof()
