"""The classic built-ins: round robin, least queue, power of two choices, prefix affinity.

None of them prices the network (`network_aware = False`): the router tiers their candidates by
domain itself. Each leaves ejected replicas out of its ranking unless all are ejected.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from infermesh.router.strategies.base import (
    FULL_RANK_MAX,
    RANK_DEPTH,
    BuiltinStrategy,
    CandidateSet,
    Decision,
    LiveState,
    Param,
    RequestContext,
    explain_rows,
    fused_load,
    rank,
)

_MASK64 = (1 << 64) - 1


def _explain_load(
    load: np.ndarray, ejected: np.ndarray, **extra: np.ndarray
) -> tuple[dict[str, float], ...]:
    return explain_rows({"load": load, "ejected": ejected, **extra})


def _usable(ejected: np.ndarray) -> np.ndarray | None:
    """Indices of the candidates not ejected; None when that is all of them, or none of them
    (then every candidate stays usable: a request still needs somewhere to go)."""
    if not ejected.any() or ejected.all():
        return None
    return np.flatnonzero(~ejected)


class BaselineRR(BuiltinStrategy):
    """Round robin over the candidates that are not ejected."""

    name: ClassVar[str] = "baseline_rr@1.0"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._turn = itertools.count()  # next() is atomic in CPython: safe across threads

    def decide(self, ctx: RequestContext, candidates: CandidateSet, live: LiveState) -> Decision:
        n = len(candidates)
        if n == 0:
            return Decision((), self.name, reason="no candidates")
        ejected = live.ejected[candidates.slots]
        usable = _usable(ejected)
        pool = n if usable is None else len(usable)
        depth = pool if pool <= FULL_RANK_MAX else min(self.rank_depth, pool)
        start = next(self._turn)
        picks = [(start + i) % pool for i in range(depth)]
        ranked = tuple(picks) if usable is None else tuple(usable[picks].tolist())
        explain = _explain_load(fused_load(candidates, live), ejected) if ctx.explain else None
        return Decision(ranked, self.name, explain=explain)


class LeastQueue(BuiltinStrategy):
    """The replica with the fewest requests queued or running (agent report and this router's
    in-flight count fused)."""

    name: ClassVar[str] = "least_queue@1.0"

    def decide(self, ctx: RequestContext, candidates: CandidateSet, live: LiveState) -> Decision:
        load = fused_load(candidates, live)
        ejected = live.ejected[candidates.slots]
        ranked = rank(load, self.rank_depth, ejected)
        return Decision(
            ranked, self.name, explain=_explain_load(load, ejected) if ctx.explain else None
        )


class PowerOfTwo(BuiltinStrategy):
    """The less loaded of two random candidates, then (for retries) a few more at random.
    `seed` makes the draws repeatable (tests); by default they are not."""

    name: ClassVar[str] = "power_of_two@1.0"
    PARAMS: ClassVar[Mapping[str, Param]] = {
        "rank_depth": RANK_DEPTH,
        "seed": Param(None, integer=True),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._rng = random.Random(self.params["seed"])

    def decide(self, ctx: RequestContext, candidates: CandidateSet, live: LiveState) -> Decision:
        n = len(candidates)
        if n == 0:
            return Decision((), self.name, reason="no candidates")
        ejected = live.ejected[candidates.slots]
        usable = _usable(ejected)
        pool = n if usable is None else len(usable)
        depth = pool if pool <= FULL_RANK_MAX else min(self.rank_depth, pool)
        rng = self._rng
        a = rng.randrange(pool)
        picks = [a]
        if pool > 1:
            b = rng.randrange(pool - 1)
            b += b >= a  # two distinct draws without building a population
            picks.append(b)
            # Retry targets: the next ones after a random start (not load-ordered: that would
            # cost the full scan power of two avoids).
            start = rng.randrange(pool)
            j = 0
            while len(picks) < depth:
                i = (start + j) % pool
                if i != a and i != b:
                    picks.append(i)
                j += 1
        idx = picks if usable is None else usable[picks].tolist()
        slots, agent, inflight = candidates.slots, candidates.agent_load, live.inflight
        first, second = idx[0], idx[1] if len(idx) > 1 else idx[0]
        if max(agent[second], inflight[slots[second]]) < max(agent[first], inflight[slots[first]]):
            idx[0], idx[1] = second, first
        explain = _explain_load(fused_load(candidates, live), ejected) if ctx.explain else None
        return Decision(tuple(idx), self.name, explain=explain)


class PrefixAffinity(BuiltinStrategy):
    """Bounded-load rendezvous hashing: a prompt prefix (else a session) always lands on the
    same replica, where its KV cache is likeliest to be, unless that replica holds more than
    `max_load_factor` x the mean load + 1; then it goes to the next replica in its own hash
    order, so the overflow of one key is consistent too. No key: least queue."""

    name: ClassVar[str] = "prefix_affinity@1.0"
    PARAMS: ClassVar[Mapping[str, Param]] = {
        "rank_depth": RANK_DEPTH,
        "max_load_factor": Param(1.5, minimum=1.0),
    }

    def decide(self, ctx: RequestContext, candidates: CandidateSet, live: LiveState) -> Decision:
        load = fused_load(candidates, live)
        ejected = live.ejected[candidates.slots]
        key = ctx.prefix_key if ctx.prefix_key is not None else ctx.session_key
        if key is None or len(candidates) == 0:
            ranked = rank(load, self.rank_depth, ejected)
            explain = _explain_load(load, ejected) if ctx.explain else None
            return Decision(ranked, self.name, reason="no prefix or session key", explain=explain)
        hashes = candidates.memo().get(PrefixAffinity)
        if hashes is None:
            hashes = candidates.memo()[PrefixAffinity] = _replica_hashes(candidates)
        # Rendezvous weight in [0, 1] from a per-(key, replica) hash; lower is better.
        weight = _mix(hashes ^ np.uint64(_mix_int(key))) * 2.0**-64
        n, n_ejected = len(load), int(np.count_nonzero(ejected))
        if 0 < n_ejected < n:  # the mean load of the replicas that can take the request
            mean = (int(load.sum()) - int(load[ejected].sum())) / (n - n_ejected)
        else:
            mean = float(load.mean())
        over = load > self.params["max_load_factor"] * mean + 1
        # Over the bound: after all the others (weights are at most 1), still in hash order.
        ranked = rank(weight + 2.0 * over, self.rank_depth, ejected)
        explain = (
            _explain_load(load, ejected, over_bound=over, affinity=1.0 - weight)
            if ctx.explain
            else None
        )
        return Decision(ranked, self.name, explain=explain)


def _replica_hashes(candidates: CandidateSet) -> np.ndarray:
    """A stable 64-bit hash per replica (node and runtime URL): every router, across restarts,
    sends a key to the same replica."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{r.node}\0{r.url}".encode(), digest_size=8).digest())
            for r in candidates.replicas
        ),
        dtype=np.uint64,
        count=len(candidates),
    )


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (any sign or size)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised (uint64 arithmetic wraps, as it should here)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
