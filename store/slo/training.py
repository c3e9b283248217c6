"""Training SLOs (`step_time`, `throughput`) judged from the scheduler's job status.

A Job's SLO is about the run as it goes: its step-time p95 within `thresholdMs`, its throughput
at or above `thresholdTps`. The scheduler keeps both in the job's status (`stepTimeP95Ms` over
its recent steps, `throughputTps`), so each evaluator pass compares the latest figures with the
threshold: `Breaching` while they miss it, `OK` while they meet it, `Pending` while the job has
no figures (not running yet, or finished). Each change between `OK` and `Breaching` is an event.
There is no error budget or burn table: the routers' series hold requests, not steps.
"""

from __future__ import annotations

from typing import Any

from infermesh.store.committer import event_record
from infermesh.store.slo.definitions import SloDefinition
from infermesh.store.slo.status import iso

Obj = dict[str, Any]
ACTOR = "system:slo-evaluator"
RUNNING = frozenset({"Running", "Checkpointing"})


def decide_training(
    d: SloDefinition, job: Obj | None, previous: Obj | None, now: float
) -> tuple[Obj, list[Obj]]:
    """The training SLO's status and the events of its change (see the module docstring)."""
    spec = d.obj.get("spec") or {}
    step_time = d.spec.sli == "step_time"
    threshold = spec.get("thresholdMs") if step_time else spec.get("thresholdTps")
    field, unit = ("stepTimeP95Ms", "ms") if step_time else ("throughputTps", " tokens/s")
    job = job or {}
    value = job.get(field) if job.get("phase") in RUNNING else None
    if value is None or threshold is None:
        phase, reason = "Pending", "NoData"
        message = f"job {d.target_name} reports no {field} (phase {job.get('phase', 'unknown')})"
    else:
        missed = value > threshold if step_time else value < threshold
        word = "over" if step_time else "under"
        phase = "Breaching" if missed else "OK"
        reason = (
            ("StepTimeOverThreshold" if step_time else "ThroughputUnderThreshold")
            if missed
            else "WithinObjective"
        )
        message = (
            f"{field} {value:g}{unit} {word if missed else 'within'} the threshold "
            f"{threshold:g}{unit}"
        )
    status: Obj = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "implicit": d.implicit,
        "sli": d.spec.sli,
        "objective": d.spec.objective,
        "thresholdMs": spec.get("thresholdMs"),
        "thresholdTps": spec.get("thresholdTps"),
        "window": d.spec.window,
        "current": {field: value, "jobPhase": job.get("phase")},
        "alerts": [],
        "windows": [],
        "updated": iso(now),
    }
    if d.uid:
        status["uid"] = d.uid
    before = (previous or {}).get("phase")
    events = []
    if phase != "Pending" and (phase == "Breaching") != (before == "Breaching"):
        breaching = phase == "Breaching"
        events.append(
            event_record(
                kind="SLO",
                project=d.project,
                name=d.name,
                reason="SLOBreaching" if breaching else "SLORecovered",
                message=f"SLO {d.name} of Job {d.target_name}: {message}",
                actor=ACTOR,
                warning=breaching,
                time=iso(now),
            )
        )
    return status, events
