"""`hybrid_mesh`: one explainable score per candidate, in milliseconds, lower is better.

    total = queue_ms + jitter_ms + ttft_ms + kv + network_ms + cold + health + cost

- ttft_ms: the replica's TTFT without queueing: this router's average over requests that found
  no queue there (router/replica_speed.py), else the agent's p50, else `default_ttft_ms`. A
  slow node shows here; queueing does not (it is the next term's, and counting it twice made
  traffic swing between replicas).
- queue_ms = ahead x service_ms, the wait before this request's first token. A continuous-
  batching runtime starts a request at once while a batch slot is free, else it waits for
  answers to finish, one every service_ms = (ttft_ms + decode_ms) / slots (a request holds its
  slot for its prefill, then its decode). `ahead`: the requests before this one, load + 1 -
  slots, or this router's requests there still waiting for their first byte if more (queued,
  or being prefilled with a burst; a non-streamed answer's first byte is its last, so such
  traffic counts whole), or 0. load: the agent's running + waiting or this router's in-flight
  count there, the larger.
  slots: the most requests any candidate has been seen running at once (`Replica.peak_running`;
  one figure for all, at least 1: replicas of a revision usually share a batch configuration,
  and one never caught full would otherwise look small and be starved; one that batches less
  still shows its queue through the requests waiting for their first byte). decode_ms: this
  router's average first-to-last-byte time of the replica's answers, else max_tokens at the
  GPU's per-sequence decode speed (DECODE_TPS, else `default_decode_tps`).
- jitter_ms: uniform in [0, `jitter`) x service_ms. Scores closer than that are a toss-up, so a
  burst of requests (or routers reading the same stale report) spreads over equal replicas
  instead of herding onto the first; a replica worse by more than that is never preferred.
- kv: `kv_weight` x kv^2 / (1 - kv), capped at `kv_cap_ms`: nothing at a half-full cache, steep
  as it nears full (preemption and recompute ahead).
- network_ms: the RTT of the link class from the request's origin x `net_penalty`.
- cold: `cold_penalty` x `cold_start_ms` when the model is not loaded yet.
- health: `hot_ms_per_c` per degree over `hot_c`, `throttle_ms` when throttled, `ecc_ms`
  (effectively never) with double-bit ECC errors.
- cost: price per GPU-hour x `cost_weight` (ms per $/GPU-hour): a tie-breaker by default.

Everything but the queue, jitter, TTFT and network parts is fixed for a CandidateSet; it is summed
once per (set, params), and once per origin with the network part, so a decision over 1,000
replicas is a couple of dozen vectorised operations.
"""

from __future__ import annotations

import random
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

# Tokens/s one sequence gets in a busy batch, per GPU type: the decode time a replica is assumed
# to take before this router has seen it answer; in line with the simulator's profiles
# (agent/sim/profiles.py). Matched as substrings of the GPU name, most specific first.
DECODE_TPS: tuple[tuple[str, float], ...] = (
    ("H200", 170.0),
    ("H100", 140.0),
    ("A100", 80.0),
    ("L40S", 45.0),
    ("A10", 25.0),
    ("L4", 16.0),
)
_MAX_TOKENS_CACHE = 64  # max_tokens values remembered per (CandidateSet, params)
# A decision's jitter is a window into a per-set pool of draws, at a random offset: a fresh
# draw of 1,000 numbers would cost 3 µs, a sixth of the decision.
_POOL_OFFSETS = 1024
FEW_MAX = 8  # candidate sets up to this size are scored in plain Python (`_decide_few`)
_EPS = 1e-3  # keeps the KV term finite at a full cache (the cap applies anyway)


def decode_tps(gpu: str | None, default: float) -> float:
    name = (gpu or "").upper()
    return next((tps for key, tps in DECODE_TPS if key in name), default)


@dataclass(slots=True)
class _Prepared:
    """The per-(CandidateSet, params) parts of the score."""

    slots: int  # batch slots per replica (at least 1)
    inv_slots: float
    ms_per_token: np.ndarray  # the assumed decode time per output token
    ttft_fallback: np.ndarray  # the agent's TTFT p50, else the default
    kv: np.ndarray
    cold: np.ndarray
    health: np.ndarray
    cost: np.ndarray
    fixed: np.ndarray  # kv + cold + health + cost
    noise: np.ndarray  # uniform in [0, jitter), len(candidates) + _POOL_OFFSETS of them
    # max_tokens -> ms_per_token x max_tokens: the few distinct values clients send
    assumed_decode_ms: dict[int, np.ndarray] = field(default_factory=dict)
    # origin -> (the OriginNetwork it was built from, fixed + network part)
    by_origin: dict[Location | None, tuple[OriginNetwork, np.ndarray]] = field(default_factory=dict)
    few: _Few | None = None  # the same parts as Python lists, for sets of up to FEW_MAX


@dataclass(slots=True)
class _Few:
    """A small set's parts as lists: over a handful of candidates a numpy operation costs more
    than the arithmetic, and at low load each one also runs from cold caches."""

    slots: list[int]
    agent_load: list[float]
    ttft_fallback: list[float]
    noise: list[float]
    cost: list[float]
    ms_per_token: list[float]
    by_origin: dict[Location | None, tuple[np.ndarray, list[float]]] = field(default_factory=dict)


def _learnt_else(learnt: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """`learnt` (this decision's copy) with `fallback` where nothing is learnt yet (nan)."""
    np.putmask(learnt, np.isnan(learnt), fallback)
    return learnt


class HybridMesh(BuiltinStrategy):
    """Scores every candidate in ms-equivalents (see the module docstring); lowest first.
    `seed` makes the jitter repeatable (tests); by default it is not."""

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
        "default_decode_tps": Param(50.0, minimum=0.1),
        "jitter": Param(0.25),
        "seed": Param(None, integer=True),
    }

    few_max = FEW_MAX  # tests set 0 to compare the two paths

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._net_penalty: float = self.params["net_penalty"]
        self._jitter: float = self.params["jitter"]
        self._rng = np.random.default_rng(self.params["seed"])
        self._offsets = random.Random(self.params["seed"])

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
        if len(candidates) <= self.few_max and not ctx.explain:
            return self._decide_few(ctx, candidates, live, prep, hit[1])
        assumed = prep.assumed_decode_ms.get(ctx.max_tokens)
        if assumed is None:
            if len(prep.assumed_decode_ms) >= _MAX_TOKENS_CACHE:
                prep.assumed_decode_ms.clear()
            assumed = prep.assumed_decode_ms[ctx.max_tokens] = prep.ms_per_token * ctx.max_tokens
        # In place where the arrays are this decision's own (fancy indexing copies): each pass
        # over 1,000 candidates saved counts.
        slots = candidates.slots
        ttft = _learnt_else(live.base_ttft_ms[slots], prep.ttft_fallback)
        service = _learnt_else(live.decode_ms[slots], assumed)
        service += ttft
        service *= prep.inv_slots
        ahead = live.inflight[slots]
        np.maximum(ahead, candidates.agent_load, out=ahead)  # the load
        ahead += 1 - prep.slots
        np.maximum(ahead, live.starting[slots], out=ahead)  # so never below 0
        offset = self._offsets.randrange(_POOL_OFFSETS)
        noise = prep.noise[offset : offset + len(slots)]
        total = ahead + noise
        total *= service
        total += ttft
        total += hit[1]
        if ctx.relax_cost:
            total -= prep.cost
        ejected = live.ejected[slots]
        ranked = rank(total, self.rank_depth, ejected)
        explain = None
        if ctx.explain:
            decode = _learnt_else(live.decode_ms[slots], assumed)
            parts = {"load": np.maximum(candidates.agent_load, live.inflight[slots])}
            parts |= {"slots": np.full(len(slots), prep.slots), "ahead": ahead}
            parts |= {"decode_ms": decode, "service_ms": service, "queue_ms": ahead * service}
            parts |= {"jitter_ms": noise * service, "ttft_ms": ttft}
            explain = self._explain(prep, net, parts, ejected, total)
        return Decision(ranked, self.name, explain=explain)

    def _decide_few(
        self,
        ctx: RequestContext,
        candidates: CandidateSet,
        live: LiveState,
        prep: _Prepared,
        fixed_net: np.ndarray,
    ) -> Decision:
        """`decide` for a few candidates, in plain Python: the same score, term by term."""
        few = prep.few
        if few is None:
            few = prep.few = _Few(
                *(
                    a.tolist()
                    for a in (
                        candidates.slots,
                        candidates.agent_load,
                        prep.ttft_fallback,
                        prep.noise,
                        prep.cost,
                        prep.ms_per_token,
                    )
                )
            )
        cached = few.by_origin.get(ctx.origin)
        if cached is None or cached[0] is not fixed_net:
            cached = few.by_origin[ctx.origin] = (fixed_net, fixed_net.tolist())
        fixed = cached[1]
        base, decode, inflight, starting = (
            live.base_ttft_ms,
            live.decode_ms,
            live.inflight,
            live.starting,
        )
        offset = self._offsets.randrange(_POOL_OFFSETS)
        less_slots, inv_slots, max_tokens = 1 - prep.slots, prep.inv_slots, ctx.max_tokens
        relax = ctx.relax_cost
        total = []
        for i, slot in enumerate(few.slots):
            ttft = base.item(slot)
            if ttft != ttft:  # nan: nothing learnt
                ttft = few.ttft_fallback[i]
            service = decode.item(slot)
            if service != service:
                service = few.ms_per_token[i] * max_tokens
            service = (service + ttft) * inv_slots
            ahead = max(
                max(inflight.item(slot), few.agent_load[i]) + less_slots, starting.item(slot)
            )
            score = (ahead + few.noise[offset + i]) * service + ttft + fixed[i]
            total.append(score - few.cost[i] if relax else score)
        ejected = [bool(live.ejected.item(slot)) for slot in few.slots]
        order = sorted(range(len(total)), key=total.__getitem__)
        if not all(ejected):
            order = [i for i in order if not ejected[i]]
        return Decision(tuple(order), self.name)

    def _prepare(self, candidates: CandidateSet) -> _Prepared:
        p = self.params
        rs = candidates.replicas
        # One figure for the set: replicas of a model revision usually share their batch
        # configuration, and one that has never been seen full should not look smaller. One
        # that batches less still shows its queue, in `starting`.
        slots = max((max(r.peak_running, r.running) for r in rs), default=0) or 1
        default_tps = p["default_decode_tps"]
        per_gpu = {g: 1000.0 / decode_tps(g, default_tps) for g in {r.gpu for r in rs}}
        ms_per_token = np.fromiter((per_gpu[r.gpu] for r in rs), np.float64, len(rs))
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
        return _Prepared(
            slots,
            1.0 / slots,
            ms_per_token,
            ttft_fallback,
            kv,
            cold,
            health,
            cost,
            fixed,
            self._rng.random(len(rs) + _POOL_OFFSETS) * self._jitter,
        )

    def _explain(
        self,
        prep: _Prepared,
        net: OriginNetwork,
        parts: dict[str, np.ndarray],
        ejected: np.ndarray,
        total: np.ndarray,
    ) -> tuple[dict[str, float], ...]:
        columns = parts | {
            "kv": prep.kv,
            "network_ms": net.rtt_ms * self._net_penalty,
            "cold": prep.cold,
            "health": prep.health,
            "cost": prep.cost,
            "ejected": ejected,
            "total": total,
        }
        return explain_rows(columns)
