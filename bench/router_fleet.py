"""The heterogeneous-fleet part of bench/router.py: TTFT per routing strategy at 80 % load.

The fleet: 2 x H100, 2 x A100 and 2 x L4 runtime simulators (agent/sim/, realistic speeds:
time scale 1 unless `--fleet-time-scale` says otherwise) with their real agents, in one
`infermesh fleet` process on the load core, all in one zone of one domain (no WAN delay: what
separates the strategies is how they treat a 10x spread in speed). Each node batches up to
`--fleet-max-seqs` sequences (vLLM's max_num_seqs); the rest wait in its queue.

The work: streamed chat completions, `FLEET_MAX_TOKENS` tokens each, whose prompt is one of
`PREFIX_GROUPS` long system prompts (~330 tokens, shared: a prefix cache hit) and a short user
message of its own. Every strategy gets the same requests at the same moments (seeded).

Capacity: every node driven directly, closed loop, 2 x max_num_seqs requests each at once (the
batch full and as many waiting); the fleet's capacity is the sum of their request rates. "80 %
load" is open-loop Poisson arrivals at 0.8 x that rate. A strategy that keeps sending a slow
node more than it can do builds a queue that grows for the whole window; requests still
waiting when the drain ends count with the time they had waited (a lower bound).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
from harness import Sample  # bench/ is on sys.path
from router_load import Target, Window, closed_loop, open_loop, post

FLEET_MODEL = "hetero@1"
FLEET_ENDPOINT = "bench-hetero"
FLEET_DOMAIN = "bench-fleet"
FLEET_MAX_TOKENS = 32
PREFIX_GROUPS = 16
OUR_STRATEGIES = (
    "baseline_rr@1.0",
    "least_queue@1.0",
    "power_of_two@1.0",
    "prefix_affinity@1.0",
    "hybrid_mesh@1.0",
)
# (fleet group, simulator profile, NodeClass GPU, VRAM GB)
PROFILES = (
    ("h100", "H100", "H100-80G", 80),
    ("a100", "A100", "A100-80G", 80),
    ("l4", "L4", "L4-24G", 24),
)
_TEXT = (
    "the of and to in is it that for you was with on as have be at not this but they from or by "
    "one had all word were there can an use each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write"
)
_WORDS = _TEXT.split()


def fleet_yaml(max_seqs: int, per_profile: int = 2) -> str:
    groups, classes = [], []
    for group, profile, gpu, vram in PROFILES:
        groups.append(
            f"    - {{ name: {group}, count: {per_profile}, nodeClass: bench-{group}, "
            f"domain: {FLEET_DOMAIN}, region: eu-west, zone: eu-west-1a, model: {FLEET_MODEL}, "
            f"profile: {profile}, maxNumSeqs: {max_seqs} }}"
        )
        classes.append(
            f"---\napiVersion: v1\nkind: NodeClass\nmetadata: {{ name: bench-{group} }}\nspec:\n"
            f"  hardware: {{ gpu: {gpu}, gpuCount: 1, vramGB: {vram} }}\n"
            "  environment: { kind: cloud }\n"
        )
    return (
        "apiVersion: v1\nkind: Fleet\nmetadata: { name: bench-hetero }\nspec:\n  groups:\n"
        + "\n".join(groups)
        + f"\n---\napiVersion: v1\nkind: Domain\nmetadata: {{ name: {FLEET_DOMAIN} }}\n"
        "spec: { residency: { region: EU } }\n"
        + "".join(classes)
        + f"---\napiVersion: v1\nkind: Model\nmetadata: {{ name: {FLEET_MODEL} }}\n"
    )


def write_fleet_file(workdir: Path, max_seqs: int) -> Path:
    path = workdir / "hetero-fleet.yaml"
    path.write_text(fleet_yaml(max_seqs))
    return path


def endpoint(strategy: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoint",
        "metadata": {"name": FLEET_ENDPOINT, "project": "default"},
        "spec": {
            "modelRef": FLEET_MODEL,
            "domains": [{"name": FLEET_DOMAIN, "weight": 100}],
            "strategy": {"ref": strategy},
            "auth": {"required": True},
        },
    }


class Workload:
    """Request bodies by number: the same number gives the same prompt, for every target."""

    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.systems = [
            f"You are assistant {g}. " + " ".join(rng.choice(_WORDS) for _ in range(300))
            for g in range(PREFIX_GROUPS)
        ]
        self.seed = seed

    def body(self, model: str, i: int) -> bytes:
        rng = random.Random(self.seed * 1_000_003 + i)
        system = self.systems[rng.randrange(PREFIX_GROUPS)]
        user = " ".join(rng.choice(_WORDS) for _ in range(12)) + f" (request {i})"
        return json.dumps(
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                "max_tokens": FLEET_MAX_TOKENS,
                "stream": True,
            }
        ).encode()


# -- the runtimes' own view -----------------------------------------------------------------------
def runtime_counters(runtimes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per node, from its simulator's /metrics: running, waiting, finished requests and prefix
    cache queries/hits (tokens)."""
    names = {
        "vllm:num_requests_running": "running",
        "vllm:num_requests_waiting": "waiting",
        "vllm:request_success_total": "finished",
        "vllm:prefix_cache_queries_total": "cache_queries",
        "vllm:prefix_cache_hits_total": "cache_hits",
    }
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(timeout=5) as http:
        for node in runtimes:
            counts = dict.fromkeys(names.values(), 0.0)
            for line in http.get(f"{node['runtime']}/metrics").text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in names:
                    counts[names[name]] += float(line.rsplit(" ", 1)[1])
            out[node["node"]] = counts
    return out


def wait_fleet_idle(runtimes: list[dict[str, Any]], timeout: float = 90.0) -> float:
    """Until no simulator runs or queues anything (the last strategy's backlog is gone);
    returns the seconds it took."""
    started = time.monotonic()
    while True:
        counts = runtime_counters(runtimes)
        if all(c["running"] + c["waiting"] == 0 for c in counts.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            busy = {n: c["running"] + c["waiting"] for n, c in counts.items() if c["running"]}
            raise RuntimeError(f"the fleet is still busy after {timeout:.0f} s: {busy}")
        time.sleep(0.5)


def deltas(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Requests each node finished over a window, and the fleet's prefix cache hit rate."""
    share = {n: after[n]["finished"] - before[n]["finished"] for n in after}
    queries = sum(after[n]["cache_queries"] - before[n]["cache_queries"] for n in after)
    hits = sum(after[n]["cache_hits"] - before[n]["cache_hits"] for n in after)
    total = sum(share.values()) or 1.0
    return {
        "finished_by_node": {n: int(v) for n, v in share.items()},
        "share_by_node_pct": {n: round(100 * v / total, 1) for n, v in share.items()},
        "prefix_cache_hit_pct": round(100 * hits / queries, 1) if queries else None,
    }


# -- measurements ---------------------------------------------------------------------------------
async def capacity(
    runtimes: list[dict[str, Any]],
    workload: Workload,
    max_seqs: int,
    warmup: float,
    window: float,
    sample: Sample,
) -> dict[str, Any]:
    """Every node at once, directly, closed loop at 2 x max_num_seqs each."""
    ports = [int(n["runtime"].rsplit(":", 1)[1]) for n in runtimes]
    target = Target(
        "fleet direct", ports, lambda port, i: _fleet_post(workload, FLEET_MODEL, i, port)
    )
    before = runtime_counters(runtimes)
    result = await closed_loop(target, 2 * max_seqs * len(ports), window, warmup, sample)
    after = runtime_counters(runtimes)
    spread = deltas(before, after)
    per_node = {
        n: round(v / (window + warmup), 2) for n, v in spread["finished_by_node"].items()
    }  # finished over the whole run: every node was saturated from the first second
    return {
        "concurrency_per_node": 2 * max_seqs,
        "requests_per_s": round(result.ok / result.duration_s, 1),
        "per_node_requests_per_s": per_node,
        "ttft_ms": result.to_json()["ttft_ms"],
        "errors": sum(result.errors.values()),
        "cpu_percent": result.cpu,
    }


def _fleet_post(
    workload: Workload, model: str, i: int, port: int, token: str | None = None
) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return post("/v1/chat/completions", workload.body(model, i), port, headers)


def fleet_target(name: str, port: int, workload: Workload, model: str, token: str | None) -> Target:
    return Target(name, [port], lambda p, i: _fleet_post(workload, model, i, p, token))


async def at_load(
    target: Target,
    runtimes: list[dict[str, Any]],
    rate: float,
    warmup: float,
    window: float,
    drain: float,
    sample: Sample,
    seed: int,
) -> tuple[Window, dict[str, Any]]:
    """Open loop at `rate`/s; the window's TTFTs and how the runtimes shared the work."""
    before = runtime_counters(runtimes)
    result = await open_loop(target, rate, window, warmup, sample, seed=seed, drain_s=drain)
    after = runtime_counters(runtimes)
    return result, deltas(before, after)


async def confirm_strategy(router_url: str, token: str, strategy: str, timeout: float = 20) -> None:
    """Until our router plans with `strategy` (its view has the applied Endpoint)."""
    body = json.loads(Workload().body(FLEET_ENDPOINT, 0))
    headers = {"Authorization": f"Bearer {token}", "X-InferMesh-Explain": "1"}
    deadline = time.monotonic() + timeout
    seen = None
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            resp = await http.post(f"{router_url}/v1/chat/completions", json=body, headers=headers)
            if resp.status_code == 200:
                seen = resp.json().get("strategy")
                if seen == strategy:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the router still plans with {seen!r}, not {strategy!r}")
