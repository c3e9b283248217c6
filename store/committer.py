"""Group commit: every accepted mutation lands with its event and audit record in one transaction.

The audit log is one hash chain, so its appends are serialised. Rather than one etcd round trip per
write, pending mutations are gathered into a single transaction (each keeps its own optimistic
concurrency compare), which lets etcd fsync them together. If the batch fails, either the audit head
moved (another API replica wrote: reload it and retry) or one mutation's compare failed (commit the
batch one by one so only that mutation gets its 409).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infermesh.errors import Conflict, EtcdUnavailable, MeshError, NotFound
from infermesh.store import audit
from infermesh.store.etcd import Compare, EtcdStore, LeaseNotFound, Op
from infermesh.store.keys import KeyLayout

log = logging.getLogger(__name__)

EVENT_TTL_S = 24 * 3600
_LEASE_ROTATE_S = 3600  # a new events lease each hour, so expiry is at most an hour late
_MAX_BATCH = 256


@dataclass(slots=True)
class Mutation:
    """One change to one object, with the event and audit record that describe it."""

    key: str
    value: bytes | None  # None deletes the key
    expected_mod_revision: int  # 0: the key must not exist yet
    project: str
    event: dict[str, Any]
    audit: dict[str, Any]
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def new_event_id() -> str:
    # Time-ordered so a key-sorted listing is chronological; the random tail keeps ids unique.
    return f"{time.time_ns():020d}-{os.urandom(3).hex()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_record(
    *,
    kind: str,
    project: str,
    name: str,
    reason: str,
    message: str,
    actor: str,
    warning: bool = False,
    time: str | None = None,
) -> dict[str, Any]:
    """An event as `/v1/events` serves it: who did what to which object, and why."""
    return {
        "id": new_event_id(),
        "time": time or now(),
        "type": "Warning" if warning else "Normal",
        "reason": reason,
        "kind": kind,
        "name": name,
        "project": project,
        "actor": actor,
        "message": message,
    }


class EventLease:
    """The lease events are bound to, so they expire a day after they were written; rotated
    hourly. Shared by every writer of events (the API's committer, controllers, the scheduler)."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self._lease_id = 0
        self._granted_at = 0.0

    async def id(self) -> int:
        now = time.monotonic()
        if not self._lease_id or now - self._granted_at > _LEASE_ROTATE_S:
            lease = await self._store.grant_lease(EVENT_TTL_S + _LEASE_ROTATE_S)
            self._lease_id, self._granted_at = lease.id, now
        return self._lease_id

    def forget(self) -> None:
        """The lease expired while etcd was away: take a new one next time."""
        self._lease_id = 0


class Committer:
    def __init__(self, store: EtcdStore, keys: KeyLayout) -> None:
        self._store = store
        self._keys = keys
        self._queue: asyncio.Queue[Mutation] = asyncio.Queue()
        self._head: audit.Head | None = None
        self._events_lease = EventLease(store)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="committer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def commit(self, mutation: Mutation) -> int:
        """Queue a mutation and wait until it is durable; returns its etcd revision."""
        await self._queue.put(mutation)
        return await mutation.done

    # the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        deferred: list[Mutation] = []
        while True:
            batch = deferred or [await self._queue.get()]
            deferred = []
            keys = {m.key for m in batch}
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                m = self._queue.get_nowait()
                # etcd refuses a transaction that writes one key twice: the second waits a round.
                if m.key in keys:
                    deferred.append(m)
                else:
                    keys.add(m.key)
                    batch.append(m)
            try:
                await self._commit_batch(batch)
            except Exception as exc:  # the loop must outlive any one failure
                err = (
                    exc if isinstance(exc, MeshError) else EtcdUnavailable(f"commit failed: {exc}")
                )
                for m in batch:
                    if not m.done.done():
                        m.done.set_exception(err)
                self._head = None  # unknown after a failure: reload before the next batch

    async def _commit_batch(self, batch: list[Mutation]) -> None:
        for _ in range(5):
            head = self._head or await self._load_head()
            ok, revision, head = await self._try(batch, head)
            if ok:
                self._head = head
                for m in batch:
                    m.done.set_result(revision)
                return
            fresh = await self._load_head()
            if fresh.mod_revision == head.mod_revision:
                break  # the head did not move: some object compare failed
            self._head = fresh
        if len(batch) == 1:
            batch[0].done.set_exception(await self._conflict(batch[0]))
            return
        for m in batch:
            await self._commit_batch([m])

    async def _try(self, batch: list[Mutation], head: audit.Head) -> tuple[bool, int, audit.Head]:
        lease = await self._events_lease.id()
        compares = [Compare.mod_revision(self._keys.audit_head, "==", head.mod_revision)]
        success: list[Op] = []
        seq, prev = head.seq, head.hash
        for m in batch:
            compares.append(Compare.mod_revision(m.key, "==", m.expected_mod_revision))
            success.append(Op.delete(m.key) if m.value is None else Op.put(m.key, m.value))
            record = audit.seal(m.audit, seq + 1, prev)
            seq, prev = record["seq"], record["hash"]
            success.append(Op.put(self._keys.audit_record(seq), audit.canonical(record)))
            event_key = self._keys.event(m.project, m.event["id"])
            success.append(Op.put(event_key, json.dumps(m.event).encode(), lease=lease))
        success.append(
            Op.put(self._keys.audit_head, json.dumps({"seq": seq, "hash": prev}).encode())
        )
        try:
            result = await self._store.txn(compares, success)
        except LeaseNotFound:
            self._events_lease.forget()
            raise
        return result.succeeded, result.revision, audit.Head(seq, prev, result.revision)

    async def _load_head(self) -> audit.Head:
        kv = await self._store.get(self._keys.audit_head)
        if kv is None:
            return audit.Head.empty()
        data = json.loads(kv.value)
        return audit.Head(int(data["seq"]), str(data["hash"]), kv.mod_revision)

    async def _conflict(self, m: Mutation) -> MeshError:
        """Say why a mutation's compare failed, from what is stored now."""
        what = f"{m.audit.get('kind')} {m.audit.get('name')!r} in project {m.project!r}"
        current = await self._store.get(m.key)
        if m.expected_mod_revision == 0 and current is not None:
            return Conflict(
                f"{what} already exists", {"resourceVersion": str(current.mod_revision)}
            )
        if current is None:
            return NotFound(f"{what} not found (deleted meanwhile)")
        return Conflict(
            f"{what} was modified: stored resourceVersion is {current.mod_revision}, "
            f"the change was based on {m.expected_mod_revision}; re-read it and try again",
            {"resourceVersion": str(current.mod_revision)},
        )
