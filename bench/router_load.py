"""The router benchmark's load generator: a lean streaming HTTP/1.1 client, closed- and open-loop.

Each connection is an asyncio `Protocol` that parses just enough of the answer (status line,
Content-Length or chunked framing) to time it: TTFT is from the request's write to the first
`data:` event of an SSE stream (which carries the first token; comments such as keep-alives do
not count), or to the first body byte of any other answer; end to end is to the last byte.
A stream counts as good when it is a 200 that ends with `data: [DONE]`. On uvloop a request
costs the client some tens of microseconds, so one core drives a router at thousands of streams
a second.

Closed loop (`closed_loop`): c workers, each on its own keep-alive connection, send their next
request as soon as the last one ends. Open loop (`open_loop`): requests leave on a schedule
(Poisson arrivals at a rate) whatever the answers do, over a pool of keep-alive connections.
Both are bounded in time and in requests, and talk to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from harness import Sample, cpu_percent, latency_summary  # bench/ is on sys.path

MAX_REQUESTS = 2_000_000
DONE_TAIL = b"data: [DONE]"
LOOPBACK = "127.0.0.1"


class HttpError(Exception):
    """A malformed answer or a connection that ended mid-answer."""


@dataclass(slots=True)
class Result:
    status: int
    ttft: float  # s from the write to the first body byte
    e2e: float  # s to the last body byte
    done: bool  # the body ended with `data: [DONE]` (a whole stream)
    body: bytes  # the first KiB (error messages), and the tail


class Conn(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._fut: asyncio.Future[Result] | None = None
        self._buf = b""
        self._reset()

    def _reset(self) -> None:
        self._state = 0  # 0 head, 1 Content-Length body, 2 chunk size, 3 chunk data, 4 trailer
        self._status = 0
        self._left = 0
        self._close = False
        self._t0 = self._first = 0.0
        self._sse = False
        self._head_body = b""
        self._tail = b""

    @classmethod
    async def open(cls, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, LOOPBACK, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._fut is not None and not self._fut.done():
            self._fut.set_exception(HttpError(f"connection lost: {exc or 'closed by peer'}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True

    async def request(self, raw: bytes) -> Result:
        if self.lost or self.transport is None:
            raise HttpError("connection closed")
        self._reset()
        self._fut = asyncio.get_running_loop().create_future()
        self._t0 = time.perf_counter()
        self.transport.write(raw)
        try:
            return await self._fut
        finally:
            self._fut = None

    # parsing -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._fut is None or self._fut.done():
            return  # nothing asked: a stray byte after a finished answer
        now = time.perf_counter()
        buf = self._buf + data if self._buf else data
        self._buf = b""
        try:
            self._feed(buf, now)
        except (ValueError, IndexError) as exc:
            self._fut.set_exception(HttpError(f"malformed answer: {exc}"))
            self.close()

    def _feed(self, buf: bytes, now: float) -> None:
        pos, n = 0, len(buf)
        while pos < n or self._state == 4:
            state = self._state
            if state == 0:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    self._buf = buf[pos:]
                    return
                lines = buf[pos:end].split(b"\r\n")
                self._status = int(lines[0].split(b" ", 2)[1])
                length, chunked = None, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        chunked = b"chunked" in value.lower()
                    elif name == b"connection":
                        self._close = value.strip().lower() == b"close"
                    elif name == b"content-type":
                        self._sse = b"text/event-stream" in value.lower()
                pos = end + 4
                if chunked:
                    self._state = 2
                elif length:
                    self._state, self._left = 1, length
                else:
                    self._finish(now)  # no body
                    return
            elif state == 1:
                take = min(self._left, n - pos)
                self._body(buf[pos : pos + take], now)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._finish(now)
                    return
            elif state == 2:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    self._buf = buf[pos:]
                    return
                size = int(buf[pos:end].split(b";")[0], 16)
                pos = end + 2
                if size == 0:
                    self._state = 4
                else:
                    self._state, self._left = 3, size + 2  # the data and its CRLF
            elif state == 3:
                take = min(self._left, n - pos)
                data_end = min(take, self._left - 2) if self._left > 2 else 0
                if data_end > 0:
                    self._body(buf[pos : pos + data_end], now)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = 2
            else:  # state 4: the trailer (always empty here) after the last chunk
                if n - pos < 2:
                    self._buf = buf[pos:]
                    return
                self._finish(now)
                return

    def _body(self, piece: bytes, now: float) -> None:
        # The first token is the first SSE event: a keep-alive comment (smg sends one after 15 s
        # of silence) is not a token. The tail catches "data:" split across two reads.
        if not self._first and (not self._sse or b"data:" in self._tail[-8:] + piece):
            self._first = now
        if len(self._head_body) < 1024:
            self._head_body += piece[: 1024 - len(self._head_body)]
        self._tail = (self._tail + piece)[-64:]

    def _finish(self, now: float) -> None:
        fut = self._fut
        assert fut is not None
        first = self._first or now
        done = DONE_TAIL in self._tail
        fut.set_result(
            Result(self._status, first - self._t0, now - self._t0, done, self._head_body)
        )
        self._state = 0
        if self._close:
            self.close()


def post(path: str, body: bytes, port: int, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one POST with a JSON body."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@dataclass
class Target:
    """Where the load goes: one port (a router) or several (the runtimes, directly, each
    connection to one of them in turn), and the request bytes for a given port."""

    name: str
    ports: list[int]
    make: Callable[[int, int], bytes]  # (port, request number) -> request bytes


@dataclass
class Window:
    """What one measured window saw."""

    concurrency: int | None
    rate: float | None
    duration_s: float
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    unfinished: int = 0  # still waiting when the window ended and the drain ran out
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds in the window
    other_attempts: list[float] = field(default_factory=list)  # `other` of each try

    @property
    def ok(self) -> int:
        return len(self.ttft)

    def record(self, result: Result) -> None:
        if result.status == 200 and result.done:
            self.ttft.append(result.ttft)
            self.e2e.append(result.e2e)
        else:
            what = f"HTTP {result.status}" if result.status != 200 else "stream without [DONE]"
            self.errors[what] += 1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "duration_s": round(self.duration_s, 3),
            "sent": self.sent,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "unfinished": self.unfinished,
            "throughput_per_s": round(self.ok / self.duration_s, 1) if self.duration_s else 0.0,
            "ttft_ms": latency_summary(self.ttft),
            "e2e_ms": latency_summary(self.e2e),
            "cpu_percent": self.cpu,
        }
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.rate is not None:
            out["offered_per_s"] = round(self.rate, 1)
        if len(self.other_attempts) > 1:
            out["other_percent_of_attempts"] = self.other_attempts
        return out


def _meter(window: Window, sample: Sample, start: float, end: float) -> asyncio.Task[None]:
    async def run() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = sample()
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after = sample()
        window.cpu = cpu_percent(before, after)
        window.cpu_s = {k: after[k] - before[k] for k in before if k in after}

    return asyncio.create_task(run())


async def closed_loop(
    target: Target,
    concurrency: int,
    duration: float,
    warmup: float,
    sample: Sample,
    *,
    max_requests: int = MAX_REQUESTS,
    drain_s: float = 15.0,
) -> Window:
    """`concurrency` workers, each on its own connection (spread over the target's ports),
    each sending its next request when the last one has ended. Answers that end inside the
    window (after `warmup`) are recorded."""
    window = Window(concurrency, None, duration)
    start = time.perf_counter()
    record_from, end = start + warmup, start + warmup + duration
    sent = 0

    async def worker(w: int) -> None:
        nonlocal sent
        port = target.ports[w % len(target.ports)]
        conn: Conn | None = None
        i = 0
        try:
            while sent < max_requests and time.perf_counter() < end:
                if conn is None or conn.lost:
                    try:
                        conn = await Conn.open(port)
                    except OSError as exc:
                        window.errors[type(exc).__name__] += 1
                        await asyncio.sleep(0.05)  # refused: do not spin
                        continue
                raw = target.make(port, w * 1_000_000 + i)
                i += 1
                sent += 1
                try:
                    result = await conn.request(raw)
                except HttpError as exc:
                    if time.perf_counter() >= record_from:
                        window.errors[str(exc).split(":")[0]] += 1
                    conn = None
                    continue
                t = time.perf_counter()
                if record_from <= t <= end:
                    window.sent += 1
                    window.record(result)
        finally:  # also when cancelled after the drain: hang up, so the work stops
            if conn is not None:
                conn.close()

    meter = _meter(window, sample, record_from, end)
    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=warmup + duration + drain_s)
    for task in pending:
        task.cancel()
    window.unfinished = len(pending)
    await asyncio.gather(*pending, return_exceptions=True)
    await meter
    return window


async def open_loop(
    target: Target,
    rate: float,
    duration: float,
    warmup: float,
    sample: Sample,
    *,
    seed: int = 1,
    drain_s: float = 20.0,
    max_inflight: int = 4000,
) -> Window:
    """Poisson arrivals at `rate`/s for `warmup` + `duration` s over a pool of keep-alive
    connections (a new one when none is idle); requests sent inside the window are recorded.
    After the window, requests still running get `drain_s` to end; the rest are counted as
    unfinished, and their TTFT and end-to-end time as what they had waited by then (a lower
    bound), so an overloaded target cannot hide its tail."""
    window = Window(None, rate, duration)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    idle: dict[int, list[Conn]] = {p: [] for p in target.ports}
    start = time.perf_counter()
    record_from, end = start + warmup, start + warmup + duration
    inflight: dict[asyncio.Task[None], float] = {}
    counter = 0

    async def one(port: int, raw: bytes, recorded: bool) -> None:
        pool = idle[port]
        conn = pool.pop() if pool else None
        try:
            if conn is None or conn.lost:
                conn = await Conn.open(port)
            result = await conn.request(raw)
        except (OSError, HttpError) as exc:
            if recorded:
                window.errors[type(exc).__name__] += 1
            if conn is not None:
                conn.close()
            return
        except BaseException:  # cancelled after the drain: hang up, so the work stops
            if conn is not None:
                conn.close()
            raise
        if not conn.lost:
            pool.append(conn)
        if recorded:
            window.record(result)

    meter = _meter(window, sample, record_from, end)
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end or counter >= MAX_REQUESTS:
            break
        await asyncio.sleep(max(0.0, t - time.perf_counter()))
        if len(inflight) >= max_inflight:
            window.errors["client in-flight cap"] += int(t >= record_from)
            continue
        port = target.ports[counter % len(target.ports)]
        raw = target.make(port, counter)
        counter += 1
        recorded = t >= record_from
        window.sent += int(recorded)
        task = loop.create_task(one(port, raw, recorded))
        inflight[task] = time.perf_counter() if recorded else -1.0
        task.add_done_callback(lambda done: inflight.pop(done, None))
    await meter
    if inflight:
        _, pending = await asyncio.wait(list(inflight), timeout=drain_s)
        cut = time.perf_counter()
        for task in pending:
            sent_at = inflight.get(task, -1.0)
            if sent_at >= 0:  # censored: it had waited this long and was still going
                window.unfinished += 1
                window.ttft.append(cut - sent_at)
                window.e2e.append(cut - sent_at)
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for pool in idle.values():
        for conn in pool:
            conn.close()
    return window


async def ramp(
    levels: list[int],
    level: Callable[[int], Awaitable[Window]],
    report: Callable[[Window], None],
) -> tuple[list[Window], str]:
    """Closed-loop levels of rising concurrency (`level(c)` measures one) until two in a row
    add less than 5 %."""
    windows: list[Window] = []
    best, flat = 0.0, 0
    reason = "all levels run"
    for c in levels:
        window = await level(c)
        windows.append(window)
        report(window)
        rate = window.ok / window.duration_s
        if rate < 1.05 * best:
            flat += 1
            if flat >= 2:
                reason = f"throughput stopped growing (no +5% over {best:.0f}/s twice)"
                break
        else:
            flat = 0
        best = max(best, rate)
    return windows, reason


async def wait_routable(target: Target, timeout: float = 30.0) -> None:
    """Until one request through `target` streams to its end (the router has the replicas)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, HttpError):
            conn = await Conn.open(target.ports[0])
            try:
                result = await asyncio.wait_for(conn.request(target.make(target.ports[0], 0)), 10)
            finally:
                conn.close()
            if result.status == 200 and result.done:
                return
            last = f"HTTP {result.status}: {result.body[:300].decode(errors='replace')}"
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{target.name} did not stream an answer in {timeout:.0f} s ({last})")
