"""Keeps every object's ResolvedRefs condition true as the objects it names come and go.

A Kubernetes-style controller: the watch cache feeds changes, a reverse index says who refers to
what, a work queue of keys is reconciled by the one leader among the API replicas. A write already
sets the condition of the object written; this controller fixes its dependents (an Endpoint whose
Model is applied later, or deleted).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from infermesh.errors import MeshError
from infermesh.model import parse_object
from infermesh.references import references_of
from infermesh.store.election import ElectedLoop, LeaderElection
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout
from infermesh.store.repository import Obj, ObjectRepository, Stored, declared, refs_condition
from infermesh.store.watch_cache import Change

log = logging.getLogger(__name__)

ACTOR = "system:reference-controller"
RefKey = tuple[str, str, str]  # (kind, project, name as referred to)


class ReferenceController(ElectedLoop):
    def __init__(
        self, store: EtcdStore, keys: KeyLayout, repo: ObjectRepository, *, identity: str
    ) -> None:
        election = LeaderElection(store, keys.election("reference-controller"), identity)
        super().__init__(election, "reference-controller")
        self._repo = repo
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._refers: dict[RefKey, set[str]] = defaultdict(set)  # referred-to -> referrer keys
        self._refs_of: dict[str, list[RefKey]] = {}

    async def start(self) -> None:
        for key, stored in self._repo.cache.items():
            self._index(key, stored.obj)
        self._repo.cache.add_listener(self._on_change)
        await super().start()

    # feeding the queue -----------------------------------------------------------------------
    def _on_change(self, change: Change[Stored]) -> None:
        stored = change.new or change.old
        assert stored is not None
        obj = stored.obj
        if change.new is None:
            self._unindex(change.key)
        else:
            self._index(change.key, change.new.obj)
        if change.type != "MODIFIED":
            meta = obj["metadata"]
            name = meta["name"]
            for ref_name in {name, name.split("@", 1)[0]}:
                for key in self._refers.get((obj["kind"], meta.get("project", ""), ref_name), ()):
                    self._enqueue(key)

    def _index(self, key: str, obj: Obj) -> None:
        self._unindex(key)
        try:
            resource = parse_object(declared(obj))
        except MeshError:
            return  # stored before a schema change; the object itself reports it when written
        project = resource.metadata.project
        refs = [(ref.kind, project, ref.name) for ref in references_of(resource)]
        self._refs_of[key] = refs
        for ref in refs:
            self._refers[ref].add(key)

    def _unindex(self, key: str) -> None:
        for ref in self._refs_of.pop(key, ()):
            self._refers[ref].discard(key)
            if not self._refers[ref]:
                del self._refers[ref]

    def _enqueue(self, key: str) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    # the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._election.campaign()
                log.info("reference controller: leading")
                for key in self._refs_of:  # a new leader checks everything once
                    self._enqueue(key)
                while self._election.is_leader:
                    key = await self._next_key()
                    if key is not None:
                        await self._reconcile(key)
                log.info("reference controller: lost leadership")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reference controller: %s; retrying", exc)
                await asyncio.sleep(1)

    async def _next_key(self) -> str | None:
        """The next key to reconcile, or None as soon as leadership is lost."""
        get = asyncio.ensure_future(self._queue.get())
        lost = asyncio.ensure_future(self._election.lost.wait())
        try:
            await asyncio.wait((get, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not get.done():
                get.cancel()
        if not get.done() or get.cancelled():
            return None
        key = get.result()
        self._queued.discard(key)
        return key

    async def _reconcile(self, key: str) -> None:
        stored = self._repo.cache.get(key)
        if stored is None:
            return
        obj = stored.obj
        resource = parse_object(declared(obj))
        want, _ = refs_condition(resource, *self._repo.lookup)
        have = next(
            (
                c
                for c in (obj.get("status") or {}).get("conditions", [])
                if c.get("type") == want["type"]
            ),
            None,
        )
        if have and have.get("status") == want["status"] and have.get("message") == want["message"]:
            return
        meta = resource.metadata
        try:
            await self._repo.mutate(
                obj["kind"],
                meta.project,
                meta.name,
                ACTOR,
                lambda o: o,
                action="resolve-references",
                reason=want["reason"],
                message=f"{obj['kind']} {meta.name}: {want['message']}",
                warning=want["status"] != "True",
            )
        except MeshError as exc:
            log.info("reference controller: %s %s: %s", obj["kind"], meta.name, exc)
