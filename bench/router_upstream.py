#!/usr/bin/env python
"""A fixed-answer, vLLM-compatible upstream for the router benchmark: cheap enough that the
runtime is never what limits a router on the shared core.

    .venv/bin/python bench/router_upstream.py --ports 4 --model bench@1 --ready FILE

One asyncio process (uvloop) listens on `--ports` ports of 127.0.0.1, one per simulated node,
and answers:

- `POST /v1/chat/completions`, `POST /v1/completions`: with `"stream": true`, vLLM's SSE stream
  (chunked): the headers at once, after `ttft_ms` the role chunk and the first token, then a
  token every `itl_ms` (each SSE event its own write, so a proxy sees separate reads when the
  tokens are paced), the last one with `finish_reason`, the usage chunk and `data: [DONE]`;
  `max_tokens` tokens (16 by default). Without `stream`, the whole JSON answer after the same
  time. With `ttft_ms` and `itl_ms` 0 every event is still its own write, back to back.
- `GET /v1/models`, `GET /health`, `GET /metrics` (vLLM's running/waiting/KV gauges, as an
  agent scrapes them: running is the number of answers in progress on that port).
- `POST /admin/pacing` `{"ttft_ms": .., "itl_ms": ..}`: the pacing of the next requests (the
  benchmark sets it between phases); `GET /admin/stats`: requests served per port.

It parses only what it needs (request line, Content-Length or chunked body, `"stream": true`,
`max_tokens`): this is a load sink, not a runtime simulator (agent/sim/ is that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_MAX_TOKENS = re.compile(rb'"max(?:_completion)?_tokens"\s*:\s*(\d+)')
_CHAT = b"/v1/chat/completions"
MAX_TOKENS_CAP = 4096


class Pacing:
    """Shared by every port; changed between phases through /admin/pacing."""

    ttft_s: float = 0.0
    itl_s: float = 0.0


class Port:
    """One simulated node: its counters and its /metrics page."""

    def __init__(self, index: int, model: str) -> None:
        self.index, self.model = index, model
        self.running = 0
        self.served = 0

    def metrics(self) -> bytes:
        label = f'{{model_name="{self.model}"}}'
        return (
            f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{label} "
            f"{self.running}.0\n# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{label} 0.0\n# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{label} 0.0\n"
        ).encode()


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one SSE event."""
    payload = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Events:
    """The SSE events of one answer, pre-encoded per (kind, tokens): the upstream must cost
    next to nothing per request."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._cache: dict[tuple[bool, int], list[bytes]] = {}

    def stream(self, chat: bool, tokens: int) -> list[bytes]:
        key = (chat, tokens)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._build(chat, tokens)
        return found

    def _build(self, chat: bool, tokens: int) -> list[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": "cmpl-bench", "object": kind, "created": 0, "model": self.model}

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        events = []
        for i in range(tokens):
            finish = "length" if i == tokens - 1 else None
            body = {**base, "choices": [choice(" word", finish)]}
            if chat and i == 0:  # vLLM's first chunk carries the role
                role = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
                events.append(_chunk(_dumps(role)) + _chunk(_dumps(body)))
                continue
            events.append(_chunk(_dumps(body)))
        usage = {"prompt_tokens": 32, "completion_tokens": tokens, "total_tokens": 32 + tokens}
        events.append(_chunk(_dumps({**base, "choices": [], "usage": usage})))
        events.append(_chunk(b"[DONE]") + b"0\r\n\r\n")
        return events

    def whole(self, chat: bool, tokens: int) -> bytes:
        text = " word" * tokens
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if chat
            else {"index": 0, "text": text}
        )
        choice["finish_reason"] = "length"
        usage = {"prompt_tokens": 32, "completion_tokens": tokens, "total_tokens": 32 + tokens}
        kind = "chat.completion" if chat else "text_completion"
        return _dumps(
            {"id": "cmpl-bench", "object": kind, "created": 0, "model": self.model}
            | {"choices": [choice], "usage": usage}
        )


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


class Upstream(asyncio.Protocol):
    """One keep-alive connection: requests are answered one at a time, in order."""

    def __init__(self, port: Port, events: Events) -> None:
        self.port, self.events = port, events
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # an answer is being written; the next request waits in `buf`
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:  # the client hung up mid-answer
            self.timer.cancel()
            self.timer = None
            self.port.running -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            parsed = _parse_request(self.buf)
            if parsed is None:
                return
            method, path, body, used = parsed
            self.buf = self.buf[used:]
            self._answer(method, path, body)

    def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path in (_CHAT, b"/v1/completions"):
            found = _MAX_TOKENS.search(body)
            tokens = min(int(found.group(1)), MAX_TOKENS_CAP) if found else 16
            chat = path == _CHAT
            self.port.served += 1
            if _STREAM.search(body):
                self.transport.write(STREAM_HEAD)
                self._stream(self.events.stream(chat, max(1, tokens)))
            else:
                self._delayed_whole(self.events.whole(chat, max(1, tokens)), tokens)
            return
        if method == b"POST" and path == b"/admin/pacing":
            pacing = json.loads(body or b"{}")
            Pacing.ttft_s = float(pacing.get("ttft_ms", 0)) / 1000
            Pacing.itl_s = float(pacing.get("itl_ms", 0)) / 1000
            self._reply(200, b"application/json", b'{"ok":true}')
        elif path == b"/v1/models":
            card = {"id": self.port.model, "object": "model", "created": 0, "owned_by": "vllm"}
            self._reply(200, b"application/json", _dumps({"object": "list", "data": [card]}))
        elif path == b"/health":
            self._reply(200, b"text/plain", b"")
        elif path == b"/metrics":
            self._reply(200, b"text/plain; version=0.0.4", self.port.metrics())
        else:
            self._reply(404, b"application/json", b'{"error":"not found"}')

    def _reply(self, status: int, ctype: bytes, body: bytes) -> None:
        assert self.transport is not None
        reason = b"OK" if status == 200 else b"Not Found"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, ctype, len(body), body)
        )

    def _stream(self, events: list[bytes]) -> None:
        self.busy = True
        self.port.running += 1
        ttft, itl = Pacing.ttft_s, Pacing.itl_s
        if ttft <= 0 and itl <= 0:
            for event in events:  # back to back, each its own write (its own TCP segment)
                self.transport.write(event)  # type: ignore[union-attr]
            self._done()
            return
        state = {"i": 0}

        def send() -> None:
            self.timer = None
            if self.transport is None:
                return
            i = state["i"]
            self.transport.write(events[i])
            state["i"] = i + 1
            if i + 1 >= len(events):
                self._done()
            elif i + 1 >= len(events) - 2:  # usage and [DONE] follow the last token at once
                send()
            else:
                self.timer = self.loop.call_later(itl, send)

        self.timer = self.loop.call_later(ttft, send)

    def _delayed_whole(self, body: bytes, tokens: int) -> None:
        self.busy = True
        self.port.running += 1
        delay = Pacing.ttft_s + Pacing.itl_s * max(0, tokens - 1)

        def send() -> None:
            self.timer = None
            if self.transport is not None:
                self._reply(200, b"application/json", body)
                self._done()

        if delay <= 0:
            send()
        else:
            self.timer = self.loop.call_later(delay, send)

    def _done(self) -> None:
        self.port.running -= 1
        self.busy = False
        if self.buf:
            self.loop.call_soon(self._next)


def _parse_request(buf: bytes) -> tuple[bytes, bytes, bytes, int] | None:
    """(method, path, body, bytes used) of the first whole request in `buf`, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].split(b"\r\n")
    method, path, _ = head[0].split(b" ", 2)
    length, chunked = 0, False
    for line in head[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    start = end + 4
    if not chunked:
        if len(buf) < start + length:
            return None
        return method, path, buf[start : start + length], start + length
    parts, pos = [], start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buf[pos:line_end].split(b";")[0], 16)
        if len(buf) < line_end + 2 + size + 2:
            return None
        parts.append(buf[line_end + 2 : line_end + 2 + size])
        pos = line_end + 2 + size + 2
        if size == 0:
            return method, path, b"".join(parts), pos


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    events = Events(args.model)
    ports = [Port(i, args.model) for i in range(args.ports)]
    servers = []
    for port in ports:
        server = await loop.create_server(
            lambda port=port: Upstream(port, events), "127.0.0.1", 0, backlog=1024
        )
        servers.append(server)
    numbers = [s.sockets[0].getsockname()[1] for s in servers]
    Path(args.ready).write_text(json.dumps({"ports": numbers}))
    started = time.monotonic()
    await stop.wait()
    for server in servers:
        server.close()
    if args.stats:
        stats = {"served": [p.served for p in ports], "wall_s": time.monotonic() - started}
        Path(args.stats).write_text(json.dumps(stats))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ports", type=int, default=4, help="listening ports (simulated nodes)")
    p.add_argument("--model", default="bench@1", help="the served model id")
    p.add_argument("--ready", required=True, help="file to write the ports to once listening")
    p.add_argument("--stats", help="file to write requests served per port to at the end")
    args = p.parse_args(argv)
    if not 1 <= args.ports <= 256:
        p.error("ports 1..256")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
