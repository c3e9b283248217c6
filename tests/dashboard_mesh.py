"""A demo mesh for the dashboard's tests (and `bench/dashboard_screens.py --fake`): objects,
node reports, a job's status and two hours of per-revision SLI series in one project of a real
API on real etcd, then one SLO evaluation pass, so every page has something to show.

The reports and the job status are written the way their owners write them (a put under the
status prefix, the node's bound to a lease); the series go through `POST /v1/metrics/series`
as a router posts them. No tests here: the page tests are in test_dashboard_app.py."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from infermesh.sli import Histogram, SeriesBatch, SeriesBucket, bucket_start
from tests.inprocess_api import InProcessApi

HOUR = 3600
BASELINE, CANARY = "chat-70b@q4_k_m", "chat-70b@fp8"
NODES = (
    ("edge-l4-1", "edge-eu", "edge-l4-eu", "L4-24G", 1, 35.0, 52),
    ("edge-l4-2", "edge-eu", "edge-l4-eu", "L4-24G", 1, 80.0, 71),
    ("eu-h100-1", "cloud-eu", "cloud-h100", "H100-80G", 8, 62.0, 64),
    ("eu-h100-2", "cloud-eu", "cloud-h100", "H100-80G", 8, 12.0, 41),
    ("us-a100-1", "cloud-us", "cloud-a100", "A100-80G", 8, 91.0, 83),
)


def objects() -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", **obj} for obj in _OBJECTS]


_OBJECTS: list[dict[str, Any]] = [
    {
        "kind": "CapacityPool",
        "metadata": {"name": "train-gold"},
        "spec": {"sloClass": "gold", "quotaGpuHours": 100, "budgetUSD": 500, "maxGpus": 64},
    },
    {
        "kind": "Endpoint",
        "metadata": {"name": "chat-pro"},
        "spec": {
            "modelRef": BASELINE,
            "domains": [{"name": "edge-eu", "weight": 60}, {"name": "cloud-eu", "weight": 40}],
            "slo": {"p95_ms": 300, "ttft_ms": 120},
            "trafficSplit": [
                {"modelRef": BASELINE, "weight": 90},
                {"modelRef": CANARY, "weight": 10},
            ],
        },
    },
    {
        "kind": "Endpoint",
        "metadata": {"name": "chat-lite"},
        "spec": {"modelRef": "chat-8b@fp16", "domains": [{"name": "edge-eu"}]},
    },
    {
        "kind": "SLO",
        "metadata": {"name": "chat-pro-availability"},
        "spec": {
            "target": {"kind": "Endpoint", "name": "chat-pro"},
            "sli": "availability",
            "objective": 99.5,
            "description": "chat must answer",
        },
    },
    {
        "kind": "Policy",
        "metadata": {"name": "chat-rollout"},
        "spec": {
            "appliesTo": [{"kind": "Endpoint", "name": "chat-pro"}],
            "rollout": {
                "steps": [5, 25, 50, 100],
                "stepIntervalSeconds": 300,
                "failureGates": [{"metric": "error_rate", "threshold": 0.02}],
            },
        },
    },
    {
        "kind": "Job",
        "metadata": {"name": "ft-news"},
        "spec": {
            "parallelism": {"dp": 1, "tp": 2, "pp": 2},
            "elastic": {"min_gpus": 4, "max_gpus": 8},
            "capacityPoolRef": "train-gold",
            "slo": {"step_time_p95_ms": 25},  # implies SLO ft-news-step-time
            "workload": {"entrypoint": "synthetic", "steps": 200, "stepTimeMs": 20},
        },
    },
]


def node_report(name: str, domain: str, node_class: str, gpu: str, count: int, util: float,
                temp: int) -> dict[str, Any]:  # fmt: skip
    total = 24576 if gpu.startswith("L4") else 81920
    return {
        "agent": {
            "address": "127.0.0.1:9",
            "version": "test",
            "startedAt": "2026-11-22T10:00:00Z",
            "leaseTtlSeconds": 600,
        },
        "facts": {"nodeClass": node_class, "gpu": gpu, "gpuCount": count, "domain": domain},
        "gpus": [
            {
                "index": i,
                "uuid": f"GPU-{name}-{i}",
                "name": gpu,
                "utilPct": util,
                "memUsedMiB": int(total * util / 100),
                "memTotalMiB": total,
                "tempC": temp,
                "powerW": 100 + 3 * util,
                "powerLimitW": 700,
            }
            for i in range(count)
        ],
        "conditions": [{"type": "Ready", "status": "True", "reason": "RuntimeHealthy"}],
        "inFlight": int(util / 10),
        "heartbeat": "2026-11-22T10:00:00Z",
    }


def hist(value: float, n: int) -> Histogram:
    h = Histogram()
    for _ in range(n):
        h.observe(value)
    return h


def buckets(project: str, now: int, hours: float = 2) -> list[SeriesBucket]:
    """10 s buckets for chat-pro: 90 % of its traffic to the baseline at 50 ms, 10 % to the
    canary at 150 ms, and an incident in the last half hour (every canary request and a few
    baseline ones fail: the availability SLO pages)."""
    out = []
    base = bucket_start(now)
    for t in range(base - int(hours * HOUR), base + 10, 10):
        burst = t > base - 1800
        for revision, n, errors, ms in (
            (BASELINE, 90, 8 if burst else 0, 50.0),
            (CANARY, 10, 10 if burst else 0, 150.0),
        ):
            for domain, share in (("edge-eu", 0.6), ("cloud-eu", 0.4)):
                count, bad = round(n * share), round(errors * share)
                out.append(
                    SeriesBucket(
                        start=t,
                        project=project,
                        endpoint="chat-pro",
                        revision=revision,
                        domain=domain,
                        requests=count,
                        errors=bad,
                        latency=hist(ms, count - bad),
                        ttft=hist(ms / 2, count - bad),
                    )
                )
    return out


class DemoMesh:
    """Fills one project of an in-process API (`populate`) and reads it back for checks."""

    def __init__(self, api: InProcessApi, project: str) -> None:
        self.api, self.project = api, project
        self.now = time.time()

    def http(self, token: str | None = None) -> httpx.Client:
        return self.api.client(token)

    def populate(self) -> DemoMesh:
        with self.http() as c:
            r = c.post(
                "/v1/apply",
                params={"project": self.project},
                json={"apiVersion": "v1", "kind": "List", "items": objects()},
            )
            assert r.status_code == 200, r.text
            job = c.get("/v1/jobs/ft-news", params={"project": self.project}).json()
            items = buckets(self.project, int(self.now))
            for i in range(0, len(items), 1000):
                batch = SeriesBatch(source="router-test", buckets=items[i : i + 1000])
                r = c.post("/v1/metrics/series", json=batch.model_dump())
                assert r.status_code == 200, r.text
        self._write_status(job["metadata"]["uid"])
        self.api.evaluate(self.now)
        return self

    def _write_status(self, job_uid: str) -> None:
        state = self.api.state
        lease = self.api.run(state.store.grant_lease(600)).id
        written = {}
        for name, *rest in NODES:
            key = state.keys.status("nodes", self.project, name)
            value = json.dumps(node_report(name, *rest))
            written["nodes"] = self.api.run(state.store.put(key, value, lease=lease))
        status = {
            "uid": job_uid,
            "phase": "Running",
            "reason": "Running",
            "gpus": 4,
            "step": 120,
            "totalSteps": 200,
            "stepTimeP95Ms": 21.5,
            "throughputTps": 5400.0,
            "lastCheckpoint": {"step": 100, "time": "2026-11-22T10:00:00Z"},
            "gpuHours": 12.5,
            "costUSD": 36.25,
            "pool": f"{self.project}/train-gold",
            "quotaGpuHours": 100,
            "restarts": 0,
        }
        key = state.keys.status("jobs", self.project, "ft-news")
        written["jobs"] = self.api.run(state.store.put(key, json.dumps(status)))
        for plural, revision in written.items():  # served from the API's caches: wait for them
            assert self.api.run(state.reports[plural].wait_for(revision, timeout=10))

    def get(self, plural: str, name: str) -> dict[str, Any]:
        with self.http() as c:
            r = c.get(f"/v1/{plural}/{name}", params={"project": self.project})
        assert r.status_code == 200, r.text
        return r.json()

    def token(self, role: str) -> str:
        """A token with one role in this project."""
        return self.token_for(role, self.project)

    def token_for(self, role: str, project: str) -> str:
        with self.http() as c:
            r = c.post(
                "/v1/tokens",
                json={"subject": f"{role}-user", "roles": [role], "projects": [project]},
            )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])
