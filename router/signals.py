"""What the router records per request: Prometheus metrics and the SLI series it ships.

`Outcome` is one finished request. `Signals.record` turns it into Prometheus samples (this
router's `/metrics`) and into 10-second `SeriesBucket`s per endpoint, revision, domain and tenant,
which `ship` posts to the control plane's series store. A bucket is re-sent while it is open;
the store replaces a source's own row, so at-least-once delivery never double counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infermesh.sli import Histogram as LatencyHistogram
from infermesh.sli import SeriesBatch, SeriesBucket

log = logging.getLogger(__name__)

BUCKET_S = 10
MAX_BUCKETS_PER_POST = 1000  # ~350 bytes each: well under the API's 1 MiB body limit
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
_DECISION_S = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3)


@dataclass(slots=True)
class Outcome:
    project: str
    endpoint: str
    revision: str
    domain: str  # the target's domain ("" when the request reached none)
    tenant: str
    status: int
    latency_s: float
    ttft_s: float | None = None
    target: str = ""
    strategy: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hedged: bool = False
    hedge_won: bool = False
    rejected: str | None = None  # which limit, for a 429


class Signals:
    def __init__(self, name: str) -> None:
        # Unique per process: a restarted router must not replace its predecessor's open bucket.
        self.source = f"{name}-{secrets.token_hex(4)}"
        self.registry = r = CollectorRegistry()
        labels = ("endpoint", "revision", "domain", "tenant")
        self.requests = Counter(
            "infermesh_inference_requests", "Inference requests", (*labels, "code"), registry=r
        )
        self.latency = Histogram(
            "infermesh_inference_request_latency_seconds",
            "End-to-end latency of inference requests",
            labels,
            buckets=_SECONDS,
            registry=r,
        )
        self.ttft = Histogram(
            "infermesh_inference_ttft_seconds",
            "Time to first token (first byte of the runtime's answer)",
            labels,
            buckets=_SECONDS,
            registry=r,
        )
        self.chosen = Counter(
            "infermesh_router_target_chosen",
            "Targets the router sent requests to",
            ("endpoint", "node", "strategy"),
            registry=r,
        )
        self.rejected = Counter(
            "infermesh_requests_rejected",
            "Requests refused with 429, by the limit that refused them",
            ("endpoint", "tenant", "limit"),
            registry=r,
        )
        self.hedges = Counter(
            "infermesh_router_hedges",
            "Hedged requests: fired, won (the hedge answered first), wasted (the hedge lost)",
            ("endpoint", "outcome"),
            registry=r,
        )
        self.retries = Counter(
            "infermesh_router_retries", "Retries before the first byte", ("endpoint",), registry=r
        )
        self.decision = Histogram(
            "infermesh_router_decision_seconds",
            "Time spent in the strategy's decide()",
            ("strategy",),
            buckets=_DECISION_S,
            registry=r,
        )
        self.overruns = Counter(
            "infermesh_router_decision_overruns",
            "Decisions over the latency budget, answered by the fallback strategy",
            ("strategy",),
            registry=r,
        )
        self.shadow_agreement = Counter(
            "infermesh_router_shadow_decisions",
            "Shadow strategy decisions, by whether they agreed with the live one",
            ("endpoint", "shadow", "live", "agreed"),
            registry=r,
        )
        self.shadow_wins = Counter(
            "infermesh_router_shadow_predicted_wins",
            "Shadow decisions whose pick had a lower predicted TTFT than the live pick",
            ("endpoint", "shadow", "live"),
            registry=r,
        )
        self.degraded = Counter(
            "infermesh_router_degraded",
            "Requests a Policy degradation rule acted on, by action (hedge, local-only)",
            ("endpoint", "action"),
            registry=r,
        )
        self.inflight = Gauge(
            "infermesh_router_inflight_requests", "Requests in flight", ("endpoint",), registry=r
        )
        self._buckets: dict[tuple[int, str, str, str, str, str], SeriesBucket] = {}
        self._sent_upto = 0  # buckets that started before this are closed and shipped

    def record(self, o: Outcome) -> None:
        labels = (o.endpoint, o.revision, o.domain, o.tenant)
        self.requests.labels(*labels, str(o.status)).inc()
        self.latency.labels(*labels).observe(o.latency_s)
        if o.ttft_s is not None:
            self.ttft.labels(*labels).observe(o.ttft_s)
        if o.target:
            self.chosen.labels(o.endpoint, o.target, o.strategy).inc()
        if o.rejected:
            self.rejected.labels(o.endpoint, o.tenant, o.rejected).inc()
        bucket = self._bucket(o)
        bucket.requests += 1
        if o.status >= 500:
            bucket.errors += 1
        if o.rejected:
            bucket.rejected += 1
        if o.hedged:
            bucket.hedges += 1
        if o.hedge_won:
            bucket.hedge_wins += 1
        bucket.prompt_tokens += o.prompt_tokens
        bucket.completion_tokens += o.completion_tokens
        if o.status < 400:
            bucket.latency.observe(o.latency_s * 1000.0)
            if o.ttft_s is not None:
                bucket.ttft.observe(o.ttft_s * 1000.0)

    def _bucket(self, o: Outcome) -> SeriesBucket:
        start = int(time.time()) // BUCKET_S * BUCKET_S
        key = (start, o.project, o.endpoint, o.revision, o.domain, o.tenant)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = SeriesBucket(
                start=start,
                width_s=BUCKET_S,
                project=o.project,
                endpoint=o.endpoint,
                revision=o.revision,
                domain=o.domain,
                tenant=o.tenant,
                requests=0,
                errors=0,
                rejected=0,
                hedges=0,
                hedge_wins=0,
                prompt_tokens=0,
                completion_tokens=0,
                latency=LatencyHistogram(),
                ttft=LatencyHistogram(),
            )
        return bucket

    def take_batches(self, now: float) -> tuple[list[SeriesBatch], list[tuple[int, ...]]]:
        """Every bucket to (re-)send now, in posts the API's body limit takes, and the keys of
        those that are closed."""
        open_from = int(now) // BUCKET_S * BUCKET_S
        closed = [k for k in self._buckets if k[0] < open_from]
        buckets = list(self._buckets.values())
        batches = [
            SeriesBatch(source=self.source, buckets=buckets[i : i + MAX_BUCKETS_PER_POST])
            for i in range(0, len(buckets), MAX_BUCKETS_PER_POST)
        ]
        return batches, closed

    def forget(self, keys: list[tuple[int, ...]]) -> None:
        for key in keys:
            self._buckets.pop(key, None)  # type: ignore[arg-type]


async def ship(
    signals: Signals,
    session: aiohttp.ClientSession,
    api_url: str,
    token: str,
    stop: asyncio.Event,
    every_s: float = BUCKET_S,
) -> None:
    """Post the SLI buckets to the control plane every `every_s` until `stop`; a failed post
    keeps the buckets for the next one (bounded: after an hour of failures the oldest go)."""
    url = api_url.rstrip("/") + "/v1/metrics/series"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        batches, closed = signals.take_batches(time.time())  # after `stop`: one last flush
        try:
            for batch in batches:
                body = batch.model_dump_json()
                async with session.post(url, data=body, headers=headers) as resp:
                    if resp.status >= 400:
                        log.warning("series post: HTTP %s %s", resp.status, await resp.text())
                        break
            else:
                signals.forget(closed)
                continue
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("series post to %s failed: %s", url, exc)
        horizon = time.time() - 3600  # kept for the next post, for an hour at most
        signals.forget([k for k in closed if k[0] < horizon])
