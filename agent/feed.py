"""`SpecFeed`: the objects agents act on, read straight from etcd (list, then watch).

For one project it keeps every Node object (operators' cordon, drain and quarantine), Policy
(auto-quarantine rules) and NodeClass (facts), and tells subscribed agents when something of
theirs changes. One feed serves any number of agents of the project: a fleet of 2,000 agents
holds three etcd watches, not 6,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError

from infermesh.errors import MeshError
from infermesh.model import Node, NodeClass, Policy, Resource
from infermesh.store.etcd import EtcdStore, WatchEvent
from infermesh.store.keys import KeyLayout

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Resource)
Callback = Callable[[], None]

_RETRY_MIN, _RETRY_MAX = 0.2, 5.0


class SpecFeed:
    """Node, Policy and NodeClass objects of `project`, kept current by etcd watches."""

    def __init__(self, store: EtcdStore, layout: KeyLayout, project: str) -> None:
        self._store, self._layout, self.project = store, layout, project
        self._objects: dict[type[Resource], dict[str, Resource]] = {
            Node: {},
            Policy: {},
            NodeClass: {},
        }
        self._by_node: dict[str, list[Callback]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # reads ------------------------------------------------------------------------------------
    def node(self, name: str) -> Node | None:
        return self._get(Node, name)

    def node_class(self, name: str) -> NodeClass | None:
        return self._get(NodeClass, name)

    def policies(self) -> list[Policy]:
        return [p for p in self._objects[Policy].values() if isinstance(p, Policy)]

    def _get(self, cls: type[R], name: str) -> R | None:
        obj = self._objects[cls].get(name)
        return obj if isinstance(obj, cls) else None

    def subscribe(self, node: str, callback: Callback) -> Callback:
        """Call `callback` when `node`'s object, any Policy or any NodeClass changes; returns
        the function that unsubscribes."""
        self._by_node.setdefault(node, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._by_node.get(node, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._by_node.pop(node, None)

        return unsubscribe

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """List every kind once (so reads are current when this returns, if etcd answers),
        then watch each in the background; an unreachable etcd is retried there."""
        revisions = await asyncio.gather(*(self._list(cls) for cls in self._objects))
        self._tasks = [
            asyncio.create_task(self._follow(cls, rev), name=f"spec-feed-{cls.plural}")
            for cls, rev in zip(self._objects, revisions, strict=True)
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # internals --------------------------------------------------------------------------------
    def _prefix(self, cls: type[Resource]) -> str:
        return self._layout.objects(cls.plural, self.project)

    async def _list(self, cls: type[Resource]) -> int | None:
        """Replace the kind's objects with a fresh listing; its revision, or None when etcd
        could not be read."""
        try:
            items, revision = await self._store.list_prefix(self._prefix(cls))
        except MeshError as exc:
            log.warning("cannot list %s of project %s: %s", cls.plural, self.project, exc)
            return None
        objects = {}
        for kv in items:
            name = kv.key[len(self._prefix(cls)) :]
            obj = self._parse(cls, kv.key, kv.value)
            if obj is not None:
                objects[name] = obj
        self._objects[cls] = objects
        self._notify(cls, None)
        return revision

    async def _follow(self, cls: type[Resource], revision: int | None) -> None:
        delay = _RETRY_MIN
        while True:
            if revision is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                revision = await self._list(cls)
                continue
            delay = _RETRY_MIN
            try:
                async for batch in self._store.watch_prefix(self._prefix(cls), revision + 1):
                    for event in batch:
                        self._apply(cls, event)
            except MeshError as exc:
                log.warning("watch on %s of %s ended: %s", cls.plural, self.project, exc)
            revision = None  # compacted (RESYNC), cancelled or closed: list again

    def _apply(self, cls: type[Resource], event: WatchEvent) -> None:
        if event.type not in ("PUT", "DELETE"):
            return  # RESYNC ends the watch (and we list again); PROGRESS says nothing new
        name = event.key[len(self._prefix(cls)) :]
        obj = self._parse(cls, event.key, event.value) if event.type == "PUT" else None
        if obj is None:
            self._objects[cls].pop(name, None)
        else:
            self._objects[cls][name] = obj
        self._notify(cls, name)

    @staticmethod
    def _parse(cls: type[R], key: str, value: bytes) -> R | None:
        try:
            return cls.model_validate(json.loads(value))
        except (ValueError, ValidationError) as exc:
            log.warning("ignoring %s: not a valid %s (%s)", key, cls.__name__, exc)
            return None

    def _notify(self, cls: type[Resource], name: str | None) -> None:
        """Node changes go to that node's agents; Policy and NodeClass changes (and listings) to
        every agent."""
        if cls is Node and name is not None:
            targets = list(self._by_node.get(name, ()))
        else:
            targets = [cb for callbacks in self._by_node.values() for cb in callbacks]
        for callback in targets:
            callback()
