"""Which SLOs exist: standalone SLO objects, and the implicit ones endpoints and jobs declare.

An Endpoint's `spec.slo` (and each domain's `slo` override) and a Job's `spec.slo` imply SLOs
that nobody applied; they are served and evaluated like SLO objects, marked with the annotation
`slo.infermesh.io/implicit: "true"` (and `.../source: Endpoint/<name>`). Percentile targets read
as threshold SLOs: `p95_ms: 300` is "95 % of requests within 300 ms" (objective 95), `p99_ms`
objective 99, `ttft_ms` a p95 TTFT target (objective 95), `availability: 99.9` objective 99.9.

| declared | implicit SLO |
|---|---|
| Endpoint `spec.slo.p95_ms` | `<endpoint>-latency-p95` |
| Endpoint `spec.slo.p99_ms` | `<endpoint>-latency-p99` |
| Endpoint `spec.slo.ttft_ms` | `<endpoint>-ttft` |
| Endpoint `spec.slo.availability` | `<endpoint>-availability` |
| Endpoint `spec.domains[].slo.*` | `<endpoint>-<domain>-...` (that domain's traffic) |
| Job `spec.slo.step_time_p95_ms` | `<job>-step-time` (judged from the job's status, training.py) |
| Job `spec.slo.throughput_tps` | `<job>-throughput` (judged from the job's status, training.py) |

A standalone SLO named like an implicit one replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from infermesh.errors import MeshError
from infermesh.model import SLO, parse_object
from infermesh.store.slo.burn import SliSpec

log = logging.getLogger(__name__)

Obj = dict[str, Any]

IMPLICIT = "slo.infermesh.io/implicit"
SOURCE = "slo.infermesh.io/source"
EVALUATED_SLIS = ("availability", "latency", "ttft")

# (field of an Endpoint's slo block, name suffix, sli, objective: None = the field's value)
_ENDPOINT_FIELDS: tuple[tuple[str, str, str, float | None], ...] = (
    ("p95_ms", "latency-p95", "latency", 95.0),
    ("p99_ms", "latency-p99", "latency", 99.0),
    ("ttft_ms", "ttft", "ttft", 95.0),
    ("availability", "availability", "availability", None),
)


@dataclass(frozen=True, slots=True)
class SloDefinition:
    """One SLO to evaluate and show: its object as served (without status) and what it means."""

    project: str
    name: str
    obj: Obj
    target_kind: str  # Endpoint | Job
    target_name: str
    domain: str | None
    spec: SliSpec
    implicit: bool
    uid: str | None  # the SLO object's (None for implicit ones)

    @property
    def evaluated(self) -> bool:
        """Whether the evaluator computes it (request SLIs on endpoints, from the series)."""
        return self.target_kind == "Endpoint" and self.spec.sli in EVALUATED_SLIS


def definition(obj: Obj, *, implicit: bool = False) -> SloDefinition | None:
    """The definition of a stored SLO object (or of an implicit one); None when it does not
    validate (stored before a schema change: the object reports that itself when next
    written)."""
    try:
        slo = parse_object({k: v for k, v in obj.items() if k != "status"})
    except MeshError as exc:  # e.g. an implicit name too long once suffixed: serve the rest
        log.warning("SLO %s skipped: %s", obj.get("metadata", {}).get("name"), exc)
        return None
    assert isinstance(slo, SLO)
    spec, meta = slo.spec, slo.metadata
    if implicit:  # served as a stored SLO would be: defaults filled in
        served = slo.to_dict()
        obj = {**served, "metadata": {**served["metadata"], **obj["metadata"]}}
        obj.pop("status", None)
    assert spec.objective is not None  # defaulted by the model
    return SloDefinition(
        project=meta.project,
        name=meta.name,
        obj=obj,
        target_kind=spec.target.kind,
        target_name=spec.target.name,
        domain=spec.domain,
        spec=SliSpec(
            sli=spec.sli,
            objective=spec.objective,
            threshold_ms=spec.thresholdMs,
            rate_limited_is_bad=spec.rateLimitedIsBad,
            window=spec.window,
        ),
        implicit=implicit,
        uid=None if implicit else meta.uid,
    )


def implicit_objects(owner: Obj) -> list[Obj]:
    """The SLO objects an Endpoint's or a Job's `spec.slo` implies (dicts as the API serves
    them, without status)."""
    kind, meta = owner.get("kind"), owner.get("metadata") or {}
    spec = owner.get("spec") or {}
    if kind == "Endpoint":
        specs = list(_endpoint_specs(meta["name"], spec))
    elif kind == "Job":
        specs = list(_job_specs(meta["name"], spec.get("slo") or {}))
    else:
        return []
    return [_implicit_object(owner, name, slo_spec) for name, slo_spec in specs]


def _endpoint_specs(endpoint: str, spec: Obj) -> Iterator[tuple[str, Obj]]:
    scopes: list[tuple[str | None, Obj]] = [(None, spec.get("slo") or {})]
    scopes += [(d.get("name"), d.get("slo") or {}) for d in spec.get("domains") or []]
    for domain, block in scopes:
        prefix = endpoint if domain is None else f"{endpoint}-{domain}"
        for field, suffix, sli, objective in _ENDPOINT_FIELDS:
            value = block.get(field)
            if value is None:
                continue
            out: Obj = {"target": {"kind": "Endpoint", "name": endpoint}, "sli": sli}
            if sli == "availability":
                out["objective"] = value
            else:
                out["objective"], out["thresholdMs"] = objective, value
            if domain is not None:
                out["domain"] = domain
            where = f" in domain {domain}" if domain else ""
            out["description"] = f"from Endpoint {endpoint} spec.slo.{field}{where}"
            yield f"{prefix}-{suffix}", out


def _job_specs(job: str, block: Obj) -> Iterator[tuple[str, Obj]]:
    target = {"kind": "Job", "name": job}
    if block.get("step_time_p95_ms") is not None:
        yield (
            f"{job}-step-time",
            {
                "target": target,
                "sli": "step_time",
                "objective": 95.0,
                "thresholdMs": block["step_time_p95_ms"],
                "description": f"from Job {job} spec.slo.step_time_p95_ms",
            },
        )
    if block.get("throughput_tps") is not None:
        yield (
            f"{job}-throughput",
            {
                "target": target,
                "sli": "throughput",
                "thresholdTps": block["throughput_tps"],
                "description": f"from Job {job} spec.slo.throughput_tps",
            },
        )


def _implicit_object(owner: Obj, name: str, spec: Obj) -> Obj:
    meta = owner["metadata"]
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "SLO",
        "metadata": {
            "name": name,
            "project": meta.get("project", "default"),
            "annotations": {IMPLICIT: "true", SOURCE: f"{owner['kind']}/{meta['name']}"},
        },
        "spec": spec,
    }
    for stamp in ("creationTimestamp", "updateTimestamp"):
        if meta.get(stamp):
            obj["metadata"][stamp] = meta[stamp]
    return obj


def definitions(slos: Iterable[Obj], owners: Iterable[Obj]) -> list[SloDefinition]:
    """Every SLO of a snapshot, sorted by project and name: the standalone objects and the
    implicit ones of `owners` (Endpoints and Jobs); a standalone one shadows an implicit one of
    the same name."""
    found: dict[tuple[str, str], SloDefinition] = {}
    for obj in slos:
        d = definition(obj)
        if d is not None:
            found[(d.project, d.name)] = d
    for owner in owners:
        for obj in implicit_objects(owner):
            key = (obj["metadata"]["project"], obj["metadata"]["name"])
            if key not in found and (d := definition(obj, implicit=True)) is not None:
                found[key] = d
    return [found[k] for k in sorted(found)]
