"""`LeaseKeeper`: an etcd lease that is kept alive, and granted anew whenever it is lost.

A lease is lost when etcd was out for longer than its TTL (it may have expired meanwhile) or
someone revoked it; the keys bound to it are then gone, so whoever bound keys to it must write
them again under the new one. `epoch` counts grants, and subscribers hear of each.

One agent owns one keeper, so its node vanishes alone when it dies. A fleet may share one keeper
among its agents (one keep-alive instead of thousands); its nodes then live and die together,
as they would with the fleet process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from infermesh.errors import MeshError
from infermesh.store.etcd import EtcdStore, Lease

log = logging.getLogger(__name__)

_RETRY_MIN, _RETRY_MAX = 0.2, 2.0


class LeaseKeeper:
    def __init__(self, store: EtcdStore, ttl: int) -> None:
        self._store = store
        self.ttl = ttl
        self.epoch = 0  # grants so far; 0 while none has succeeded
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []

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
        if lease is None:
            return
        if not revoke:
            await lease.close()
            return
        try:
            await lease.revoke()
        except MeshError as exc:  # etcd unreachable: the keys expire with the TTL instead
            log.warning("could not revoke lease %x: %s", lease.id, exc)
            await lease.close()

    async def _grant(self, *, retrying: bool = False) -> bool:
        try:
            lease = await self._store.grant_lease(self.ttl)
        except MeshError as exc:
            if not retrying:  # once per outage
                log.warning("cannot grant a %ss lease (retrying): %s", self.ttl, exc)
            return False
        lease.start_keepalive()
        self._lease = lease
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
            await lease.lost.wait()
            log.warning("lease %x lost; granting a new one", lease.id)
            self._lease = None
