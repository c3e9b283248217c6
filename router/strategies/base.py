"""The strategy interface: `decide(ctx, candidates, live) -> Decision`, a pure function.

Built-ins and plugins (Python entry points, group `infermesh.strategies`) implement the same
`RoutingStrategy` protocol. A decision ranks the candidates, may carry a hedge plan and an admit
verdict, and can explain itself. Candidate columns are numpy arrays built once per view change, so
a strategy scores 1,000 replicas in a few vectorised operations instead of a Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite
from typing import Any, ClassVar, Protocol

import numpy as np

from infermesh.agent.sim.wan import Location
from infermesh.router.replica import Replica

# Up to this many candidates a decision ranks them all; above it only the best `rank_depth`
# (a full sort of 1,000 scores and a 1,000-long tuple would cost more than the scoring).
FULL_RANK_MAX = 64
_ARGMIN_MAX = 12  # up to this many passes, repeated argmin is cheaper than a partition


class StrategyError(ValueError):
    """A strategy cannot be resolved or configured; the message names the strategy and the
    param or entry point at fault. The router turns it into a condition and a log line."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the router knows about one request when it decides."""

    endpoint: str
    project: str
    tenant: str
    revision: str  # the model revision the traffic split chose
    origin: Location | None = None  # where the caller is (X-Domain-Hint); None: local
    preferred_domain: str | None = None  # drawn from the endpoint's domain weights
    prefix_key: int | None = None  # hash of the prompt's first block (prefix affinity)
    session_key: int | None = None  # hash of the session (X-Session-Id or `user`)
    prompt_tokens: int = 0  # estimate
    max_tokens: int = 16
    slo_ttft_ms: float | None = None
    explain: bool = False
    relax_cost: bool = False  # an SLO is burning: price is no reason to pass a replica over


class CandidateSet:
    """The replicas a request may go to, with their telemetry as columns (same order).

    Built once per view change; strategies must not mutate it. `domain_regions` (domain ->
    region) tells the network pricing where an origin's domain is; the router passes the whole
    fleet's, else it is learnt from these replicas.
    """

    __slots__ = (
        "_by_origin",
        "_memo",
        "agent_load",
        "domain_regions",
        "domains",
        "ecc",
        "generation_tps",
        "kv",
        "loaded",
        "location_index",
        "locations",
        "price",
        "replicas",
        "running",
        "slots",
        "temp",
        "throttled",
        "ttft_p50_ms",
        "waiting",
    )

    def __init__(
        self, replicas: Sequence[Replica], domain_regions: Mapping[str, str] | None = None
    ) -> None:
        self.replicas: tuple[Replica, ...] = tuple(replicas)
        rs = self.replicas
        self.slots = np.fromiter((r.slot for r in rs), dtype=np.int64, count=len(rs))
        self.running = _col(r.running for r in rs)
        self.waiting = _col(r.waiting for r in rs)
        # What the agent last saw queued or running; int64 like LiveState.inflight so that
        # fusing the two is one np.maximum without a dtype conversion.
        self.agent_load = np.fromiter(
            (r.running + r.waiting for r in rs), dtype=np.int64, count=len(rs)
        )
        self.kv = _col(r.kv_cache_usage for r in rs)  # nan: not reported
        self.generation_tps = _col(r.generation_tokens_per_s for r in rs)  # nan: not reported
        self.ttft_p50_ms = _col(r.ttft_p50_ms for r in rs)  # nan: not reported
        self.price = _col(r.price_per_gpu_hour for r in rs)  # nan: unknown
        self.temp = _col(r.max_temp_c for r in rs)  # nan: unknown
        self.ecc = _col(r.ecc_dbe for r in rs)
        self.throttled = _col(r.throttled for r in rs)
        self.loaded = _col(r.loaded for r in rs)
        self.domains: tuple[str | None, ...] = tuple(r.domain for r in rs)
        # Distinct locations, and each candidate's index into them: a fleet has few places, so
        # link classes are worked out per place, not per replica.
        places: dict[tuple[str | None, str | None, str | None], int] = {}
        self.location_index = np.fromiter(
            (places.setdefault((r.domain, r.region, r.zone), len(places)) for r in rs),
            dtype=np.int64,
            count=len(rs),
        )
        self.locations: tuple[Location, ...] = tuple(Location(*place) for place in places)
        if domain_regions is None:
            domain_regions = {r.domain: r.region for r in rs if r.domain and r.region}
        self.domain_regions: Mapping[str, str] = dict(domain_regions)
        self._by_origin: dict[Location | None, Any] = {}  # per-origin cache owned by network.py
        self._memo: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.replicas)

    def origin_cache(self) -> dict[Location | None, Any]:
        return self._by_origin

    def memo(self) -> dict[Any, Any]:
        """Per-strategy precomputation over this set (keyed by the strategy instance, so one
        entry per (set, params)); lives and dies with the set."""
        return self._memo


def _col(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


@dataclass(slots=True)
class LiveState:
    """The router's own per-replica numbers, indexed by `Replica.slot`; shared, mutable, read by
    strategies without copying. `inflight` is what this router has sent and not yet finished."""

    inflight: np.ndarray  # int64
    starting: np.ndarray  # int64: of those, the ones still waiting for their first byte
    ttft_p95_ms: np.ndarray  # float64, nan until the router has seen enough requests
    ejected: np.ndarray  # bool: the circuit breaker has taken the replica out
    # float64 moving averages (router/replica_speed.py), nan until learnt: the TTFT of requests
    # that found no queue, and first byte to last of whole answers
    base_ttft_ms: np.ndarray
    decode_ms: np.ndarray
    rtt_ms: Mapping[str, float] = field(default_factory=dict)  # per link class

    @classmethod
    def sized(cls, n: int, rtt_ms: Mapping[str, float]) -> LiveState:
        return cls(
            inflight=np.zeros(n, dtype=np.int64),
            starting=np.zeros(n, dtype=np.int64),
            ttft_p95_ms=np.full(n, np.nan),
            ejected=np.zeros(n, dtype=bool),
            base_ttft_ms=np.full(n, np.nan),
            decode_ms=np.full(n, np.nan),
            rtt_ms=dict(rtt_ms),
        )


@dataclass(frozen=True, slots=True)
class HedgePlan:
    """Send to `targets` (indices into the candidates, in order) after `delay_ms` each."""

    targets: tuple[int, ...]
    delay_ms: float


@dataclass(frozen=True, slots=True)
class Decision:
    ranked: tuple[int, ...]  # indices into the CandidateSet, best first; empty: nowhere to go
    strategy: str
    hedge: HedgePlan | None = None
    admit: bool = True  # False: the strategy sheds this request (429)
    reason: str = ""  # why not admitted, or a note
    # Per candidate (same order as the CandidateSet): its score parts, only when ctx.explain.
    explain: tuple[dict[str, float], ...] | None = None


class RoutingStrategy(Protocol):
    """One routing strategy, configured with its Strategy object's params."""

    name: ClassVar[str]
    network_aware: ClassVar[bool]  # True: it prices WAN distance itself (no domain tiering)

    def decide(
        self, ctx: RequestContext, candidates: CandidateSet, live: LiveState
    ) -> Decision: ...


# Helpers the built-ins share -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """One tunable of a built-in: its default (its type is the param's type) and its minimum."""

    default: float | int | None
    minimum: float = 0.0
    integer: bool = False


RANK_DEPTH = Param(4, minimum=1, integer=True)


def parse_params(
    strategy: str, spec: Mapping[str, Param], given: Mapping[str, Any]
) -> dict[str, Any]:
    """The defaults overlaid with `given`, checked; a StrategyError names the param at fault."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise StrategyError(
            f"{strategy}: unknown param {unknown[0]!r}; it takes "
            f"{', '.join(sorted(spec)) or 'no params'}"
        )
    values: dict[str, Any] = {name: p.default for name, p in spec.items()}
    for name, value in given.items():
        p = spec[name]
        if value is None and p.default is None:
            continue
        wanted = "an integer" if p.integer else "a finite number"
        typed = isinstance(value, int) if p.integer else isinstance(value, int | float)
        if not typed or isinstance(value, bool) or not _finite(value):
            raise StrategyError(f"{strategy}: param {name!r} must be {wanted}, not {value!r}")
        if value < p.minimum:
            raise StrategyError(f"{strategy}: param {name!r} must be >= {p.minimum:g}, not {value}")
        values[name] = int(value) if p.integer else float(value)
    return values


def _finite(value: float) -> bool:
    try:
        return isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def fused_load(candidates: CandidateSet, live: LiveState) -> np.ndarray:
    """Requests queued or running per candidate: the agent's last report or, when it lags, what
    this router itself has in flight there (whichever is larger)."""
    return np.maximum(candidates.agent_load, live.inflight[candidates.slots])


def rank(score: np.ndarray, depth: int, ejected: np.ndarray | None = None) -> tuple[int, ...]:
    """Candidate indices by ascending score: all of them up to FULL_RANK_MAX candidates, else
    the best `depth` in order. Ejected candidates are left out unless every one is ejected (a
    request still needs somewhere to go). `score` (finite) is not modified."""
    n = len(score)
    n_ejected = 0 if ejected is None else int(np.count_nonzero(ejected))
    if n_ejected == n:
        n_ejected, ejected = 0, None
    if n <= FULL_RANK_MAX:
        if n_ejected:
            score = np.where(ejected, np.inf, score)
        return tuple(np.argsort(score, kind="stable")[: n - n_ejected].tolist())
    k = min(depth, n - n_ejected)
    if k <= _ARGMIN_MAX:
        # A few argmin passes beat np.argpartition (and a sort of its result) by half; an
        # ejected candidate that comes up costs a pass. Too many of those: partition after all.
        work = score.astype(np.float64)  # a copy, and room for inf when the scores are ints
        best: list[int] = []
        for _ in range(_ARGMIN_MAX):
            i = int(work.argmin())
            work[i] = np.inf
            if ejected is None or not ejected[i]:
                best.append(i)
                if len(best) == k:
                    return tuple(best)
    if n_ejected:
        score = np.where(ejected, np.inf, score)
    top = np.argpartition(score, k - 1)[:k]
    return tuple(top[np.argsort(score[top], kind="stable")].tolist())


def explain_rows(columns: Mapping[str, np.ndarray]) -> tuple[dict[str, float], ...]:
    """Decision.explain from named per-candidate columns: one {name: value} per candidate."""
    values = [np.asarray(c, dtype=np.float64).tolist() for c in columns.values()]
    return tuple(dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True))


class BuiltinStrategy:
    """What the built-ins share: params checked at construction (a StrategyError names an
    unknown or bad one) and `rank_depth`, how many candidates a decision over more than
    FULL_RANK_MAX ranks. Instances hash by identity: one memo entry per (CandidateSet, params)."""

    name: ClassVar[str]
    network_aware: ClassVar[bool] = False
    PARAMS: ClassVar[Mapping[str, Param]] = {"rank_depth": RANK_DEPTH}

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = parse_params(self.name, self.PARAMS, params)
        self.rank_depth: int = self.params["rank_depth"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"
