"""What the signed-in principal may do, from `GET /v1/whoami`: the dashboard shows action
controls only to roles that may change the kind (the same table the API checks: store/auth.py),
and the audit log only to org admins. The API checks every action again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infermesh.store.auth import writers_of


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]

    @classmethod
    def from_whoami(cls, body: dict[str, Any]) -> Principal:
        return cls(
            subject=str(body.get("subject") or "unknown"),
            roles=tuple(str(r) for r in body.get("roles") or ()),
            projects=tuple(str(p) for p in body.get("projects") or ()),
        )

    def may_change(self, kind: str, project: str) -> bool:
        """Whether a role of ours may act on objects of `kind` in `project`. Tenant-scoped
        tokens are judged by the API (the dashboard cannot see tenants)."""
        if self.projects and "*" not in self.projects and project not in self.projects:
            return False
        return any(role in writers_of(kind) for role in self.roles)

    @property
    def reads_audit(self) -> bool:
        return "orgAdmin" in self.roles

    @property
    def label(self) -> str:
        return f"{self.subject} ({', '.join(self.roles) or 'no roles'})"
