"""Admission control per router: a token bucket per (endpoint, tenant), then a concurrency limit
per endpoint with a bounded FIFO queue. Anything it turns away is a `Rejected` (429 with
Retry-After), raised before a byte goes upstream.

The rate check comes first and only charges a token to a request that runs or queues, so a tenant
is not billed for the endpoint being full. A freed slot goes straight to the oldest waiter, so a
newcomer never overtakes the queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType

from infermesh.errors import TooManyRequests
from infermesh.model.policy import AdmissionPolicy

# Buckets that have refilled to full say nothing a new bucket would not, so past this many the
# full ones are dropped; it keeps memory bounded by the tenants that are actually busy.
_PRUNE_BUCKETS_FROM = 10_000


class Rejected(TooManyRequests):
    """429: an admission limit turned the request away; `retry_after_s` feeds Retry-After."""

    def __init__(
        self,
        limit: str,
        retry_after_s: float,
        message: str,
        endpoint: str = "",
        tenant: str = "",
    ) -> None:
        super().__init__(message, {"limit": limit, "endpoint": endpoint, "tenant": tenant})
        self.limit = limit
        self.retry_after_s = max(1, math.ceil(retry_after_s))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    rate: float
    burst: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)


@dataclass(slots=True)
class _Gate:
    """One endpoint's concurrency: `running` counts slots held, including ones just handed to a
    waiter that has not resumed yet."""

    limit: int | None = None
    running: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def wake(self) -> None:
        while self.waiters and (self.limit is None or self.running < self.limit):
            waiter = self.waiters.popleft()
            if not waiter.done():  # done: cancelled, and its task has not run to remove it yet
                self.running += 1
                waiter.set_result(None)

    def forget(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)

    def release(self) -> None:
        self.running -= 1
        self.wake()


class Ticket:
    """A held concurrency slot; `release()` (or leaving the `with` block) gives it back once."""

    __slots__ = ("_gate",)

    def __init__(self, gate: _Gate) -> None:
        self._gate: _Gate | None = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Admission:
    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._prune_from = _PRUNE_BUCKETS_FROM

    def queued(self, endpoint_key: str) -> int:
        gate = self._gates.get(endpoint_key)
        return len(gate.waiters) if gate else 0

    def running(self, endpoint_key: str) -> int:
        gate = self._gates.get(endpoint_key)
        return gate.running if gate else 0

    async def try_acquire(
        self,
        endpoint_key: str,
        tenant: str,
        policy: AdmissionPolicy | None,
        now: float | None = None,
    ) -> Ticket:
        """A slot for one request, waiting in the endpoint's queue if the policy allows;
        raises `Rejected` when a limit says no."""
        now = time.monotonic() if now is None else now
        gate = self._gates.setdefault(endpoint_key, _Gate())
        gate.limit = policy.maxConcurrency if policy else None
        gate.wake()  # the limit may have been raised since the last request
        bucket = self._bucket_with_token(endpoint_key, tenant, policy, now)
        if policy is not None and gate.limit is not None and gate.running >= gate.limit:
            if len(gate.waiters) >= policy.queueSize:
                raise Rejected(
                    "endpoint-queue-full",
                    policy.queueTimeoutMs / 1000,
                    f"endpoint {endpoint_key} is at its limit of {gate.limit} concurrent "
                    f"requests and its queue of {policy.queueSize} is full",
                    endpoint_key,
                    tenant,
                )
            if bucket is not None:
                bucket.tokens -= 1
            await self._wait(gate, endpoint_key, tenant, policy)
            return Ticket(gate)
        if bucket is not None:
            bucket.tokens -= 1
        gate.running += 1
        return Ticket(gate)

    def _bucket_with_token(
        self, endpoint_key: str, tenant: str, policy: AdmissionPolicy | None, now: float
    ) -> _Bucket | None:
        """The tenant's refilled bucket (None: no rate limit); raises if it has no token."""
        if policy is None or policy.tenantRatePerSecond is None:
            return None
        rate = policy.tenantRatePerSecond
        burst = policy.tenantBurst or max(1, rate)
        key = (endpoint_key, tenant)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_from:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(burst, now, rate, burst)
        bucket.rate, bucket.burst = rate, burst  # the policy may have changed
        bucket.refill(now)
        if bucket.tokens < 1:
            raise Rejected(
                "tenant-rate",
                (1 - bucket.tokens) / rate,
                f"tenant {tenant} is over its rate of {rate:g} requests per second "
                f"(burst {burst:g}) on endpoint {endpoint_key}",
                endpoint_key,
                tenant,
            )
        return bucket

    def _prune(self, now: float) -> None:
        for bucket in self._buckets.values():
            bucket.refill(now)
        self._buckets = {k: b for k, b in self._buckets.items() if b.tokens < b.burst}
        # Many busy tenants: prune again only after as many new ones, so it stays amortised O(1).
        self._prune_from = max(_PRUNE_BUCKETS_FROM, 2 * len(self._buckets))

    async def _wait(
        self, gate: _Gate, endpoint_key: str, tenant: str, policy: AdmissionPolicy
    ) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        gate.waiters.append(waiter)

        def expire() -> None:
            if not waiter.done():
                gate.forget(waiter)
                waiter.set_exception(
                    Rejected(
                        "endpoint-queue-timeout",
                        policy.queueTimeoutMs / 1000,
                        f"waited {policy.queueTimeoutMs:g} ms for one of endpoint "
                        f"{endpoint_key}'s {gate.limit} concurrent slots",
                        endpoint_key,
                        tenant,
                    )
                )

        timer = loop.call_later(policy.queueTimeoutMs / 1000, expire)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                gate.forget(waiter)
            elif waiter.exception() is None:
                gate.release()  # the slot arrived just as the caller gave up: pass it on
            raise
        finally:
            timer.cancel()
