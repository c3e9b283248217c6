"""Idempotency keys, as Stripe does them: the first request with a key runs; a repeat with the same
body gets the first one's response (replayed, chunk for chunk if it streamed), or waits for it
while it still runs; a repeat with a different body is an error, because the key then names two
different requests.

Keys live per (tenant, endpoint) scope for `ttl_s` after they were last written. Memory is bounded
by `max_entries`: past it the entry completed longest ago goes first; running ones are kept.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from infermesh.errors import Conflict

Scope = tuple[str, str]  # (tenant, endpoint)


def fingerprint(body: bytes) -> str:
    """What makes two requests with one key the same request."""
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    chunks: list[bytes] | None = None  # SSE chunks as sent, when the response streamed


class Abandoned(Conflict):
    """409: the request that owned the key failed before it answered; retrying may run it."""


class Outcome(enum.StrEnum):
    NEW = "new"  # run it, then complete() or abandon()
    IN_FLIGHT = "in_flight"  # the first is still running: reject (409) or wait()
    COMPLETED = "completed"  # replay `response`
    MISMATCH = "mismatch"  # the key was used with a different body (422)


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    ttl_s: float
    expires_at: float
    response: StoredResponse | None = None  # None: running
    waiters: list[asyncio.Future[StoredResponse]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Begin:
    outcome: Outcome
    response: StoredResponse | None = None  # set when COMPLETED
    _entry: _Entry | None = field(default=None, repr=False)

    @property
    def new(self) -> bool:
        return self.outcome is Outcome.NEW

    @property
    def in_flight(self) -> bool:
        return self.outcome is Outcome.IN_FLIGHT

    @property
    def completed(self) -> bool:
        return self.outcome is Outcome.COMPLETED

    @property
    def mismatch(self) -> bool:
        return self.outcome is Outcome.MISMATCH

    async def wait(self) -> StoredResponse:
        """The first request's response once it completes; raises `Abandoned` if it fails."""
        if self.response is not None:
            return self.response
        entry = self._entry
        if entry is None:
            raise ValueError(f"nothing to wait for: the key is {self.outcome.value}")
        if entry.response is not None:
            return entry.response
        waiter: asyncio.Future[StoredResponse] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in entry.waiters:  # cancelled: leave nothing behind
                entry.waiters.remove(waiter)


class IdempotencyStore:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        # Oldest write first: complete() moves an entry to the end, so the head expires first.
        self._entries: OrderedDict[tuple[Scope, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(
        self, scope: Scope, key: str, fingerprint: str, ttl_s: float, now: float | None = None
    ) -> Begin:
        now = time.monotonic() if now is None else now
        self._expire(now)
        entry = self._entries.get((scope, key))
        if entry is not None and entry.expires_at <= now:
            self._drop((scope, key), entry)
            entry = None
        if entry is None:
            self._make_room()
            self._entries[(scope, key)] = _Entry(fingerprint, ttl_s, now + ttl_s)
            return Begin(Outcome.NEW)
        if entry.fingerprint != fingerprint:
            return Begin(Outcome.MISMATCH)
        if entry.response is None:
            return Begin(Outcome.IN_FLIGHT, _entry=entry)
        return Begin(Outcome.COMPLETED, entry.response)

    def complete(
        self, scope: Scope, key: str, response: StoredResponse, now: float | None = None
    ) -> None:
        """Store the first request's response and hand it to everyone waiting; the key then
        lives its ttl from now."""
        entry = self._entries.get((scope, key))
        if entry is None or entry.response is not None:
            return  # expired or evicted meanwhile: nothing waits on it
        now = time.monotonic() if now is None else now
        entry.response, entry.expires_at = response, now + entry.ttl_s
        self._entries.move_to_end((scope, key))
        for waiter in entry.waiters:
            if not waiter.done():
                waiter.set_result(response)
        entry.waiters.clear()

    def abandon(self, scope: Scope, key: str) -> None:
        """The first request failed before it sent anything: free the key so a retry runs."""
        entry = self._entries.get((scope, key))
        if entry is not None and entry.response is None:
            self._drop((scope, key), entry)

    def _drop(self, where: tuple[Scope, str], entry: _Entry) -> None:
        del self._entries[where]
        for waiter in entry.waiters:
            if not waiter.done():
                waiter.set_exception(
                    Abandoned(
                        f"the request that first used Idempotency-Key {where[1]!r} failed "
                        "before it answered; send it again to run it",
                        {"idempotencyKey": where[1]},
                    )
                )
        entry.waiters.clear()

    def _expire(self, now: float) -> None:
        # Amortised O(1) from the head, which is due first when ttls agree; anything that
        # expires out of order is caught when its key comes back, or evicted under pressure.
        while self._entries:
            where, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            self._drop(where, entry)

    def _make_room(self) -> None:
        if len(self._entries) < self.max_entries:
            return
        victim = next(((w, e) for w, e in self._entries.items() if e.response is not None), None)
        if victim is not None:  # all running: the router's concurrency bounds them anyway
            self._drop(*victim)
