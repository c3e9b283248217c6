"""`LeaseKeeper`: an etcd lease that is kept alive, and granted anew whenever it is lost.

A lease is lost when etcd says so: it no longer knows it (it expired, or someone revoked it).
The keys bound to it are then gone, so whoever bound keys to it must write them again under a
new one; `epoch` counts grants, and subscribers hear of each. While etcd does not answer (an
outage, or a loop too busy to read its answers in time) the keeper keeps refreshing and waits
for etcd's word: an unanswered refresh says nothing about the lease, and abandoning a live one
would have every node bound to it written again just when the process is overloaded. An etcd
that restarts keeps its leases (and renews them), so their nodes stay registered.

One agent owns one keeper, so its node vanishes alone when it dies. A fleet may share one keeper
among its agents (one keep-alive instead of thousands); its nodes then live and die together,
as they would with the fleet process. That makes the shared lease the one thing a busy fleet
process must not lose, so the keeper refreshes it itself, every TTL/3, each refresh in a task
of its own: one answer that is late (a loop busy with hundreds of agents, a slow etcd) does not
hold back the next refresh, as a refresh that waits for the last one's answer, or its 3 s
timeout, would with a 5 s TTL. It also says when the event loop runs late, the early sign of a
process that holds more agents than it can serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from infermesh.errors import EtcdUnavailable, MeshError
from infermesh.store.etcd import EtcdStore, Lease

log = logging.getLogger(__name__)

_RETRY_MIN, _RETRY_MAX = 0.2, 2.0
LAG_WARNING_S = 1.0  # a loop this late to wake the keeper is overloaded
_LAG_WARNING_EVERY_S = 30.0
_MAX_REFRESHES_IN_FLIGHT = 3


class LeaseKeeper:
    def __init__(self, store: EtcdStore, ttl: int) -> None:
        self._store = store
        self.ttl = ttl
        self.epoch = 0  # grants so far; 0 while none has succeeded
        self.max_loop_lag_s = 0.0  # the latest the loop woke the keeper, since the start
        self._lease: Lease | None = None
        self._granted_at = 0.0  # loop time the current lease was asked for
        self._task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._lag_warned_at: float | None = None

    @property
    def lease_id(self) -> int | None:
        """The current lease, or None while there is none (etcd unreachable)."""
        return self._lease.id if self._lease is not None else None

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` after every grant; returns the function that unsubscribes."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def start(self) -> None:
        """Grant the first lease (if etcd answers now; else keep trying in the background)."""
        await self._grant()
        self._task = asyncio.create_task(self._keep(), name="lease-keeper")

    async def stop(self, *, revoke: bool = True) -> None:
        """Stop keeping the lease. `revoke` deletes its keys at once; without it they expire
        after the TTL, as when the process dies."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease, self._lease = self._lease, None
        if lease is None or not revoke:
            return
        try:
            await lease.revoke()
        except MeshError as exc:  # etcd unreachable: the keys expire with the TTL instead
            log.warning("could not revoke lease %x: %s", lease.id, exc)

    async def _grant(self, *, retrying: bool = False) -> bool:
        asked = asyncio.get_running_loop().time()
        try:
            lease = await self._store.grant_lease(self.ttl)
        except MeshError as exc:
            if not retrying:  # once per outage
                log.warning("cannot grant a %ss lease (retrying): %s", self.ttl, exc)
            return False
        self._lease, self._granted_at = lease, asked
        self.epoch += 1
        for callback in list(self._callbacks):
            callback()
        return True

    async def _keep(self) -> None:
        delay, retrying = _RETRY_MIN, self._lease is None  # start() warned already
        while True:
            lease = self._lease
            if lease is None:
                if not await self._grant(retrying=retrying):
                    await asyncio.sleep(delay)
                    delay, retrying = min(delay * 2, _RETRY_MAX), True
                continue
            delay, retrying = _RETRY_MIN, False
            why = await _Refresher(self, lease, self._granted_at).run()
            log.warning("lease %x lost (%s); granting a new one", lease.id, why)
            self._lease = None

    def _woke_late(self, late: float, now: float) -> None:
        self.max_loop_lag_s = max(self.max_loop_lag_s, late)
        if late < LAG_WARNING_S:
            return
        if self._lag_warned_at is None or now - self._lag_warned_at >= _LAG_WARNING_EVERY_S:
            self._lag_warned_at = now
            log.warning(
                "event loop %.1fs late: this process runs more than it keeps up with, and "
                "its %ss lease (every node bound to it) is at risk",
                late,
                self.ttl,
            )


class _Refresher:
    """Keeps one lease alive until it is lost; `run()` returns why it was."""

    def __init__(self, keeper: LeaseKeeper, lease: Lease, granted_at: float) -> None:
        self._keeper, self._store, self._lease = keeper, keeper._store, lease
        self._loop = asyncio.get_running_loop()
        self._confirmed_at = granted_at  # etcd's TTL began no earlier than its grant was asked
        self._failed = False
        self._unconfirmed_warned = False
        self._lost: asyncio.Future[str] = self._loop.create_future()
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self) -> str:
        ttl = self._lease.ttl
        interval = ttl / 3
        due = self._confirmed_at + interval
        try:
            while True:
                await asyncio.wait([self._lost], timeout=max(0.0, due - self._loop.time()))
                if self._lost.done():
                    return self._lost.result()
                now = self._loop.time()
                self._keeper._woke_late(now - due, now)
                if now - self._confirmed_at > ttl and not self._unconfirmed_warned:
                    self._unconfirmed_warned = True
                    log.warning(
                        "lease %x: no word from etcd for over its %ss TTL; it may have expired "
                        "(etcd will say so once it answers); refreshing on",
                        self._lease.id,
                        ttl,
                    )
                if len(self._in_flight) < _MAX_REFRESHES_IN_FLIGHT:
                    task = asyncio.create_task(self._refresh(now))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                # An unanswered refresh: try again sooner, while the TTL lasts.
                due = now + (min(interval, 1.0) if self._failed else interval)
        finally:
            for task in list(self._in_flight):
                task.cancel()

    async def _refresh(self, sent_at: float) -> None:
        try:
            # One keep-alive round trip (the store's own `Lease` loop waits for each answer).
            remaining = await self._store.keepalive_once(self._lease.id)
        except EtcdUnavailable:
            self._failed = True  # no answer in time: the next refresh may have one
            return
        except MeshError as exc:
            self._lose(str(exc))
            return
        if remaining <= 0:
            self._lose("etcd no longer knows it")
            return
        # etcd refreshed it when it read the request, which was no earlier than `sent_at`.
        self._confirmed_at, self._failed = max(self._confirmed_at, sent_at), False
        if self._unconfirmed_warned:
            self._unconfirmed_warned = False
            log.info("lease %x: etcd confirms it again", self._lease.id)

    def _lose(self, why: str) -> None:
        if not self._lost.done():
            self._lost.set_result(why)
