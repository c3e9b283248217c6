"""Hedged requests: when to send the backup (`hedge_delay_ms`), whether the endpoint can afford
one (`HedgeBudget`), and the per-replica TTFT p95 the `ttft-p95` delay mode reads (`TtftTracker`).
"""

from __future__ import annotations

import math
import time

import numpy as np

from infermesh.model.policy import Hedging
from infermesh.router.breaker import RollingCounts

_REQUESTS, _HEDGES = 0, 1


def hedge_delay_ms(h: Hedging, ttft_p95_ms: float | None, slo_ttft_ms: float | None) -> float:
    """How long the first try may run before the hedge goes out; `delayMs` stands in while the
    mode's input is unknown (no p95 yet, no SLO set)."""
    if h.delayMode == "ttft-p95" and ttft_p95_ms is not None and not math.isnan(ttft_p95_ms):
        return h.ttftMultiple * ttft_p95_ms
    if h.delayMode == "slo-fraction" and slo_ttft_ms is not None:
        return h.sloFraction * slo_ttft_ms
    return h.delayMs


class HedgeBudget:
    """Hedges per endpoint as a share of its requests over the last `window_s`.

    Call `record_request` when a request arrives, `allow` when its hedge timer fires and
    `record_hedge` when the hedge is sent. `allow` says yes while the hedges in the window,
    counting the one asked for, stay within `budget_percent` of the requests in it, with a floor
    of one hedge per window: a quiet endpoint (fewer than 100/budget_percent requests) can still
    hedge its slow request, and a busy one never hedges more than its share. A budget of 0 never
    hedges.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._counts: dict[str, RollingCounts] = {}

    def _of(self, endpoint_key: str) -> RollingCounts:
        counts = self._counts.get(endpoint_key)
        if counts is None:
            counts = self._counts[endpoint_key] = RollingCounts(self.window_s, 2)
        return counts

    def record_request(self, endpoint_key: str, now: float) -> None:
        self._of(endpoint_key).add(now, _REQUESTS)

    def record_hedge(self, endpoint_key: str, now: float) -> None:
        self._of(endpoint_key).add(now, _HEDGES)

    def allow(self, endpoint_key: str, budget_percent: float, now: float) -> bool:
        if budget_percent <= 0:
            return False
        requests, hedges = self._of(endpoint_key).totals(now)
        # In whole percent points, so 10 % of 30 requests is exactly 3 hedges.
        return (hedges + 1) * 100 <= max(100, budget_percent * requests)


def _p95(values: np.ndarray) -> float:
    """`np.percentile(values, 95)` (linear interpolation) from a partial sort: a twentieth of
    the cost. `values` (not empty) is left as it is."""
    pos = 0.95 * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    part = np.partition(values, (lo, hi))
    return float(part[lo] + (pos - lo) * (part[hi] - part[lo]))


class TtftTracker:
    """Recent time-to-first-token per replica slot, its p95 written into LiveState.ttft_p95_ms.

    Keeps the last `samples` per slot and recomputes the p95 every `every` samples once there are
    `min_samples`, so one observation costs a store and, now and then, a small percentile.
    A slot that has not answered for `max_age_s` forgets its samples (`expire`): a replica the
    strategies avoid for a bad p95 would otherwise keep that p95 forever, since avoided replicas
    produce no new samples, and traffic would herd onto whichever p95 happens to be lowest.
    """

    def __init__(
        self,
        ttft_p95_ms: np.ndarray,
        samples: int = 64,
        min_samples: int = 8,
        every: int = 8,
        max_age_s: float = 5.0,
    ) -> None:
        self.ttft_p95_ms = ttft_p95_ms
        self.samples, self.min_samples, self.every = samples, min_samples, every
        self.max_age_s = max_age_s
        # Rings only for slots that have answered: LiveState's arrays span every slot ever.
        self._rings: dict[int, np.ndarray] = {}
        self._seen: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self._next_expiry = 0.0

    def observe(self, slot: int, ttft_ms: float, now: float | None = None) -> None:
        self._last[slot] = time.monotonic() if now is None else now
        ring = self._rings.get(slot)
        if ring is None:
            ring = self._rings[slot] = np.empty(self.samples)
        seen = self._seen.get(slot, 0)
        ring[seen % self.samples] = ttft_ms
        seen = self._seen[slot] = seen + 1
        if seen >= self.min_samples and seen % self.every == 0:
            self.ttft_p95_ms[slot] = _p95(ring[: min(seen, self.samples)])

    def expire(self, now: float) -> None:
        """Forget slots silent for `max_age_s`; cheap to call per request (runs once a second)."""
        if now < self._next_expiry:
            return
        self._next_expiry = now + 1.0
        for slot in [s for s, last in self._last.items() if now - last > self.max_age_s]:
            del self._last[slot], self._seen[slot], self._rings[slot]
            self.ttft_p95_ms[slot] = np.nan
