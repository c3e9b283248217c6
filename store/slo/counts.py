"""What one slice of traffic did over one window, and what each SLI makes of it.

`Counts` holds the routers' counters (requests, 5xx errors, 429 rejections) and the latency and
TTFT histograms (infermesh/sli.py: successful requests only), summed over buckets and sources, as
one integer vector so that adding windows and slices up is one numpy addition.

Good and valid events per SLI (docs/slo.md):
- availability: valid = every answered request, 429s only when `rate_limited_is_bad`; bad = 5xx
  (timeouts are answered 504) and, by that policy, 429s. Other 4xx are the caller's fault: good.
- latency / ttft: valid = the requests that succeeded (their histogram) plus the bad ones above;
  good = succeeded within the threshold (exact at a bound of LATENCY_BUCKETS_MS, interpolated
  within a bucket otherwise). A failed request is never fast enough, and a 4xx is left out (it
  has no latency that says anything about the service).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from infermesh.sli import LATENCY_BUCKETS_MS, Histogram

N_BUCKETS = len(LATENCY_BUCKETS_MS) + 1  # the finite bounds, then +Inf
_REQUESTS, _ERRORS, _REJECTED = 0, 1, 2
_LATENCY = slice(3, 3 + N_BUCKETS)
_TTFT = slice(3 + N_BUCKETS, 3 + 2 * N_BUCKETS)
WIDTH = 3 + 2 * N_BUCKETS

Vector = npt.NDArray[np.int64]
PERCENTILES = ((0.5, "p50Ms"), (0.95, "p95Ms"), (0.99, "p99Ms"))


def zero_vector() -> Vector:
    return np.zeros(WIDTH, dtype=np.int64)


def vector(
    requests: int, errors: int, rejected: int, latency: Sequence[int], ttft: Sequence[int]
) -> Vector:
    out = zero_vector()
    out[_REQUESTS], out[_ERRORS], out[_REJECTED] = requests, errors, rejected
    out[_LATENCY] = latency
    out[_TTFT] = ttft
    return out


@dataclass(frozen=True, slots=True)
class Counts:
    """Counters and histograms of a slice over a window (see the module docstring)."""

    vec: Vector

    @classmethod
    def zero(cls) -> Counts:
        return cls(zero_vector())

    @classmethod
    def of(
        cls,
        *,
        requests: int = 0,
        errors: int = 0,
        rejected: int = 0,
        latency: Sequence[int] | Histogram | None = None,
        ttft: Sequence[int] | Histogram | None = None,
    ) -> Counts:
        def counts(h: Sequence[int] | Histogram | None) -> Sequence[int]:
            if h is None:
                return [0] * N_BUCKETS
            return h.counts if isinstance(h, Histogram) else h

        return cls(vector(requests, errors, rejected, counts(latency), counts(ttft)))

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.vec + other.vec)

    @property
    def requests(self) -> int:
        return int(self.vec[_REQUESTS])

    @property
    def errors(self) -> int:
        return int(self.vec[_ERRORS])

    @property
    def rejected(self) -> int:
        return int(self.vec[_REJECTED])

    @property
    def latency(self) -> Vector:
        return self.vec[_LATENCY]

    @property
    def ttft(self) -> Vector:
        return self.vec[_TTFT]


def good_total(
    c: Counts, sli: str, threshold_ms: float | None, rate_limited_is_bad: bool
) -> tuple[float, float]:
    """(good, valid) events of `c` for an SLI (see the module docstring for the rules)."""
    rejected_bad = c.rejected if rate_limited_is_bad else 0
    if sli == "availability":
        total = c.requests - (0 if rate_limited_is_bad else c.rejected)
        bad = c.errors + rejected_bad
        return float(max(total - bad, 0)), float(max(total, 0))
    if sli not in ("latency", "ttft") or threshold_ms is None:
        raise ValueError(f"no request-based SLI {sli!r} with threshold {threshold_ms}")
    hist = c.latency if sli == "latency" else c.ttft
    total = float(hist.sum()) + c.errors + rejected_bad
    # Between two bucket bounds, interpolated (Prometheus's histogram_fraction): rounding the
    # threshold down to a bound would count a 120 ms TTFT target as 100 ms.
    return histogram(hist).count_at_most(threshold_ms, interpolate=True), total


def histogram(counts: Vector) -> Histogram:
    # Trusted counts straight from stored histograms: skip validation.
    return Histogram.model_construct(counts=counts.tolist(), sum_ms=0.0)


def percentiles(c: Counts) -> dict[str, Any]:
    """Latency p50/p95/p99 and TTFT p95 in ms (None without observations), and the requests."""
    latency, ttft = histogram(c.latency), histogram(c.ttft)
    out: dict[str, Any] = {"requests": c.requests}
    for q, label in PERCENTILES:
        out[label] = _rounded(latency.quantile(q))
    out["ttftP95Ms"] = _rounded(ttft.quantile(0.95))
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
