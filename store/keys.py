"""The etcd key layout (docs/architecture.md), in one place.

Every key lives under a root prefix so several meshes (or test runs) can share one etcd.
"""

from __future__ import annotations

from dataclasses import dataclass

# Cluster-scoped kinds (Project) sit under this project segment; no project can be named so,
# because project names must start with a letter or digit.
CLUSTER_SCOPE = "_"


@dataclass(frozen=True, slots=True)
class ObjectKey:
    plural: str
    project: str
    name: str


@dataclass(frozen=True, slots=True)
class KeyLayout:
    root: str = "/infermesh"

    def __post_init__(self) -> None:
        if not self.root.startswith("/") or self.root.endswith("/"):
            raise ValueError(f"etcd prefix must start with '/' and not end with one: {self.root!r}")

    # objects -----------------------------------------------------------------------------
    def objects(self, plural: str | None = None, project: str | None = None) -> str:
        """Prefix of all objects, of one kind, or of one kind in one project."""
        if plural is None:
            return f"{self.root}/objects/"
        if project is None:
            return f"{self.root}/objects/{plural}/"
        return f"{self.root}/objects/{plural}/{project}/"

    def object(self, plural: str, project: str, name: str) -> str:
        return f"{self.root}/objects/{plural}/{project}/{name}"

    def parse_object(self, key: str) -> ObjectKey:
        plural, project, name = key[len(self.root) + len("/objects/") :].split("/", 2)
        return ObjectKey(plural, project, name)

    def status(self, plural: str, project: str, name: str) -> str:
        """Observed status written by the object's owner (agent, router, scheduler)."""
        return f"{self.root}/status/{plural}/{project}/{name}"

    def statuses(self, plural: str, project: str | None = None) -> str:
        if project is None:
            return f"{self.root}/status/{plural}/"
        return f"{self.root}/status/{plural}/{project}/"

    def parse_status(self, key: str) -> ObjectKey:
        plural, project, name = key[len(self.root) + len("/status/") :].split("/", 2)
        return ObjectKey(plural, project, name)

    def logs(self, plural: str, project: str, name: str) -> str:
        """An owner's log tail of one object (a job's rank output); outside `status/` so log
        rewrites never reach status watchers."""
        return f"{self.root}/logs/{plural}/{project}/{name}"

    # events, audit, tokens, elections ----------------------------------------------------
    def events(self, project: str | None = None) -> str:
        return f"{self.root}/events/" if project is None else f"{self.root}/events/{project}/"

    def event(self, project: str, event_id: str) -> str:
        return f"{self.root}/events/{project}/{event_id}"

    def audit(self) -> str:
        return f"{self.root}/audit/"

    def audit_record(self, seq: int) -> str:
        return f"{self.root}/audit/{seq:016d}"

    @property
    def audit_head(self) -> str:
        return f"{self.root}/audit-head"

    def tokens(self) -> str:
        return f"{self.root}/tokens/"

    def token(self, token_hash: str) -> str:
        return f"{self.root}/tokens/{token_hash}"

    def election(self, name: str) -> str:
        return f"{self.root}/election/{name}"
