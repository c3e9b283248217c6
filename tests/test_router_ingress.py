"""The router's HTTP/1.1 server (router/ingress.py) on 127.0.0.1, spoken to over raw sockets as
clients do (and misbehave): keep-alive, pipelining, limits, hang-ups."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest_asyncio

from infermesh.router.ingress import MAX_HEAD_BYTES, Ingress, Reply, Request, Routes

LIMIT = 1024
IDLE_S = 1.0


class App:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def echo(self, request: Request, reply: Reply) -> None:
        self.calls.append(request.body.decode())
        reply.send_json(200, {"body": request.body.decode(), "match": request.match})

    async def stream(self, _: Request, reply: Reply) -> None:
        reply.start(200, {"Content-Type": "text/event-stream"})
        await reply.write(b"data: one\n\n")
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await reply.write(b"data: two\n\n")
        await reply.end()


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[App, int]]:
    app = App()
    routes = Routes()
    routes.add("POST", "/echo", app.echo)
    routes.add("POST", "/v1/endpoint/{name}:invoke", app.echo)
    routes.add("GET", "/stream", app.stream)
    ingress = Ingress(routes, max_body_bytes=LIMIT, idle_timeout_s=IDLE_S)
    sock = socket.create_server(("127.0.0.1", 0))
    await ingress.start(sock)
    yield app, sock.getsockname()[1]
    await ingress.stop(grace_s=0.1)


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One whole answer: status, headers (lower-case names), body (chunks joined)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readexactly(2)
    return status, headers, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    served: tuple[App, int],
) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/echo", b"1") + post("/v1/endpoint/chat-pro:invoke", b"2"))
    first, second = await answer(reader), await answer(reader)
    assert first[0] == 200 and json.loads(first[2]) == {"body": "1", "match": ""}
    assert json.loads(second[2]) == {"body": "2", "match": "chat-pro"}
    writer.write(post("/echo", b"3"))  # the same connection, again
    assert json.loads((await answer(reader))[2])["body"] == "3"
    assert app.calls == ["1", "2", "3"] and "date" in first[1]
    writer.close()


async def test_unknown_routes_and_methods_get_json_errors(served: tuple[App, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/nowhere", b"{}") + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    missing, wrong = await answer(reader), await answer(reader)
    assert missing[0] == 404 and "/nowhere" in json.loads(missing[2])["error"]["message"]
    assert wrong[0] == 405 and json.loads(wrong[2])["error"]["details"]["allowed"] == ["POST"]
    writer.close()


async def test_a_body_over_the_limit_is_refused_and_the_caller_reads_the_413(
    served: tuple[App, int],
) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/echo", b"x" * (LIMIT * 3)))
    status, headers, body = await answer(reader)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"]["details"] == {"limit": LIMIT, "size": LIMIT * 3}
    assert await reader.read() == b"" and app.calls == []  # closed; the handler never ran
    # Chunked, so only the body's bytes tell: refused as it passes the limit.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (LIMIT + 1, b"y" * (LIMIT + 1))
        + b"0\r\n\r\n"
    )
    assert (await answer(reader))[0] == 413 and app.calls == []


async def test_malformed_requests_and_huge_heads_get_400_and_are_closed(
    served: tuple[App, int],
) -> None:
    _, port = served
    for raw in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        status, _, body = await answer(reader)
        assert status == 400 and json.loads(body)["error"]["code"] == "BadRequest"
        assert await reader.read() == b""


async def test_expect_continue_is_answered_within_the_limit(served: tuple[App, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/echo", b"", "Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: 2"))
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert json.loads((await answer(reader))[2])["body"] == "ok"


async def test_a_stream_goes_out_as_written_and_a_hang_up_cancels_the_handler(
    served: tuple[App, int],
) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert await reader.readuntil(b"one\n\n\r\n") == b"b\r\ndata: one\n\n\r\n"  # before the rest
    writer.close()  # the caller hangs up mid-stream
    await asyncio.wait_for(app.cancelled.wait(), 5)


async def test_connection_close_is_honoured(served: tuple[App, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/echo", b"1", "Connection: close\r\n"))
    status, headers, _ = await answer(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await reader.read() == b""


async def test_an_idle_connection_and_a_trickling_request_are_closed(
    served: tuple[App, int],
) -> None:
    app, port = served
    idle_reader, _ = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    for r in (idle_reader, reader):
        assert await asyncio.wait_for(r.read(), IDLE_S * 10) == b""  # closed by the router
    assert app.calls == []


async def test_a_slow_reader_holds_the_writer_back_and_gets_every_byte() -> None:
    piece, pieces = b"z" * 65536, 256  # 16 MiB: far past the socket buffers
    written = []

    async def big(_: Request, reply: Reply) -> None:
        reply.start(200, {"Content-Type": "application/octet-stream"})
        for i in range(pieces):
            await reply.write(piece)  # waits while the caller's socket is full
            written.append(i)
        await reply.end()

    routes = Routes()
    routes.add("GET", "/big", big)
    ingress = Ingress(routes, max_body_bytes=LIMIT)
    sock = socket.create_server(("127.0.0.1", 0))
    await ingress.start(sock)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", sock.getsockname()[1], limit=1 << 25
        )
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.5)
        assert len(written) < pieces  # held back, not buffered whole in the router
        writer.transport.resume_reading()  # type: ignore[attr-defined]
        status, _, body = await answer(reader)
        assert status == 200 and body == piece * pieces and len(written) == pieces
        writer.close()
    finally:
        await ingress.stop(grace_s=0.1)
