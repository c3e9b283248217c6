"""Kinds by name, plural and alias; a dict to a validated object, with field-path errors."""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from infermesh.errors import Invalid, NotFound
from infermesh.model.infra import CapacityPool, Domain, Node, NodeClass, Project
from infermesh.model.meta import Loc, Resource
from infermesh.model.policy import Policy, Strategy
from infermesh.model.slo import SLO
from infermesh.model.workloads import Endpoint, Job, Model

KINDS: dict[str, type[Resource]] = {
    cls.__name__: cls
    for cls in (
        Domain,
        NodeClass,
        CapacityPool,
        Model,
        Endpoint,
        Job,
        Policy,
        Strategy,
        Node,
        Project,
        SLO,
    )
}
_WORDS: dict[str, type[Resource]] = {
    word: cls for cls in KINDS.values() for word in (cls.__name__.lower(), cls.plural, *cls.aliases)
}


def _kinds_help() -> str:
    return ", ".join(
        f"{kind} ({', '.join((cls.plural, *cls.aliases))})" for kind, cls in KINDS.items()
    )


def kind_for(word: str) -> type[Resource]:
    """The class for a kind (`Endpoint`), its plural (`endpoints`) or an alias (`ep`)."""
    cls = KINDS.get(word) or _WORDS.get(word.lower())
    if cls is None:
        raise NotFound(f"unknown kind {word!r}; valid kinds: {_kinds_help()}", {"kind": word})
    return cls


@dataclass(frozen=True, slots=True)
class FieldProblem:
    loc: Loc  # path into the submitted document, e.g. ("spec", "domains", 0, "weight")
    message: str

    @property
    def field(self) -> str:
        return format_loc(self.loc)


def format_loc(loc: Loc) -> str:
    """`spec.domains[0].weight`; the empty path is the object itself."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a bad dict key; the key itself precedes it
            out += f".{part}" if out else str(part)
    return out or "(object)"


def check_object(data: Any) -> tuple[Resource | None, list[FieldProblem]]:
    """Validate one object: the object, or None and every problem found."""
    if not isinstance(data, dict):
        return None, [
            FieldProblem((), "an object must be a mapping with apiVersion, kind, metadata and spec")
        ]
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None, [FieldProblem(("kind",), _kind_message(kind))]
    problems = []
    if "apiVersion" not in data:
        problems.append(
            FieldProblem(("apiVersion",), "required field is missing; set apiVersion: v1")
        )
    try:
        obj = cls.model_validate(data)
    except ValidationError as exc:
        problems += [_problem(cls, err) for err in exc.errors()]
        return None, problems
    return (None, problems) if problems else (obj, [])


def parse_object(data: Any) -> Resource:
    """A validated object of the class its `kind` names; `Invalid` lists every bad field."""
    obj, problems = check_object(data)
    if obj is not None:
        return obj
    kind, name = identity(data)
    listed = "; ".join(f"{p.field}: {p.message}" for p in problems)
    raise Invalid(
        f"invalid {kind} {name}: {listed}",
        {
            "kind": kind,
            "name": name,
            "errors": [{"field": p.field, "message": p.message} for p in problems],
        },
    )


def identity(data: Any) -> tuple[str, str]:
    """Kind and name of a (possibly invalid) document, for messages."""
    if not isinstance(data, dict):
        return "object", "?"
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    kind = data.get("kind")
    return (kind if isinstance(kind, str) else "object"), (name if isinstance(name, str) else "?")


def _kind_message(kind: Any) -> str:
    if kind is None:
        return f"required field is missing; valid kinds: {', '.join(KINDS)}"
    cls = _WORDS.get(str(kind).lower())
    if cls is not None:
        return f"unknown kind {kind!r} (did you mean {cls.__name__!r}?)"
    return f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}"


# Errors pydantic phrases without the offending value; add it so the user sees what was read.
_SHOW_INPUT = (
    "literal_error",
    "enum",
    "int_",
    "float_",
    "bool_",
    "string_",
    "greater_than",
    "less_than",
    "too_short",
    "too_long",
    "list_type",
    "dict_type",
    "model_type",
)


def _problem(cls: type[BaseModel], err: Any) -> FieldProblem:
    loc: Loc = tuple(err["loc"])
    kind, message = err["type"], err["msg"]
    if kind == "extra_forbidden":
        message = _unknown_field_message(loc[-1], _fields_at(cls, loc[:-1]))
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind.startswith(_SHOW_INPUT):
        value = err.get("input")
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        message = f"{message} (got {shown})"
    return FieldProblem(loc, message)


def _unknown_field_message(key: object, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"unknown field {key!r} (did you mean {close[0]!r}?)"
    if known:
        return f"unknown field {key!r}; allowed here: {', '.join(known)}"
    return f"unknown field {key!r}"


def _fields_at(cls: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model found by following `loc` from `cls` (for suggestions)."""
    tp: Any = cls
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = tp.model_fields.get(part)
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _unwrap(tp: Any) -> Any:
    """`Annotated[X, ...]` and `X | None` to X."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
