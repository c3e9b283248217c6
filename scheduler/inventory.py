"""From what etcd and Dask say to the `Snapshot` placement reads: plain functions, no I/O.

A node is placeable when its agent reports it (facts: class, GPUs, zone, price), it is Ready and
not cordoned, draining or quarantined (the Node object's intent counts at once), and a Dask worker
stands for it. A job's demand comes from its spec, its resolved priority and its state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from infermesh.agent.report import availability
from infermesh.model import CapacityPool, Domain, Job, Node, Policy
from infermesh.model.policy import PreemptionPolicy
from infermesh.scheduler.jobstate import JobState
from infermesh.scheduler.snapshot import GpuNode, JobDemand, JobKey, NodeKey, Pool

ISLAND_LABEL = "infermesh.io/nvlink-island"  # nodes sharing an NVLink/NVSwitch domain


def gpu_node(
    key: NodeKey,
    report: Mapping[str, Any],
    node: Node | None,
    worker: str | None,
    domains: Mapping[str, Domain],
) -> GpuNode | None:
    """The node's GPU slots, or None when its agent has not said what it is. Residency is the
    node's own, else its domain's (as the router reads it)."""
    facts = report.get("facts") or {}
    gpus = int(facts.get("gpuCount") or 0)
    if gpus <= 0:
        return None
    spec = node.spec if node is not None else None
    labels = node.metadata.labels if node is not None else {}
    domain = facts.get("domain") or (spec.domain if spec else None)
    home = domains.get(domain or "")
    residency = facts.get("residency") or (home.spec.residency.region if home else None)
    return GpuNode(
        key=key,
        node_class=facts.get("nodeClass") or (spec.nodeClassRef if spec else "") or "",
        gpus=gpus,
        zone=facts.get("zone") or (spec.zone if spec else None) or "",
        region=facts.get("region") or (spec.region if spec else None) or "",
        domain=domain,
        island=labels.get(ISLAND_LABEL, ""),
        spot=bool(facts.get("spot")),
        residency=residency,
        price_gpu_hour=float(facts.get("pricePerGpuHour") or 0.0),
        schedulable=availability(report, spec).schedulable,
        worker=worker,
    )


def pool_key(project: str, name: str) -> str:
    return f"{project}/{name}"


def pool_of(pool: CapacityPool, states: Iterable[tuple[JobState, str | None]]) -> Pool:
    """The pool with what its jobs have drawn (GPU-hours and USD charged while running)."""
    spec = pool.spec
    used = spent = 0.0
    key = pool_key(pool.metadata.project, pool.metadata.name)
    for state, job_pool in states:
        if job_pool == key:
            used += state.gpu_hours
            spent += state.cost_usd
    return Pool(
        name=key,
        quota_gpu_hours=spec.quotaGpuHours,
        budget_usd=spec.budgetUSD,
        max_gpus=spec.maxGpus,
        node_classes=tuple(spec.nodeClasses),
        domains=tuple(spec.domains),
        used_gpu_hours=used,
        spent_usd=spent,
    )


def job_pool(job: Job) -> str | None:
    ref = job.spec.capacityPoolRef
    return pool_key(job.metadata.project, ref) if ref else None


def priority_of(job: Job, policies: Iterable[Policy]) -> int:
    """A named priority class (a Policy's `priority.className`) wins over `spec.priority`."""
    wanted = job.spec.priorityClass
    if wanted:
        for policy in sorted(policies, key=lambda p: p.metadata.name):
            prio = policy.spec.priority
            if prio is not None and prio.className == wanted:
                return prio.value
    return job.spec.priority


def preemption_of(job: Job, policies: Iterable[Policy]) -> PreemptionPolicy:
    """The preemption rules of the first policy (by name) that applies to the job."""
    for policy in sorted(policies, key=lambda p: p.metadata.name):
        if policy.spec.preemption is not None and _applies(policy, job):
            return policy.spec.preemption
    return PreemptionPolicy()


def _applies(policy: Policy, job: Job) -> bool:
    targets = policy.spec.appliesTo
    if not targets:
        return True
    labels = job.metadata.labels
    for t in targets:
        if t.kind == "Project" and t.name == job.metadata.project:
            return True
        if t.kind == "Job" and (
            t.name == job.metadata.name
            or (t.matchLabels is not None and labels.items() >= t.matchLabels.items())
        ):
            return True
    return False


def replica_range(job: Job) -> tuple[int, int]:
    """Data-parallel replicas the job may run with: (min, max)."""
    spec = job.spec
    per = spec.parallelism.replica_gpus
    if spec.elastic is None:
        return spec.parallelism.dp, spec.parallelism.dp
    low, high = spec.elastic.min_gpus // per, spec.elastic.max_gpus // per
    if spec.targetGpus is not None:  # `:scale` sets the size wanted, inside the elastic range
        high = spec.targetGpus // per
        low = min(low, high)
    return low, high


def demand_of(job: Job, state: JobState, priority: int, submitted: float) -> JobDemand:
    spec = job.spec
    low, high = replica_range(job)
    residency = tuple(r for r in (spec.constraints.residency or "").split("|") if r)
    return JobDemand(
        key=state.key,
        tp=spec.parallelism.tp,
        pp=spec.parallelism.pp,
        min_replicas=low,
        max_replicas=high,
        priority=priority,
        pool=job_pool(job),
        node_classes=tuple(spec.constraints.nodeClasses),
        domains=tuple(spec.constraints.domains),
        residency=residency,
        spread=spec.placement,
        submitted=submitted,
        last_checkpoint=state.checkpoint_time,
        paused=spec.paused,
    )


def job_key(job: Job) -> JobKey:
    return f"{job.metadata.project}/{job.metadata.name}"
