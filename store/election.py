"""Leader election over an etcd lease: one holder of a key at a time, among any number of
replicas.

The leader's key holds its identity and is bound to its lease, so a crashed leader's key vanishes
within the lease TTL and a standby, watching the key, takes over. A leader watches its own key and
lease: if either goes (lease expired, etcd unreachable for longer than the TTL, key deleted by an
operator) it sets `lost` and must stop acting as leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from infermesh.errors import EtcdUnavailable
from infermesh.store.etcd import Compare, EtcdStore, KeyValue, Lease, LeaseNotFound, Op

log = logging.getLogger(__name__)


class LeaderElection:
    """Campaign for `key` as `identity`.

    ```
    election = LeaderElection(store, keys.election("scheduler"), "host-a:1234")
    await election.campaign()          # blocks until we lead
    ...                                # lead until election.lost is set
    await election.resign()            # hand over at once (else the key expires after ttl)
    ```
    `lost` is cleared when a later `campaign()` wins again.
    """

    def __init__(self, store: EtcdStore, key: str, identity: str, *, ttl: int = 5) -> None:
        self.key = key
        self.identity = identity
        self.ttl = ttl
        self.lost = asyncio.Event()
        self._store = store
        self._lease: Lease | None = None
        self._revision = 0  # create revision of our key while we lead
        self._monitor: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._revision > 0 and not self.lost.is_set()

    def fence(self) -> Compare:
        """A compare that holds only while we lead: guard a leader's writes with it, so a deposed
        leader that has not noticed yet cannot overwrite its successor's work."""
        return Compare.create_revision(self.key, "==", self._revision or -1)

    async def leader(self) -> str | None:
        """The identity of the current leader, if any."""
        kv = await self._store.get(self.key)
        return kv.value.decode() if kv is not None else None

    async def campaign(self) -> None:
        """Return once this instance holds the key; waits out etcd outages. Cancel to stop."""
        if self.is_leader:
            return
        await self._release()
        try:
            while True:
                try:
                    if await self._try_acquire():
                        return
                except EtcdUnavailable as exc:
                    log.warning("election %s: %s; campaigning on", self.key, exc)
                    await asyncio.sleep(1)
                except LeaseNotFound:  # our lease expired while we waited: take a new one
                    await self._release()
        except BaseException:
            if not self.is_leader:
                await self._release()
            raise

    async def resign(self) -> None:
        """Stop leading (or campaigning): revoke our lease, which deletes our key at once."""
        lease = self._lease
        await self._release()
        if lease is not None:
            try:
                await lease.revoke()
            except EtcdUnavailable as exc:  # the key expires after ttl anyway
                log.warning("election %s: could not revoke our lease (%s)", self.key, exc)

    # -- internals --------------------------------------------------------------------------------
    async def _try_acquire(self) -> bool:
        """One round: take the key if it is free, else wait until it is deleted (False)."""
        if self._lease is None or self._lease.lost.is_set():
            self._lease = await self._store.grant_lease(self.ttl)
            self._lease.start_keepalive()
        result = await self._store.txn(
            [Compare.create_revision(self.key, "==", 0)],
            [Op.put(self.key, self.identity, lease=self._lease.id)],
            [Op.get(self.key)],
        )
        if result.succeeded:
            self._won(result.revision)
            return True
        holders = result.responses[0]  # the compare failed, so the key exists
        assert isinstance(holders, list) and holders
        if holders[0].lease == self._lease.id:  # our earlier try was applied but its answer lost
            self._won(holders[0].create_revision)
            return True
        await self._wait_vacant(holders[0])
        return False

    def _won(self, revision: int) -> None:
        assert self._lease is not None
        self._revision = revision
        self.lost.clear()
        self._monitor = asyncio.create_task(
            self._watch_leadership(self._lease, revision), name=f"election {self.key}"
        )
        log.info("election %s: %s leads", self.key, self.identity)

    async def _release(self) -> None:
        """Forget leadership and stop the monitor and keep-alive, without revoking the lease."""
        self._revision = 0
        monitor, self._monitor = self._monitor, None
        if monitor is not None and monitor is not asyncio.current_task():
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.close()

    async def _wait_vacant(self, holder: KeyValue) -> None:
        """Return when the holder's key is deleted, or when a re-check is needed."""
        watch = self._store.watch_prefix(self.key, holder.mod_revision + 1)
        async with contextlib.aclosing(watch) as batches:
            async for batch in batches:
                for event in batch:
                    if event.type == "RESYNC" or (event.type == "DELETE" and event.key == self.key):
                        return

    async def _watch_leadership(self, lease: Lease, revision: int) -> None:
        key_gone = asyncio.create_task(self._key_changed(revision))
        lease_gone = asyncio.create_task(lease.lost.wait())
        try:
            await asyncio.wait({key_gone, lease_gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            key_gone.cancel()
            lease_gone.cancel()
            await asyncio.gather(key_gone, lease_gone, return_exceptions=True)
        if lease.lost.is_set():
            why = "our lease was lost"
        elif not key_gone.cancelled() and key_gone.exception() is not None:
            why = f"watching our key failed: {key_gone.exception()}"
        else:
            why = "our key was deleted or replaced"
        log.warning("election %s: %s is no longer leader: %s", self.key, self.identity, why)
        self.lost.set()
        await self._release()

    async def _key_changed(self, revision: int) -> None:
        """Return when our key (created at `revision`) is deleted or overwritten."""
        start = revision + 1
        while True:
            if await self._next_change(start):
                return
            # History was compacted under a resumed watch: look at the key, then watch on.
            try:
                items, at = await self._store.list_prefix(self.key)
            except EtcdUnavailable:
                await asyncio.sleep(1)
                continue
            if not any(kv.key == self.key and kv.create_revision == revision for kv in items):
                return
            start = at + 1

    async def _next_change(self, start: int) -> bool:
        """True at the first event on our key from `start`, False on a RESYNC."""
        async with contextlib.aclosing(self._store.watch_prefix(self.key, start)) as batches:
            async for batch in batches:
                for event in batch:
                    if event.type == "RESYNC":
                        return False
                    if event.key == self.key:
                        return True
        return False  # not reached: a watch only ends with a RESYNC


class ElectedLoop:
    """Base of the control-plane loops that act only while they lead (the reference controller,
    the SLO evaluator, the delivery controller): `start` runs `_run` as a task, `stop` cancels it
    and resigns, so a standby takes over at once instead of after the lease's TTL."""

    def __init__(self, election: LeaderElection, name: str) -> None:
        self._election = election
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._election.is_leader

    async def _run(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._election.resign()
