"""Who may do what: bearer tokens, principals, the roles of seed 000, and the permission check.

Tokens are random strings shown once; etcd keeps only their SHA-256, so a leaked etcd snapshot
leaks no credential. The check is a pure function of the principal, the verb, the kind and the
project's tenant.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from infermesh.errors import Forbidden, Invalid

Verb = Literal["read", "write"]

ROLES = ("orgAdmin", "platformAdmin", "modelOwner", "jobOwner", "viewer")

# Kinds each role may change (and act on); everybody with a role in scope may read.
_WRITES: dict[str, frozenset[str]] = {
    "orgAdmin": frozenset({"*"}),
    "platformAdmin": frozenset(
        {"Domain", "NodeClass", "CapacityPool", "Policy", "Strategy", "Node", "Endpoint", "SLO"}
    ),
    # Owners set the objectives of what they own (SLOs on their endpoints and jobs).
    "modelOwner": frozenset({"Model", "Endpoint", "SLO"}),
    "jobOwner": frozenset({"Job", "SLO"}),
    "viewer": frozenset(),
}
# Tenancy records and tokens are an org admin's alone.
ADMIN_ONLY = frozenset({"Project", "Token"})

TOKEN_PREFIX = "imt_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    roles: tuple[str, ...]
    projects: tuple[str, ...] = ("*",)
    tenants: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Principal:
        return cls(
            subject=str(data["subject"]),
            roles=tuple(data.get("roles", ())),
            projects=tuple(data.get("projects", ())),
            tenants=tuple(data.get("tenants", ())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "roles": list(self.roles),
            "projects": list(self.projects),
            "tenants": list(self.tenants),
        }

    def sees_project(self, project: str, tenant_of: Callable[[str], str]) -> bool:
        return (
            "*" in self.projects or project in self.projects or tenant_of(project) in self.tenants
        )


def validate_principal(data: dict[str, Any]) -> Principal:
    """Check a token request; an error names the field at fault."""
    subject = data.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise Invalid("subject: required, a non-empty string", {"field": "subject"})
    roles = data.get("roles")
    if not isinstance(roles, list) or not roles:
        raise Invalid("roles: required, a non-empty list", {"field": "roles"})
    for role in roles:
        if role not in ROLES:
            raise Invalid(
                f"roles: unknown role {role!r}; valid roles: {', '.join(ROLES)}", {"field": "roles"}
            )
    for name in ("projects", "tenants"):
        value = data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise Invalid(f"{name}: a list of names", {"field": name})
    if not data.get("projects") and not data.get("tenants"):
        raise Invalid(
            "projects: give the projects (or tenants) the token may touch, or '*'",
            {"field": "projects"},
        )
    return Principal.from_json(data)


def writers_of(kind: str) -> list[str]:
    if kind in ADMIN_ONLY:
        return ["orgAdmin"]
    return [r for r, kinds in _WRITES.items() if "*" in kinds or kind in kinds]


def check(
    principal: Principal,
    verb: Verb,
    kind: str,
    project: str,
    tenant_of: Callable[[str], str],
) -> None:
    """Raise Forbidden naming the missing role, or return when the principal may act."""
    if not principal.sees_project(project, tenant_of):
        raise Forbidden(
            f"{principal.subject} has no access to project {project!r}",
            {"project": project, "subject": principal.subject},
        )
    if verb == "read" and kind not in ADMIN_ONLY:
        return
    needed = writers_of(kind)
    if any(role in needed for role in principal.roles):
        return
    action = "read" if verb == "read" else "change"
    raise Forbidden(
        f"role {' or '.join(needed)} required to {action} {kind} objects in project {project!r}"
        f" ({principal.subject} has: {', '.join(principal.roles) or 'no roles'})",
        {"requiredRoles": needed, "kind": kind, "project": project},
    )
