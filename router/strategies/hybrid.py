"""`hybrid_mesh`: one explainable score per candidate, in milliseconds, lower is better.

    total = queue_ms + ttft_ms + kv + network_ms + cold + health + cost

- queue_ms: (fused load + this request) x max_tokens / the replica's generation capacity, in
  tokens/s: its observed throughput, or its GPU's nominal figure when that is higher (at low
  load the observed figure measures demand, not what the replica could do) or nothing is known.
- ttft_ms: this router's TTFT p95 for the replica, else the agent's p50, else `default_ttft_ms`.
  A slow replica shows here first.
- kv: `kv_weight` x kv^2 / (1 - kv), capped at `kv_cap_ms`: nothing at a half-full cache, steep
  as it nears full (preemption and recompute ahead).
- network_ms: the RTT of the link class from the request's origin x `net_penalty`.
- cold: `cold_penalty` x `cold_start_ms` when the model is not loaded yet.
- health: `hot_ms_per_c` per degree over `hot_c`, `throttle_ms` when throttled, `ecc_ms`
  (effectively never) with double-bit ECC errors.
- cost: price per GPU-hour x `cost_weight` (ms per $/GPU-hour): a tie-breaker by default.

Everything but the queue, TTFT and network parts is fixed for a CandidateSet; it is summed once
per (set, params), and once per origin with the network part, so a decision over 1,000 replicas
is a dozen vectorised operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from infermesh.agent.sim.wan import Location
from infermesh.router.strategies.base import (
    RANK_DEPTH,
    BuiltinStrategy,
    CandidateSet,
    Decision,
    LiveState,
    Param,
    RequestContext,
    explain_rows,
    rank,
)
from infermesh.router.strategies.network import ORIGIN_CACHE_MAX, OriginNetwork, origin_network

# Aggregate decode throughput (tokens/s) of a busy replica per GPU type, the floor of a
# replica's capacity estimate; in line with the simulator's profiles (agent/sim/profiles.py).
# Matched as substrings of the GPU name, most specific first (L40S before L4).
GPU_TPS: tuple[tuple[str, float], ...] = (
    ("H200", 9000.0),
    ("H100", 7000.0),
    ("A100", 3800.0),
    ("L40S", 2000.0),
    ("A10", 1000.0),
    ("L4", 700.0),
)
_MAX_TOKENS_CACHE = 64  # max_tokens values remembered per (CandidateSet, params)
_EPS = 1e-3  # keeps the KV term finite at a full cache (the cap applies anyway)


def gpu_tps(gpu: str | None, default: float) -> float:
    name = (gpu or "").upper()
    return next((tps for key, tps in GPU_TPS if key in name), default)


@dataclass(slots=True)
class _Prepared:
    """The per-(CandidateSet, params) parts of the score."""

    inv_capacity_ms: np.ndarray  # ms per generated token at the replica's capacity
    ttft_fallback: np.ndarray  # the agent's TTFT p50, else the default
    kv: np.ndarray
    cold: np.ndarray
    health: np.ndarray
    cost: np.ndarray
    fixed: np.ndarray  # kv + cold + health + cost
    # max_tokens -> inv_capacity_ms x max_tokens: the few distinct values clients send
    ms_per_request: dict[int, np.ndarray] = field(default_factory=dict)
    # origin -> (the OriginNetwork it was built from, fixed + network part)
    by_origin: dict[Location | None, tuple[OriginNetwork, np.ndarray]] = field(default_factory=dict)


class HybridMesh(BuiltinStrategy):
    """Scores every candidate in ms-equivalents (see the module docstring); lowest first."""

    name: ClassVar[str] = "hybrid_mesh@1.0"
    network_aware: ClassVar[bool] = True
    PARAMS: ClassVar[Mapping[str, Param]] = {
        "rank_depth": RANK_DEPTH,
        "net_penalty": Param(1.0),
        "cold_penalty": Param(0.2),
        "cold_start_ms": Param(5000.0),
        "kv_weight": Param(50.0),
        "kv_cap_ms": Param(5000.0),
        "hot_c": Param(83.0),
        "hot_ms_per_c": Param(50.0),
        "throttle_ms": Param(300.0),
        "ecc_ms": Param(1e6),
        "cost_weight": Param(1.0),
        "default_ttft_ms": Param(50.0),
        "default_tps": Param(1000.0, minimum=1.0),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._net_penalty: float = self.params["net_penalty"]

    def decide(self, ctx: RequestContext, candidates: CandidateSet, live: LiveState) -> Decision:
        prep: _Prepared | None = candidates.memo().get(self)
        if prep is None:
            prep = candidates.memo()[self] = self._prepare(candidates)
        net = origin_network(ctx.origin, candidates, live)
        hit = prep.by_origin.get(ctx.origin)
        if hit is None or hit[0] is not net:
            if len(prep.by_origin) >= ORIGIN_CACHE_MAX:
                prep.by_origin.clear()
            hit = prep.by_origin[ctx.origin] = (net, prep.fixed + net.rtt_ms * self._net_penalty)
        ms_per_request = prep.ms_per_request.get(ctx.max_tokens)
        if ms_per_request is None:
            if len(prep.ms_per_request) >= _MAX_TOKENS_CACHE:
                prep.ms_per_request.clear()
            ms_per_request = prep.ms_per_request[ctx.max_tokens] = (
                prep.inv_capacity_ms * ctx.max_tokens
            )
        slots = candidates.slots
        load = np.maximum(candidates.agent_load, live.inflight[slots])
        total = load * ms_per_request  # the requests ahead, then this one
        total += ms_per_request
        p95 = live.ttft_p95_ms[slots]
        total += np.where(np.isnan(p95), prep.ttft_fallback, p95)
        total += hit[1]
        ejected = live.ejected[slots]
        ranked = rank(total, self.rank_depth, ejected)
        explain = self._explain(ctx, prep, net, load, p95, ejected, total) if ctx.explain else None
        return Decision(ranked, self.name, explain=explain)

    def _prepare(self, candidates: CandidateSet) -> _Prepared:
        p = self.params
        default_tps = p["default_tps"]
        per_gpu = {g: gpu_tps(g, default_tps) for g in {r.gpu for r in candidates.replicas}}
        nominal = np.fromiter(
            (per_gpu[r.gpu] for r in candidates.replicas),
            dtype=np.float64,
            count=len(candidates),
        )
        observed = np.nan_to_num(candidates.generation_tps, nan=0.0)
        inv_capacity_ms = 1000.0 / np.maximum(observed, nominal)
        ttft = candidates.ttft_p50_ms
        ttft_fallback = np.where(np.isnan(ttft), p["default_ttft_ms"], ttft)
        kv_use = np.clip(np.nan_to_num(candidates.kv, nan=0.0), 0.0, 1.0)
        kv = np.minimum(p["kv_weight"] * kv_use**2 / (1.0 - kv_use + _EPS), p["kv_cap_ms"])
        cold = np.where(candidates.loaded == 0, p["cold_penalty"] * p["cold_start_ms"], 0.0)
        over = np.nan_to_num(candidates.temp - p["hot_c"], nan=0.0).clip(min=0.0)
        health = (
            over * p["hot_ms_per_c"]
            + (candidates.throttled > 0) * p["throttle_ms"]
            + (candidates.ecc > 0) * p["ecc_ms"]
        )
        cost = np.nan_to_num(candidates.price, nan=0.0) * p["cost_weight"]
        fixed = kv + cold + health + cost
        return _Prepared(inv_capacity_ms, ttft_fallback, kv, cold, health, cost, fixed)

    def _explain(
        self,
        ctx: RequestContext,
        prep: _Prepared,
        net: OriginNetwork,
        load: np.ndarray,
        p95: np.ndarray,
        ejected: np.ndarray,
        total: np.ndarray,
    ) -> tuple[dict[str, float], ...]:
        columns = {
            "load": load,
            "queue_ms": (load + 1) * prep.inv_capacity_ms * ctx.max_tokens,
            "ttft_ms": np.where(np.isnan(p95), prep.ttft_fallback, p95),
            "kv": prep.kv,
            "network_ms": net.rtt_ms * self._net_penalty,
            "cold": prep.cold,
            "health": prep.health,
            "cost": prep.cost,
            "ejected": ejected,
            "total": total,
        }
        return explain_rows(columns)
