"""The envelope every object shares: metadata, conditions, status, and the strict base model.

Validation errors raised here carry the path of the offending field (pydantic `loc`), so the API
and the manifest loader can say `spec.domains[0].weight` and point at its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]

_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._@-]*[a-z0-9])?")
NAME_MAX = 253
# Kubernetes label syntax: keeps `labelSelector=k=v` unambiguous and Prometheus labels sane.
_LABEL_KEY_RE = re.compile(
    r"([a-z0-9]([a-z0-9.-]*[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"
)
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?")


def raise_problems(title: str, problems: Iterable[tuple[Loc, str]]) -> None:
    """Raise one ValidationError with an entry per (field path, message), if there are any.

    Raised inside a validator, pydantic prefixes each path with the validated field's own path,
    so cross-field checks still point at the exact field (`spec.elastic.min_gpus`)."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("invalid", "{reason}", {"reason": message}),
            loc=loc,
            input=None,
        )
        for loc, message in problems
    ]
    if details:
        raise ValidationError.from_exception_data(title, details)


def _check_name(value: str) -> str:
    if len(value) > NAME_MAX:
        raise PydanticCustomError(
            "invalid_name",
            "name is {length} characters long; the limit is {limit}",
            {"length": len(value), "limit": NAME_MAX},
        )
    if not _NAME_RE.fullmatch(value) or value.count("@") > 1:
        raise PydanticCustomError(
            "invalid_name",
            "'{name}' is not a valid name: use lowercase letters, digits, '-', '.' and '_', "
            "starting and ending with a letter or digit, and at most one '@' before a revision "
            "(as in chat-70b@q4_k_m)",
            {"name": value},
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]
"""An object name, or a reference to one (`edge-eu`, `chat-70b@q4_k_m`, `hybrid_mesh@1.0`)."""


def name_matches(ref: str, name: str) -> bool:
    """Whether a reference names an object: `name@rev` exactly; a bare `name` also any revision."""
    return ref == name or ("@" not in ref and name.startswith(ref + "@"))


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if len(key) > NAME_MAX or not _LABEL_KEY_RE.fullmatch(key):
            raise PydanticCustomError(
                "invalid_label",
                "label key '{key}' is not valid: use [prefix/]name with letters, "
                "digits, '-', '_' and '.'",
                {"key": key},
            )
        if len(value) > 63 or not _LABEL_VALUE_RE.fullmatch(value):
            raise PydanticCustomError(
                "invalid_label",
                "label '{key}' has an invalid value '{value}': at most 63 "
                "letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
                {"key": key, "value": value},
            )
    return labels


Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class StrictModel(BaseModel):
    """Base of every object part: unknown fields are errors (see registry for the message)."""

    model_config = ConfigDict(extra="forbid")


class ObjectMeta(StrictModel):
    name: Name
    project: Name = "default"
    labels: Labels = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Set by the server; ignored when a client sends them, except resourceVersion on replace.
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: datetime | None = None
    updateTimestamp: datetime | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StrictModel):
    type: str = Field(min_length=1)
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    lastTransitionTime: datetime | None = None


class Status(StrictModel):
    """Observed state, written by the server and the object's owner, never by clients."""

    conditions: list[Condition] = Field(default_factory=list)

    def get_condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(self, condition: Condition, now: datetime | None = None) -> bool:
        """Add or replace the condition of the same type; True when anything changed.

        lastTransitionTime moves only when the status flips, so it says how long a state held."""
        old = self.get_condition(condition.type)
        if old is not None and old.status == condition.status:
            when = old.lastTransitionTime
        else:
            when = condition.lastTransitionTime or now or utcnow()
        new = condition.model_copy(update={"lastTransitionTime": when})
        if old is None:
            self.conditions.append(new)
            return True
        self.conditions[self.conditions.index(old)] = new
        return new != old


class Resource(StrictModel):
    """The envelope: `apiVersion: v1`, kind, metadata, spec, status. One subclass per kind."""

    plural: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # Cluster-scoped kinds (Project) live outside any project.
    cluster_scoped: ClassVar[bool] = False

    apiVersion: Literal["v1"] = "v1"
    kind: str
    metadata: ObjectMeta
    spec: StrictModel
    status: Status = Field(default_factory=Status)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the API stores and returns."""
        return self.model_dump(mode="json", exclude_none=True)
