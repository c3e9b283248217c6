"""Typed objects over etcd: create, apply, replace, patch, delete and actions, with their events
and audit records.

Reads for the API come from the watch cache; a write reads the stored object straight from etcd,
decides the new state with plain functions (`prepare`, `unchanged`), and hands one `Mutation` to
the committer. Optimistic concurrency all the way: a change based on an old resourceVersion fails
with 409 and writes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infermesh.errors import Conflict, Invalid, NotFound
from infermesh.model import Resource, kind_for, parse_object
from infermesh.references import Exists, Names, missing_references, resolved_refs_condition
from infermesh.store import audit
from infermesh.store.committer import Committer, Mutation, event_record, now
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import CLUSTER_SCOPE, KeyLayout
from infermesh.store.watch_cache import WatchCache

Obj = dict[str, Any]

Lookup = tuple[Exists, Names]

_CAS_RETRIES = 8


def plural_of(kind: str) -> str:
    return kind_for(kind).plural


def storage_project(obj: Obj) -> str:
    """The project segment of an object's key (cluster-scoped kinds share one)."""
    return CLUSTER_SCOPE if kind_for(obj["kind"]).cluster_scoped else obj["metadata"]["project"]


@dataclass(frozen=True, slots=True)
class Stored:
    """An object as the API serves it, decoded once and encoded once when it arrives, so reads
    and lists only join bytes."""

    obj: Obj
    json: bytes


def decode(key: str, value: bytes, revision: int) -> Stored:
    """Stored JSON to an API object: the resourceVersion is the key's etcd mod_revision."""
    obj: Obj = json.loads(value)
    obj["metadata"]["resourceVersion"] = str(revision)
    return Stored(obj, json.dumps(obj, separators=(",", ":")).encode())


def encode(obj: Obj) -> bytes:
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return json.dumps({**obj, "metadata": meta}, separators=(",", ":")).encode()


def desired_part(obj: Obj) -> Obj:
    """What a user declares; apply compares only this."""
    meta = obj.get("metadata", {})
    return {
        "labels": meta.get("labels") or {},
        "annotations": meta.get("annotations") or {},
        "spec": obj.get("spec"),
    }


def unchanged(current: Obj, desired: Obj) -> bool:
    return desired_part(current) == desired_part(desired)


def prepare(desired: Obj, current: Obj | None, refs_condition: dict[str, Any] | None) -> Obj:
    """The object to store: the user's metadata and spec, the server's bookkeeping and status."""
    stamp = now()
    meta = dict(desired["metadata"])
    meta.pop("resourceVersion", None)
    if current is None:
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=stamp)
        status: Obj = {}
    else:
        cur = current["metadata"]
        spec_changed = current.get("spec") != desired.get("spec")
        meta.update(
            uid=cur["uid"],
            creationTimestamp=cur["creationTimestamp"],
            generation=cur.get("generation", 1) + (1 if spec_changed else 0),
        )
        status = dict(current.get("status") or {})
    meta["updateTimestamp"] = stamp
    if refs_condition is not None:
        status["conditions"] = merge_condition(status.get("conditions") or [], refs_condition)
    out = {
        "apiVersion": "v1",
        "kind": desired["kind"],
        "metadata": meta,
        "spec": desired.get("spec"),
    }
    if status:
        out["status"] = status
    return out


def merge_condition(conditions: list[Obj], new: Obj) -> list[Obj]:
    """Replace the condition of the same type, keeping its transition time if status held."""
    out, placed = [], False
    for cond in conditions:
        if cond.get("type") == new["type"]:
            if cond.get("status") == new["status"] and cond.get("lastTransitionTime"):
                new = {**new, "lastTransitionTime": cond["lastTransitionTime"]}
            out.append(new)
            placed = True
        else:
            out.append(cond)
    if not placed:
        out.append(new)
    return out


def refs_condition(resource: Resource, exists: Exists, names: Names) -> tuple[Obj, list[str]]:
    """The ResolvedRefs condition of an object and one warning per missing reference."""
    missing = missing_references(resource, exists, names)
    cond = resolved_refs_condition(missing).model_dump(mode="json", exclude_none=True)
    cond.setdefault("lastTransitionTime", now())
    return cond, [f"{ref.kind} {ref.name} not found" for ref in missing]


@dataclass(frozen=True, slots=True)
class Change:
    """Who changed an object, how and why: what its event and audit record say."""

    actor: str
    action: str  # create | update | delete | an action verb (cordon, trafficSplit, ...)
    reason: str  # the event's reason
    message: str
    warnings: list[str] = field(default_factory=list)  # appended to the message
    warning: bool = False  # a Warning event even without warnings


@dataclass(frozen=True, slots=True)
class WriteResult:
    object: Obj
    action: str  # created | configured | unchanged | deleted | <action verb>
    warnings: list[str]


class ObjectRepository:
    def __init__(
        self,
        store: EtcdStore,
        keys: KeyLayout,
        committer: Committer,
        cache: WatchCache[Stored],
    ) -> None:
        self._store = store
        self._keys = keys
        self._committer = committer
        self.cache = cache

    # reads (cache) -------------------------------------------------------------------------
    def key_of(self, kind: str, project: str, name: str) -> str:
        cls = kind_for(kind)
        return self._keys.object(cls.plural, CLUSTER_SCOPE if cls.cluster_scoped else project, name)

    def cached(self, kind: str, project: str, name: str) -> Stored | None:
        return self.cache.get(self.key_of(kind, project, name))

    def exists(self, kind: str, project: str, name: str) -> bool:
        return self.cached(kind, project, name) is not None

    @property
    def lookup(self) -> Lookup:
        """How reference resolution sees the store: exact names, and all names of a kind."""
        return self.exists, self.names

    def names(self, kind: str, project: str) -> list[str]:
        cls = kind_for(kind)
        scope = CLUSTER_SCOPE if cls.cluster_scoped else project
        return [s.obj["metadata"]["name"] for s in self.list(kind, scope)]

    def list(self, kind: str, project: str | None) -> list[Stored]:
        """One kind in one project (None: every project), sorted by name."""
        cls = kind_for(kind)
        scope = CLUSTER_SCOPE if cls.cluster_scoped else project
        return [s for _, s in self.cache.items(self._keys.objects(cls.plural, scope))]

    # writes --------------------------------------------------------------------------------
    async def _read(self, key: str, attempt: int = 1) -> tuple[Obj | None, int]:
        """The stored object and its revision. A first attempt trusts the watch cache (a
        read-modify-write based on it is still safe: the commit compares revisions); a retry
        after a conflict asks etcd."""
        if attempt == 0:
            stored = self.cache.get(key)
            if stored is None:
                return None, 0
            return stored.obj, int(stored.obj["metadata"]["resourceVersion"])
        kv = await self._store.get(key)
        if kv is None:
            return None, 0
        return decode(kv.key, kv.value, kv.mod_revision).obj, kv.mod_revision

    async def _write(
        self, key: str, new: Obj | None, expected: int, before: Obj | None, change: Change
    ) -> int:
        """Commit `new` (None deletes) if the key is still at `expected`, with its event and
        audit record; returns the revision, once the watch cache has seen it."""
        actor, action, warnings = change.actor, change.action, change.warnings
        subject = new if new is not None else before
        assert subject is not None
        meta = subject["metadata"]
        project = meta.get("project") or CLUSTER_SCOPE
        event = event_record(
            kind=subject["kind"],
            project=project,
            name=meta["name"],
            reason=change.reason,
            message=change.message + ("; " + "; ".join(warnings) if warnings else ""),
            actor=actor,
            warning=bool(warnings or change.warning),
        )
        record = {
            "time": event["time"],
            "actor": actor,
            "action": action,
            "kind": subject["kind"],
            "project": project,
            "name": meta["name"],
            "diff": audit.diff(before or {}, new or {}),
        }
        value = None if new is None else encode(new)
        revision = await self._committer.commit(
            Mutation(key, value, expected, project, event, record)
        )
        # Read-your-writes: the caller's next read (from the cache) sees this write.
        await self.cache.wait_for(revision)
        return revision

    async def create(
        self,
        resource: Resource,
        actor: str,
        lookup: Lookup | None = None,
    ) -> WriteResult:
        desired = resource.to_dict()
        key = self.key_of(desired["kind"], resource.metadata.project, resource.metadata.name)
        cond, warnings = refs_condition(resource, *(lookup or self.lookup))
        new = prepare(desired, None, cond)
        what = f"{desired['kind']} {resource.metadata.name}"
        change = Change(actor, "create", "Created", f"{what} created", warnings)
        rev = await self._write(key, new, 0, None, change)
        return WriteResult(_with_rv(new, rev), "created", warnings)

    async def apply(
        self,
        resource: Resource,
        actor: str,
        lookup: Lookup | None = None,
    ) -> WriteResult:
        """Create or bring in line with the manifest; `unchanged` writes nothing."""
        desired = resource.to_dict()
        key = self.key_of(desired["kind"], resource.metadata.project, resource.metadata.name)
        for attempt in range(_CAS_RETRIES):
            current, rev = await self._read(key, attempt)
            cond, warnings = refs_condition(resource, *(lookup or self.lookup))
            if current is None:
                try:
                    return await self.create(resource, actor, lookup)
                except Conflict:
                    continue  # created meanwhile: apply over it
            if unchanged(current, desired):
                return WriteResult(current, "unchanged", warnings)
            new = prepare(desired, current, cond)
            try:
                what = f"{desired['kind']} {resource.metadata.name}"
                change = Change(actor, "update", "Configured", f"{what} configured", warnings)
                new_rev = await self._write(key, new, rev, current, change)
            except Conflict:
                continue
            return WriteResult(_with_rv(new, new_rev), "configured", warnings)
        raise Conflict(f"{desired['kind']} {resource.metadata.name!r} keeps changing; try again")

    async def replace(self, resource: Resource, actor: str) -> WriteResult:
        """PUT: with metadata.resourceVersion the write is conditional on it (409 when stale)."""
        desired = resource.to_dict()
        key = self.key_of(desired["kind"], resource.metadata.project, resource.metadata.name)
        current, rev = await self._read(key)
        if current is None:
            raise NotFound(
                f"{desired['kind']} {resource.metadata.name!r} not found in project "
                f"{resource.metadata.project!r}"
            )
        expected = _expected_revision(resource.metadata.resourceVersion, rev)
        cond, warnings = refs_condition(resource, *self.lookup)
        new = prepare(desired, current, cond)
        what = f"{desired['kind']} {resource.metadata.name}"
        change = Change(actor, "update", "Updated", f"{what} replaced", warnings)
        new_rev = await self._write(key, new, expected, current, change)
        return WriteResult(_with_rv(new, new_rev), "configured", warnings)

    async def delete(
        self, kind: str, project: str, name: str, actor: str, resource_version: str | None = None
    ) -> WriteResult:
        key = self.key_of(kind, project, name)
        current, rev = await self._read(key)
        if current is None:
            raise NotFound(f"{kind} {name!r} not found in project {project!r}")
        expected = _expected_revision(resource_version, rev)
        change = Change(actor, "delete", "Deleted", f"{kind} {name} deleted")
        await self._write(key, None, expected, current, change)
        return WriteResult(current, "deleted", [])

    async def mutate(
        self,
        kind: str,
        project: str,
        name: str,
        actor: str,
        change: Callable[[Obj], Obj],
        *,
        action: str,
        message: str,
        reason: str,
        warning: bool = False,
    ) -> WriteResult:
        """Read-modify-write with retries: `change` gets a copy of the stored object and returns
        it with a new spec or labels; the result is re-validated, so an action can never store an
        invalid object. Status stays the server's (ResolvedRefs is recomputed)."""
        key = self.key_of(kind, project, name)
        for attempt in range(_CAS_RETRIES):
            current, rev = await self._read(key, attempt)
            if current is None and attempt == 0:
                continue  # not in the cache (yet): ask etcd before saying it is not there
            if current is None:
                raise NotFound(f"{kind} {name!r} not found in project {project!r}")
            proposed = change(json.loads(json.dumps(current)))
            resource = parse_object(declared(proposed))
            cond, warnings = refs_condition(resource, *self.lookup)
            new = prepare(resource.to_dict(), current, cond)
            try:
                # The event is about the action; missing references were reported when the
                # spec was written and live on in the ResolvedRefs condition.
                change = Change(actor, action, reason, message, warning=warning)
                new_rev = await self._write(key, new, rev, current, change)
            except Conflict:
                continue
            return WriteResult(_with_rv(new, new_rev), action, warnings)
        raise Conflict(f"{kind} {name!r} keeps changing; try again")


def _with_rv(obj: Obj, revision: int) -> Obj:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(revision)}}


def _expected_revision(given: str | None, stored: int) -> int:
    if not given:
        return stored
    try:
        return int(given)
    except ValueError:
        raise Invalid(
            f"metadata.resourceVersion: not a resource version: {given!r}",
            {"field": "metadata.resourceVersion"},
        ) from None


def declared(obj: Obj) -> Obj:
    """Object as a user would declare it (status and server bookkeeping dropped) for validation."""
    meta = {
        k: v
        for k, v in obj["metadata"].items()
        if k in ("name", "project", "labels", "annotations")
    }
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": meta,
        "spec": obj.get("spec"),
    }
