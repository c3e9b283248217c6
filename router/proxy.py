"""Forwarding one request to runtimes: the first byte race, retries and hedges.

An `Attempt` is one upstream call that has produced its first body byte (for a stream: the first
token). `race` starts the best-ranked target, retries the next one when a target fails before its
first byte (refused, reset, 5xx), and, when hedging is on, starts the next-ranked target on
another node once the first is late. The first attempt to produce a byte wins; every other one is
closed, which the runtime sees as a client disconnect and so stops generating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from infermesh.errors import BadGateway
from infermesh.router.replica import Replica
from infermesh.router.upstream import UpstreamPool, UpstreamResponse

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class UpstreamFailure(Exception):
    """A target failed before its first byte; the request may go to the next one."""

    def __init__(self, replica: Replica, message: str, status: int | None = None) -> None:
        super().__init__(f"{replica.node}: {message}")
        self.replica, self.status = replica, status


@dataclass(eq=False)
class Attempt:
    replica: Replica
    response: UpstreamResponse
    first: bytes
    started: float
    first_at: float
    hedge: bool
    on_finish: Callable[[Attempt], None] = field(repr=False, default=lambda _: None)
    _done: bool = False

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def ttft_ms(self) -> float:
        return (self.first_at - self.started) * 1000.0

    async def rest(self) -> AsyncIterator[bytes]:
        """The body after the first chunk, as it arrives."""
        async for chunk in self.response.iter_any():
            yield chunk

    def close(self) -> None:
        """Hang up on the runtime (a no-op once the body has been read) and free the slot."""
        self.response.close()
        self.finish()

    def finish(self) -> None:
        if not self._done:
            self._done = True
            self.on_finish(self)


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    delay_ms: float
    max_hedges: int
    allow: Callable[[], bool]  # asks the hedge budget; True uses one hedge


@dataclass(slots=True)
class RaceResult:
    winner: Attempt
    hedges_fired: int
    retries: int
    failures: list[UpstreamFailure]


async def open_attempt(
    pool: UpstreamPool,
    replica: Replica,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    hedge: bool,
    on_finish: Callable[[Attempt], None] = lambda _: None,
) -> Attempt:
    """Call the runtime and wait for the first byte of its answer. `on_finish` runs once when
    the attempt is over (its body read, or closed)."""
    started = time.monotonic()
    try:
        response = await pool.post(replica.url, path, body, headers)
    except OSError as exc:
        raise UpstreamFailure(replica, f"could not reach the runtime: {exc!s}") from None
    try:
        if response.status in RETRYABLE_STATUS:
            text = (await response.read())[:300].decode(errors="replace")
            raise UpstreamFailure(replica, f"HTTP {response.status}: {text}", response.status)
        first = await response.read_some()
    except UpstreamFailure:
        response.close()
        raise
    except OSError as exc:
        response.close()
        raise UpstreamFailure(replica, f"connection lost before the first byte: {exc!s}") from None
    except BaseException:  # cancelled: this attempt lost the race or the client left
        response.close()
        raise
    return Attempt(replica, response, first, started, time.monotonic(), hedge, on_finish)


async def race(
    start: Callable[[Replica, bool], Coroutine[Any, Any, Attempt]],
    targets: list[Replica],
    *,
    max_retries: int,
    hedging: HedgeSettings | None,
) -> RaceResult:
    """Run attempts over the ranked `targets` until one produces its first byte."""
    if hedging is None:
        return await _in_turn(start, targets, max_retries)
    queue = list(targets)
    running: dict[asyncio.Task[Attempt], Replica] = {}
    failures: list[UpstreamFailure] = []
    retries = hedges = 0

    def launch(hedge: bool) -> None:
        replica = queue.pop(0)
        running[asyncio.create_task(start(replica, hedge))] = replica

    launch(False)
    hedges_left = hedging.max_hedges if hedging is not None else 0
    loop = asyncio.get_running_loop()
    hedge_at = loop.time() + hedging.delay_ms / 1000 if hedging and hedges_left else None
    try:
        while running:
            timeout = None if hedge_at is None else max(0.0, hedge_at - loop.time())
            done, _ = await asyncio.wait(
                running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # the hedge delay passed with no first byte
                assert hedging is not None
                hedge_at = None
                if queue and hedging.allow():
                    launch(True)
                    hedges += 1
                    hedges_left -= 1
                    if hedges_left:
                        hedge_at = loop.time() + hedging.delay_ms / 1000
                continue
            winners = []
            for task in done:
                running.pop(task)
                exc = task.exception()
                if exc is None:
                    winners.append(task.result())
                elif isinstance(exc, UpstreamFailure):
                    failures.append(exc)
                else:
                    raise exc
            if winners:
                for extra in winners[1:]:  # finished in the same instant: keep one
                    extra.close()
                return RaceResult(winners[0], hedges, retries, failures)
            if not running and queue and retries < max_retries:
                retries += 1
                launch(False)
    finally:
        for task in running:
            task.cancel()
        if running:  # a loser may have got its first byte as it was cancelled: hang up on it
            for result in await asyncio.gather(*running, return_exceptions=True):
                if isinstance(result, Attempt):
                    result.close()
    raise _no_runtime(failures)


async def _in_turn(
    start: Callable[[Replica, bool], Coroutine[Any, Any, Attempt]],
    targets: list[Replica],
    max_retries: int,
) -> RaceResult:
    """Without hedging, one attempt at a time, awaited in the caller's own task: the first byte
    reaches the caller without the hand-offs between tasks that a race needs (at low load a
    request's path runs from cold caches, and each hand-off is another loop turn)."""
    failures: list[UpstreamFailure] = []
    for replica in targets[: max_retries + 1]:
        try:
            return RaceResult(await start(replica, False), 0, len(failures), failures)
        except UpstreamFailure as failure:
            failures.append(failure)
    raise _no_runtime(failures)


def _no_runtime(failures: list[UpstreamFailure]) -> BadGateway:
    last = failures[-1] if failures else None
    return BadGateway(
        f"no runtime answered: {'; '.join(str(f) for f in failures) or 'no target'}",
        {
            "tried": [f.replica.node for f in failures],
            "lastStatus": last.status if last is not None else None,
        },
    )
