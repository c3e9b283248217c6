"""The scheduler's Prometheus metrics (prefix `infermesh_`, labels from seed 001's schema)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from infermesh.scheduler.jobstate import JobState

REGISTRY = CollectorRegistry()
_JOB = ("project", "job_id")

STEP_TIME_P95 = Gauge(
    "infermesh_job_step_time_p95_ms", "Step time p95 of rank 0", _JOB, registry=REGISTRY
)
THROUGHPUT = Gauge("infermesh_job_throughput_tps", "Tokens per second", _JOB, registry=REGISTRY)
GPUS = Gauge("infermesh_job_gpus", "GPUs a job holds", _JOB, registry=REGISTRY)
QUEUE_WAIT = Gauge(
    "infermesh_job_queue_wait_seconds", "How long a queued job has waited", _JOB, registry=REGISTRY
)
GPU_HOURS = Gauge(
    "infermesh_pool_gpu_hours", "GPU-hours charged to a capacity pool", ("pool",), registry=REGISTRY
)
PREEMPTIONS = Counter("infermesh_job_preemptions", "Gangs preempted", _JOB, registry=REGISTRY)
RECOVERIES = Counter("infermesh_job_recoveries", "Gangs recovered", _JOB, registry=REGISTRY)
STEPS_LOST = Counter(
    "infermesh_job_steps_lost", "Steps redone after failures", _JOB, registry=REGISTRY
)


class JobMetrics:
    """Turns job states into metric values; counters advance by what changed since last seen."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, int]] = {}

    def observe(self, state: JobState, now: float) -> None:
        project, _, name = state.key.partition("/")
        labels = (project, name)
        p95 = state.step_time_p95()
        if p95 is not None:
            STEP_TIME_P95.labels(*labels).set(p95)
        if state.throughput_tps is not None:
            THROUGHPUT.labels(*labels).set(state.throughput_tps)
        GPUS.labels(*labels).set(state.placement.gpus if state.placement else 0)
        queued = state.placement is None and not state.finished and state.queued_since
        QUEUE_WAIT.labels(*labels).set(now - state.queued_since if queued else 0.0)
        seen = self._seen.get(state.key, (0, 0, 0))
        now_seen = (state.preemptions, state.recoveries, state.steps_lost)
        for counter, before, after in zip(
            (PREEMPTIONS, RECOVERIES, STEPS_LOST), seen, now_seen, strict=True
        ):
            if after > before:
                counter.labels(*labels).inc(after - before)
        self._seen[state.key] = now_seen

    def pools(self, used: dict[str, float]) -> None:
        for pool, hours in used.items():
            GPU_HOURS.labels(pool).set(hours)


def serve_metrics(port: int) -> None:
    start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
