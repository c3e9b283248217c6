"""Training jobs as the Jobs page shows them: the columns of `mesh get jobs -o wide` as a frame,
and GPU-hours and cost per capacity pool against its quota and budget. Pure functions of what
`GET /v1/jobs` and `GET /v1/capacitypools` answer (the status the scheduler writes:
scheduler/jobstate.py `to_status`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from infermesh.cli.printers import age, dig

Obj = dict[str, Any]

COLUMNS = [
    "Job",
    "Phase",
    "GPUs",
    "Step",
    "Progress %",
    "Step p95 ms",
    "Throughput tok/s",
    "Last checkpoint",
    "GPU-hours",
    "Cost USD",
    "Pool",
    "Restarts",
    "Paused",
    "Age",
]


def wanted_gpus(job: Obj) -> int:
    """The scale target, else dp x tp x pp (as `mesh get jobs` shows it)."""
    par = dig(job, "spec.parallelism") or {}
    return int(
        dig(job, "spec.targetGpus") or (par.get("dp", 1) * par.get("tp", 1) * par.get("pp", 1))
    )


def pool_of(job: Obj) -> str:
    """`project/pool` as the scheduler names it, or the spec's pool in the job's project."""
    pool = dig(job, "status.pool")
    if pool:
        return str(pool)
    ref = dig(job, "spec.capacityPoolRef")
    return f"{dig(job, 'metadata.project')}/{ref}" if ref else ""


def job_row(job: Obj) -> Obj:
    status = job.get("status") or {}
    step, total = status.get("step"), status.get("totalSteps")
    ckpt = status.get("lastCheckpoint") or {}
    return {
        "Job": dig(job, "metadata.name"),
        "Phase": status.get("phase") or "Pending",
        "GPUs": f"{status.get('gpus') or 0}/{wanted_gpus(job)}",
        "Step": "" if step is None else (f"{step}/{total}" if total else str(step)),
        "Progress %": round(step / total * 100, 1) if step is not None and total else None,
        "Step p95 ms": status.get("stepTimeP95Ms"),
        "Throughput tok/s": status.get("throughputTps"),
        "Last checkpoint": f"{ckpt.get('step')} ({age(ckpt.get('time'))} ago)" if ckpt else "",
        "GPU-hours": round(float(status.get("gpuHours") or 0), 3),
        "Cost USD": round(float(status.get("costUSD") or 0), 2),
        "Pool": pool_of(job).partition("/")[2],
        "Restarts": status.get("restarts") or 0,
        "Paused": bool(dig(job, "spec.paused")),
        "Age": age(dig(job, "metadata.creationTimestamp")),
    }


def frame(jobs: list[Obj]) -> pd.DataFrame:
    rows = sorted((job_row(j) for j in jobs), key=lambda r: str(r["Job"]))
    return pd.DataFrame(rows, columns=COLUMNS)


def pools(pools: list[Obj], jobs: list[Obj]) -> pd.DataFrame:
    """Per capacity pool: GPU-hours and USD its jobs drew, against its quota and budget, and
    the GPUs they hold now against its cap."""
    used: dict[str, list[float]] = {}
    for job in jobs:
        key = pool_of(job)
        if not key:
            continue
        status = job.get("status") or {}
        acc = used.setdefault(key, [0.0, 0.0, 0.0])
        acc[0] += float(status.get("gpuHours") or 0)
        acc[1] += float(status.get("costUSD") or 0)
        acc[2] += float(status.get("gpus") or 0)
    rows = []
    for pool in sorted(pools, key=lambda p: str(dig(p, "metadata.name"))):
        key = f"{dig(pool, 'metadata.project')}/{dig(pool, 'metadata.name')}"
        gpu_h, usd, gpus = used.get(key, [0.0, 0.0, 0.0])
        spec = pool.get("spec") or {}
        rows.append(
            {
                "Pool": dig(pool, "metadata.name"),
                "SLO class": spec.get("sloClass") or "",
                "GPU-hours": round(gpu_h, 3),
                "Quota GPU-h": spec.get("quotaGpuHours"),
                "Cost USD": round(usd, 2),
                "Budget USD": spec.get("budgetUSD"),
                "GPUs in use": int(gpus),
                "Max GPUs": spec.get("maxGpus"),
            }
        )
    columns = [
        "Pool",
        "SLO class",
        "GPU-hours",
        "Quota GPU-h",
        "Cost USD",
        "Budget USD",
        "GPUs in use",
        "Max GPUs",
    ]
    out = pd.DataFrame(rows, columns=columns)
    for c in ("Quota GPU-h", "Budget USD"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out
