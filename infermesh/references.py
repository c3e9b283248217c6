"""Which objects an object refers to, and which of them are missing (pure: no I/O).

Rules: a reference `name@rev` names exactly that object; a bare `name` names the object called
`name` or any revision `name@...` of it. Built-in strategies exist in every project. References
stay within the referring object's project.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from infermesh.model import (
    SLO,
    CapacityPool,
    Condition,
    Endpoint,
    Job,
    Node,
    Policy,
    Resource,
    StrategyRef,
    builtin_named,
    kind_for,
    name_matches,
)

Exists = Callable[[str, str, str], bool]  # (kind, project, exact name) -> stored?
Names = Callable[[str, str], Iterable[str]]  # (kind, project) -> names stored


class Ref(NamedTuple):
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def references_of(obj: Resource) -> list[Ref]:
    """The objects `obj` names, in the order its spec names them, each once."""
    refs: list[Ref] = []
    match obj:
        case Endpoint(spec=spec):
            refs.append(Ref("Model", spec.modelRef))
            refs += [Ref("Model", entry.modelRef) for entry in spec.trafficSplit]
            refs += [Ref("Domain", d.name) for d in spec.domains]
            refs += _pool(spec.capacityPoolRef) + _strategy(spec.strategy)
        case Job(spec=spec):
            refs += [Ref("NodeClass", name) for name in spec.constraints.nodeClasses]
            refs += [Ref("Domain", name) for name in spec.constraints.domains]
            refs += _pool(spec.capacityPoolRef) + _strategy(spec.strategy)
        case Policy(spec=spec):
            refs += _strategy(spec.strategy)
            refs += [Ref(t.kind, t.name) for t in spec.appliesTo if t.name is not None]
        case Node(spec=spec):
            refs.append(Ref("NodeClass", spec.nodeClassRef))
            if spec.domain:
                refs.append(Ref("Domain", spec.domain))
        case CapacityPool(spec=spec):
            refs += [Ref("NodeClass", name) for name in spec.nodeClasses]
            refs += [Ref("Domain", name) for name in spec.domains]
        case SLO(spec=spec):
            refs.append(Ref(spec.target.kind, spec.target.name))
            if spec.domain:
                refs.append(Ref("Domain", spec.domain))
    return list(dict.fromkeys(refs))


def _pool(name: str | None) -> list[Ref]:
    return [Ref("CapacityPool", name)] if name else []


def _strategy(strategy: StrategyRef | None) -> list[Ref]:
    return [Ref("Strategy", strategy.ref)] if strategy else []


def missing_references(obj: Resource, exists: Exists, names: Names | None = None) -> list[Ref]:
    """The references of `obj` that name nothing in its project.

    `exists` answers for exact names. A bare reference (`chat-70b`) that is not an exact name is
    looked up among `names` (every name of that kind in the project) when given, so pass it to
    let bare references find `chat-70b@q4_k_m`; without it they must match exactly."""
    project = obj.metadata.project
    missing = []
    for ref in references_of(obj):
        if ref.kind == "Strategy" and builtin_named(ref.name):
            continue
        if exists(ref.kind, project, ref.name):
            continue
        if (
            names is not None
            and "@" not in ref.name
            and any(name_matches(ref.name, name) for name in names(ref.kind, project))
        ):
            continue
        missing.append(ref)
    return missing


def exists_in(objects: Iterable[Resource]) -> tuple[Exists, Names]:
    """`exists` and `names` over a snapshot of objects, for `missing_references`."""
    index: dict[tuple[str, str], set[str]] = {}
    for obj in objects:
        index.setdefault(_scope(obj.kind, obj.metadata.project), set()).add(obj.metadata.name)

    def exists(kind: str, project: str, name: str) -> bool:
        return name in index.get(_scope(kind, project), ())

    def names(kind: str, project: str) -> Iterable[str]:
        return sorted(index.get(_scope(kind, project), ()))

    return exists, names


def _scope(kind: str, project: str) -> tuple[str, str]:
    # A cluster-scoped object (Project) is visible from every project.
    return (kind, "" if kind_for(kind).cluster_scoped else project)


def resolved_refs_condition(missing: list[Ref]) -> Condition:
    """The `ResolvedRefs` condition for an object with these references missing."""
    if not missing:
        return Condition(
            type="ResolvedRefs",
            status="True",
            reason="AllResolved",
            message="all references resolved",
        )
    return Condition(
        type="ResolvedRefs",
        status="False",
        reason="MissingReferences",
        message=", ".join(map(str, missing)) + " not found",
    )


def referrers(
    objects: Iterable[Resource], kind: str, name: str, project: str | None = None
) -> list[Resource]:
    """Objects that refer to the `kind` object called `name` (in `project`, when given), sorted.

    A controller calls this when an object appears or disappears, to re-resolve its dependents."""
    found = [
        obj
        for obj in objects
        if (project is None or obj.metadata.project == project)
        and any(ref.kind == kind and name_matches(ref.name, name) for ref in references_of(obj))
    ]
    return sorted(found, key=lambda o: (o.metadata.project, o.kind, o.metadata.name))
