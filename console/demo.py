"""Fixed data shaped like the API's answers: the default simulated fleet with a canary in
progress, jobs, SLOs and events, at a fixed time (`NOW`). `infermesh-console --demo` shows it;
the snapshot tests, the screenshots and the benchmark use it (`fleet` makes any number of
nodes).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from infermesh.console.source import StaticSource

Obj = dict[str, Any]
NOW = datetime(2026, 11, 22, 10, 42, 7, tzinfo=UTC)
PROJECT = "default"

GPU_SPECS = {  # name: (memory MiB, power limit W)
    "H100-80G": (81559, 700.0),
    "A100-80G": (81920, 400.0),
    "L4-24G": (23034, 72.0),
}


def stamp(seconds_ago: float) -> str:
    return (
        (NOW - timedelta(seconds=seconds_ago))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def meta(name: str, age_s: float = 86400 * 3, labels: dict[str, str] | None = None) -> Obj:
    return {
        "name": name,
        "project": PROJECT,
        "labels": labels or {},
        "annotations": {},
        "creationTimestamp": stamp(age_s),
        "resourceVersion": "1",
    }


def gpu(index: int, name: str, util: float, temp: float, node_seed: int = 0) -> Obj:
    mem_total, limit = GPU_SPECS[name]
    used = int(mem_total * min(0.97, 0.2 + util / 130))
    return {
        "index": index,
        "uuid": f"GPU-{node_seed:04x}{index:02x}-5e1f-4c2a-9d0b",
        "name": name,
        "utilPct": round(util, 1),
        "memUsedMiB": used,
        "memTotalMiB": mem_total,
        "tempC": round(temp, 1),
        "powerW": round(limit * (0.25 + 0.7 * util / 100), 1),
        "powerLimitW": limit,
        "eccVolatileSbe": 0,
        "eccVolatileDbe": 0,
        "throttleReasons": [],
        "migProfile": None,
    }


def node(
    name: str,
    node_class: str,
    domain: str,
    gpu_name: str,
    utils: list[float],
    *,
    zone: str = "eu-central-1a",
    models: tuple[str, ...] = ("chat-70b@q4_k_m",),
    temp_base: float = 45.0,
    in_flight: int = 0,
    spec_extra: Obj | None = None,
    conditions: list[Obj] | None = None,
    seed: int = 0,
    age_s: float = 86400 * 2,
) -> Obj:
    gpus = [gpu(i, gpu_name, u, temp_base + u * 0.35 + (i % 3), seed) for i, u in enumerate(utils)]
    spec = {
        "nodeClassRef": node_class,
        "domain": domain,
        "region": zone.rsplit("-", 1)[0],
        "zone": zone,
        "address": f"10.0.{seed // 250}.{seed % 250 + 1}:9400",
        "cordoned": False,
    } | (spec_extra or {})
    status = {
        "agent": {"address": spec["address"], "version": "0.1.0", "startedAt": stamp(age_s)},
        "facts": {
            "nodeClass": node_class,
            "gpu": gpu_name,
            "gpuCount": len(utils),
            "domain": domain,
            "region": spec["region"],
            "zone": zone,
        },
        "gpus": gpus,
        "runtime": {
            "kind": "vllm",
            "url": f"http://127.0.0.1:{9100 + seed % 800}",
            "healthy": True,
            "models": list(models),
            "running": in_flight,
            "waiting": max(0, in_flight - 6),
            "kvCacheUsage": round(min(0.98, sum(utils) / len(utils) / 110), 2),
            "ttftP50Ms": 60.0 + in_flight * 4,
            "itlP50Ms": 21.0,
            "errorRatio": 0.0,
        },
        "inFlight": in_flight,
        "conditions": conditions
        or [{"type": "Ready", "status": "True", "reason": "RuntimeHealthy", "message": ""}],
        "heartbeat": stamp(1),
    }
    labels = {"tier": "gold" if gpu_name == "H100-80G" else "silver"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta(name, age_s, labels),
        "spec": spec,
        "status": status,
    }


# The demo fleet: tables of data, kept compact.
# fmt: off
def nodes() -> list[Obj]:
    hot = [{"type": "Ready", "status": "True", "reason": "RuntimeHealthy"},
           {"type": "Quarantined", "status": "True", "reason": "GpuOverTemperature",
            "message": "GPU 3 over 90 °C for 30 s", "actor": "agent"}]
    return [
        node("edge-l4-1", "edge-l4-eu", "edge-eu", "L4-24G", [37.0], zone="eu-west-1a",
             models=("chat-8b@fp16",), in_flight=2, seed=1),
        node("edge-l4-2", "edge-l4-eu", "edge-eu", "L4-24G", [82.5], zone="eu-west-1a",
             models=("chat-8b@fp16",), in_flight=7, seed=2),
        node("edge-h100-1", "edge-h100-eu", "edge-eu", "H100-80G", [64.0], zone="eu-west-1b",
             models=("chat-70b@q4_k_m", "chat-70b@fp8"), in_flight=5, seed=3),
        node("eu-h100-1", "cloud-h100", "cloud-eu", "H100-80G",
             [71.0, 68.5, 74.2, 69.9, 12.0, 8.5, 10.1, 9.7], in_flight=11, seed=4),
        node("eu-h100-2", "cloud-h100", "cloud-eu", "H100-80G",
             [96.0, 97.5, 95.1, 98.2, 96.4, 97.0, 95.5, 96.8], models=("chat-70b@fp8",),
             in_flight=23, temp_base=48.0, seed=5),
        node("eu-a100-1", "cloud-a100", "cloud-eu", "A100-80G",
             [40.0, 41.0, 39.5, 88.0, 0.0, 0.0, 0.0, 0.0], zone="eu-central-1b",
             spec_extra={"quarantine": {"reason": "GPU 3 over 90 °C for 30 s",
                                        "actor": "agent:eu-a100-1", "since": stamp(420)}},
             conditions=hot, temp_base=52.0, seed=6),
        node("us-h100-1", "cloud-h100", "cloud-us", "H100-80G",
             [22.0, 18.0, 25.5, 20.1, 19.9, 21.0, 23.3, 17.8], zone="us-east-1a",
             spec_extra={"cordoned": True,
                         "drain": {"reason": "kernel upgrade", "actor": "sre@corp",
                                   "requestedAt": stamp(95), "timeoutSeconds": 300,
                                   "force": False}},
             in_flight=3, seed=7),
        node("us-a100-1", "cloud-a100", "cloud-us", "A100-80G",
             [55.0, 57.5, 52.0, 58.8, 54.1, 56.0, 53.3, 55.5], zone="us-east-1b", in_flight=9,
             seed=8, age_s=3600 * 5),
    ]


def endpoints() -> list[Obj]:
    def endpoint(name: str, model: str, domains: list[Obj], **extra: Any) -> Obj:
        spec = {"modelRef": model, "domains": domains, "strategy": {"ref": "hybrid_mesh@1.0"},
                "trafficSplit": extra.pop("split", [])}
        return {"apiVersion": "v1", "kind": "Endpoint", "metadata": meta(name), "spec": spec,
                "status": extra.pop("status", {})}

    rollout = {
        "phase": "Progressing",
        "canary": "chat-70b@fp8",
        "baseline": "chat-70b@q4_k_m",
        "steps": [5, 25, 50, 100],
        "step": 1,
        "weight": 25,
        "stepStartedAt": stamp(240),
        "nextStepAt": stamp(-60),
        "comparison": {
            "canary": {"requests": 3120, "error_rate": 0.0016, "p95_ms": 212.0, "ttft_ms": 88.0},
            "baseline": {"requests": 9410, "error_rate": 0.0021, "p95_ms": 236.0,
                         "ttft_ms": 97.0},
        },
        "verdict": "healthy",
        "reason": "canary within 10 % of baseline on errors, p95 and TTFT",
    }
    return [
        endpoint(
            "chat-pro", "chat-70b@q4_k_m",
            [{"name": "edge-eu", "weight": 60, "slo": {"p95_ms": 300, "ttft_ms": 120}},
             {"name": "cloud-eu", "weight": 40, "slo": {"p95_ms": 350, "ttft_ms": 140}}],
            split=[{"modelRef": "chat-70b@q4_k_m", "weight": 75},
                   {"modelRef": "chat-70b@fp8", "weight": 25}],
            status={"rollout": rollout,
                    "degrade": {"actions": ["hedge"], "since": stamp(130),
                                "reason": "inter-region RTT over 60 ms"}},
        ),
        endpoint("chat-lite", "chat-8b@fp16", [{"name": "edge-eu", "weight": 100,
                                                 "slo": {"p95_ms": 150}}]),
        endpoint("chat-us", "chat-70b@q4_k_m", [{"name": "cloud-us", "weight": 100}]),
    ]


METRICS = {
    f"{PROJECT}/chat-pro": {"rps": 41.7, "error_rate": 0.0019, "latency_p95_ms": 231.0,
                            "ttft_p95_ms": 94.0, "requests": 12530},
    f"{PROJECT}/chat-lite": {"rps": 12.2, "error_rate": 0.061, "latency_p95_ms": 171.0,
                             "ttft_p95_ms": 40.0, "requests": 3660},
    f"{PROJECT}/chat-us": {"rps": 3.4, "error_rate": 0.0, "latency_p95_ms": 402.0,
                           "ttft_p95_ms": 130.0, "requests": 1020},
}


def jobs() -> list[Obj]:
    def job(name: str, status: Obj, *, elastic: tuple[int, int] | None = (4, 8),
            extra: Obj | None = None) -> Obj:
        spec: Obj = {"type": "finetuning", "parallelism": {"dp": 1, "tp": 2, "pp": 2},
                     "capacityPoolRef": "train-gold"} | (extra or {})
        if elastic:
            spec["elastic"] = {"min_gpus": elastic[0], "max_gpus": elastic[1]}
        return {"apiVersion": "v1", "kind": "Job", "metadata": meta(name, 7200), "spec": spec,
                "status": status}

    return [
        job("ft-news-xxl", {"phase": "Running", "gpus": 8, "step": 1540, "totalSteps": 2000,
                            "stepTimeP95Ms": 412.0, "lastCheckpoint": {"step": 1500,
                                                                       "time": stamp(185)},
                            "gpuHours": 12.43, "quotaGpuHours": 200000, "restarts": 0,
                            "nodes": {"default/eu-h100-1": 4, "default/us-h100-1": 4},
                            "pool": "train-gold", "costUSD": 36.05}),
        job("lora-support", {"phase": "Paused", "gpus": 0, "step": 620, "totalSteps": 1000,
                             "stepTimeP95Ms": 95.0, "lastCheckpoint": {"step": 600,
                                                                       "time": stamp(1900)},
                             "gpuHours": 3.1, "quotaGpuHours": 200000, "restarts": 1},
            extra={"paused": True, "type": "lora"}),
        job("eval-chat-70b", {"phase": "Pending", "reason": "Unschedulable", "gpus": 0,
                              "gpuHours": 0, "quotaGpuHours": 200000},
            elastic=None, extra={"type": "eval"}),
        job("pretrain-tiny", {"phase": "Failed", "gpus": 0, "step": 88, "totalSteps": 5000,
                              "stepTimeP95Ms": 1840.0, "gpuHours": 191.7,
                              "quotaGpuHours": 200.0, "restarts": 3},
            elastic=(4, 4), extra={"type": "pretraining"}),
    ]


def _windows(burns: list[float]) -> list[Obj]:
    names = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")
    return [{"window": w, "good": 9990.0, "total": 10000.0, "ratio": 0.999, "burn": b}
            for w, b in zip(names, burns, strict=True)]


def _alerts(firing: set[str]) -> list[Obj]:
    rules = (("page-1h-5m", "page", "1h", "5m", 14.4), ("page-6h-30m", "page", "6h", "30m", 6.0),
             ("ticket-1d-2h", "ticket", "1d", "2h", 3.0),
             ("ticket-3d-6h", "ticket", "3d", "6h", 1.0))
    return [{"rule": r, "severity": s, "longWindow": lw, "shortWindow": sw, "factor": f,
             "firing": r in firing, "since": stamp(900) if r in firing else None}
            for r, s, lw, sw, f in rules]


def slos() -> list[Obj]:
    def slo(name: str, endpoint: str, sli: str, objective: float, threshold: float | None,
            phase: str, budget: float, burns: list[float], firing: set[str]) -> Obj:
        spec = {"target": {"kind": "Endpoint", "name": endpoint}, "sli": sli,
                "objective": objective, "window": "30d"}
        if threshold is not None:
            spec["thresholdMs"] = threshold
        return {
            "apiVersion": "v1", "kind": "SLO",
            "metadata": meta(name) | {"annotations": {
                "slo.infermesh.io/implicit": "true",
                "slo.infermesh.io/source": f"Endpoint/{endpoint}"}},
            "spec": spec,
            "status": {"phase": phase, "budgetRemaining": budget, "errorBudget": 0.05,
                       "exhaustionSeconds": None if burns[2] < 1 else 86400 * 3,
                       "windows": _windows(burns), "alerts": _alerts(firing),
                       "percentiles": {"1h": {"requests": 150000, "p50Ms": 120.0,
                                              "p95Ms": 231.0, "p99Ms": 310.0,
                                              "ttftP95Ms": 94.0}},
                       "updated": stamp(4), "implicit": True},
        }

    return [
        slo("chat-pro-latency-p95", "chat-pro", "latency", 95, 300, "OK", 0.82,
            [0.4, 0.5, 0.6, 0.5, 0.4, 0.3, 0.3, 0.2], set()),
        slo("chat-pro-ttft", "chat-pro", "ttft", 95, 120, "Warning", 0.31,
            [2.1, 2.6, 3.4, 3.2, 3.1, 3.3, 1.9, 0.9], {"ticket-1d-2h"}),
        slo("chat-lite-latency-p95", "chat-lite", "latency", 95, 150, "Breaching", -0.21,
            [22.0, 19.5, 16.7, 12.0, 7.2, 3.6, 1.4, 1.2], {"page-1h-5m", "page-6h-30m"}),
        slo("chat-us-availability", "chat-us", "availability", 99.9, None, "OK", 0.97,
            [0.0, 0.0, 0.0, 0.1, 0.1, 0.0, 0.0, 0.03], set()),
    ]


def events() -> list[Obj]:
    rows = [
        (12, "Normal", "TrafficSplit", "Endpoint", "chat-pro", "rollout-controller",
         "Endpoint chat-pro traffic split set to chat-70b@q4_k_m=75, chat-70b@fp8=25"),
        (95, "Normal", "Drain", "Node", "us-h100-1", "sre@corp",
         "Node us-h100-1 drain requested by sre@corp: kernel upgrade"),
        (130, "Warning", "Degraded", "Endpoint", "chat-pro", "router",
         "hedging: inter-region RTT over 60 ms"),
        (185, "Normal", "Checkpoint", "Job", "ft-news-xxl", "scheduler",
         "checkpoint at step 1500 written"),
        (420, "Warning", "Quarantine", "Node", "eu-a100-1", "agent:eu-a100-1",
         "Node eu-a100-1 quarantined by agent:eu-a100-1: GPU 3 over 90 °C for 30 s"),
        (900, "Warning", "SLOAlertFiring", "SLO", "chat-lite-latency-p95", "slo-evaluator",
         "page alert page-1h-5m firing: burn 16.7x over 1h and 22.0x over 5m (threshold 14.4x)"),
        (1900, "Normal", "Pause", "Job", "lora-support", "ml@corp",
         "Job lora-support pause requested by ml@corp"),
        (3600, "Normal", "Apply", "Endpoint", "chat-us", "admin",
         "Endpoint chat-us created by admin"),
    ]
    return [
        {"id": f"{int((NOW - timedelta(seconds=ago)).timestamp() * 1e9):020d}-{i:06x}",
         "time": stamp(ago), "type": t, "reason": reason, "kind": kind, "name": name,
         "project": PROJECT, "actor": actor, "message": message}
        for i, (ago, t, reason, kind, name, actor, message) in enumerate(rows)
    ]


def catalog() -> dict[str, list[Obj]]:
    def obj(kind: str, name: str, spec: Obj) -> Obj:
        return {"apiVersion": "v1", "kind": kind, "metadata": meta(name, 86400 * 9),
                "spec": spec, "status": {}}

    return {
        "domains": [
            obj("Domain", "edge-eu", {"scope": {"cells": ["eu-west/*"]}, "residency":
                {"region": "EU"}, "netPolicy": {"rttBudgetMs": 25,
                                                "allowLinkClasses": ["intra-zone"]}}),
            obj("Domain", "cloud-eu", {"scope": {"regions": ["eu-central"]}, "residency":
                {"region": "EU"}, "netPolicy": {"rttBudgetMs": 60}}),
            obj("Domain", "cloud-us", {"scope": {"regions": ["us-east"]}, "residency":
                {"region": "US"}, "netPolicy": {"rttBudgetMs": 120}}),
        ],
        "capacitypools": [
            obj("CapacityPool", "prod-gold", {"sloClass": "gold", "quotaGpuHours": 20000,
                                              "budgetUSD": 50000}),
            obj("CapacityPool", "train-gold", {"sloClass": "gold", "quotaGpuHours": 200000,
                                               "budgetUSD": 400000, "maxGpus": 512}),
        ],
        "policies": [
            obj("Policy", "eu-wan-guard", {"appliesTo": [{"kind": "Domain", "name": "edge-eu"},
                                                         {"kind": "Domain", "name": "cloud-eu"}],
                                           "residency": {"allowedRegions": ["EU"]},
                                           "degrade": {"hedging": {"enabled": True}},
                                           "quarantine": {"maxTempC": 88}}),
        ],
        "strategies": [
            obj("Strategy", "hybrid_mesh@1.0", {"kind": "inference", "plugin": "builtin"}),
            obj("Strategy", "net_aware_hier@1.0", {"kind": "training", "plugin": "builtin"}),
        ],
    }
# fmt: on


def objects() -> dict[str, list[Obj]]:
    return {"nodes": nodes(), "endpoints": endpoints(), "jobs": jobs(), **catalog()}


def source() -> StaticSource:
    return StaticSource(objects(), events=events(), slos=slos(), metrics=METRICS, label="demo")


def fleet(count: int, gpus_per_node: int = 8) -> list[Obj]:
    """`count` cloud nodes of `gpus_per_node` H100s over three domains (the benchmark's)."""
    domains = ("edge-eu", "cloud-eu", "cloud-us")
    return [
        node(
            f"node-{i:05d}",
            "cloud-h100",
            domains[i % 3],
            "H100-80G",
            [float((i * 7 + g * 13) % 100) for g in range(gpus_per_node)],
            in_flight=i % 17,
            seed=i,
        )
        for i in range(count)
    ]
