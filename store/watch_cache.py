"""A list+watch mirror of one etcd prefix: the API's read path and its memory when etcd is gone.

Like a Kubernetes informer: list at a revision, watch from the next one, re-list on compaction.
Values are decoded once, on arrival. `stale` turns on when etcd stops answering; reads keep working
from the last-known state and the flag clears on its own when etcd returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from infermesh.errors import MeshError
from infermesh.model import Resource, parse_object
from infermesh.store.etcd import EtcdStore, KeyValue

log = logging.getLogger(__name__)

T = TypeVar("T")
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    type: ChangeType
    key: str
    old: T | None
    new: T | None
    revision: int


Listener = Callable[[Change[T]], None]
Decoder = Callable[[str, bytes, int], T]


def decode_json(_: str, value: bytes, __: int) -> dict[str, Any]:
    """A status or report as the JSON its owner wrote."""
    doc: dict[str, Any] = json.loads(value)
    return doc


def decode_resource(_: str, value: bytes, revision: int) -> Resource:
    """A stored object as its typed model, resourceVersion set from the key's revision."""
    data = json.loads(value)
    data["metadata"]["resourceVersion"] = str(revision)
    return parse_object(data)


class WatchCache(Generic[T]):
    def __init__(
        self,
        store: EtcdStore,
        prefix: str,
        decode: Decoder[T],
        *,
        health_interval: float = 1.0,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._decode = decode
        self._health_interval = health_interval
        self._items: dict[str, T] = {}
        # Entries grouped by parent key ("…/endpoints/default/"), so listing one kind in one
        # project does not scan the whole mirror.
        self._groups: dict[str, dict[str, T]] = {}
        self._listeners: list[Listener[T]] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.revision = 0
        self.stale = False
        self.synced = asyncio.Event()

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"watch-cache {self._prefix}"),
            asyncio.create_task(self._watch_health(), name=f"etcd-health {self._prefix}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def items(self, prefix: str = "") -> list[tuple[str, T]]:
        """Entries whose key starts with `prefix`, sorted by key."""
        group = self._groups.get(prefix)
        if group is not None:  # the common case: one kind in one project
            return sorted(group.items())
        return sorted(
            (k, v)
            for parent, entries in self._groups.items()
            if parent.startswith(prefix)
            for k, v in entries.items()
        )

    def __len__(self) -> int:
        return len(self._items)

    def add_listener(self, listener: Listener[T]) -> None:
        self._listeners.append(listener)

    async def wait_for(self, revision: int, timeout: float = 2.0) -> bool:
        """Wait until the cache has seen `revision` (read-your-writes); False on timeout."""
        if self.revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    # the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._list_and_watch()
                backoff = 0.2  # a RESYNC: list again at once
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stale = True
                log.warning("watch cache %s: %s; retrying in %.1fs", self._prefix, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _list_and_watch(self) -> None:
        kvs, revision = await self._store.list_prefix(self._prefix)
        self._replace({kv.key: self._decode_kv(kv) for kv in kvs}, revision)
        self.stale = False
        self.synced.set()
        async for batch in self._store.watch_prefix(self._prefix, revision + 1):
            for event in batch:
                if event.type == "RESYNC":
                    log.info("watch cache %s: history compacted, re-listing", self._prefix)
                    return
                if event.type == "PUT":
                    new = self._decode(event.key, event.value, event.mod_revision)
                    old = self._items.get(event.key)
                    self._set(event.key, new)
                    self._emit(
                        Change(
                            "MODIFIED" if old is not None else "ADDED",
                            event.key,
                            old,
                            new,
                            event.mod_revision,
                        )
                    )
                elif event.type == "DELETE":
                    old = self._unset(event.key)
                    if old is not None:
                        self._emit(Change("DELETED", event.key, old, None, event.mod_revision))
            if batch:
                self._advance(max(e.mod_revision for e in batch))

    def _decode_kv(self, kv: KeyValue) -> T:
        return self._decode(kv.key, kv.value, kv.mod_revision)

    def _replace(self, items: dict[str, T], revision: int) -> None:
        """Swap in a fresh listing and tell listeners what changed while we were not watching."""
        old_items, self._items = self._items, {}
        self._groups = {}
        for key, value in items.items():
            self._set(key, value)
        for key, old in old_items.items():
            if key not in items:
                self._emit(Change("DELETED", key, old, None, revision))
        for key, new in items.items():
            old = old_items.get(key)
            if old is None:
                self._emit(Change("ADDED", key, None, new, revision))
            elif old != new:
                self._emit(Change("MODIFIED", key, old, new, revision))
        self._advance(revision)

    def _set(self, key: str, value: T) -> None:
        self._items[key] = value
        self._groups.setdefault(_parent(key), {})[key] = value

    def _unset(self, key: str) -> T | None:
        old = self._items.pop(key, None)
        group = self._groups.get(_parent(key))
        if group is not None:
            group.pop(key, None)
            if not group:
                del self._groups[_parent(key)]
        return old

    def _emit(self, change: Change[T]) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # one bad listener must not stop the cache
                log.exception("watch cache listener failed")

    def _advance(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        ready = [w for w in self._waiters if w[0] <= self.revision]
        if ready:
            self._waiters = [w for w in self._waiters if w[0] > self.revision]
            for _, fut in ready:
                if not fut.done():
                    fut.set_result(None)

    async def _watch_health(self) -> None:
        # The etcd client reconnects watches silently, so only a probe shows that etcd is gone.
        while True:
            await asyncio.sleep(self._health_interval)
            try:
                healthy = await self._store.healthy()
            except MeshError:
                healthy = False
            if not healthy:
                self.stale = True
            elif self.stale and self.synced.is_set():
                self.stale = False


def _parent(key: str) -> str:
    return key[: key.rfind("/") + 1]
