"""Service-level indicators as routers ship them and the control plane stores them.

A router counts what it serves in fixed-width buckets (`SeriesBucket`, 10 s by default) per
project, endpoint, model revision, domain and tenant, and posts them as a `SeriesBatch` to
`POST /v1/metrics/series`. Latencies go into fixed-bound histograms (`Histogram`), so buckets
from many routers and many seconds add up exactly and percentiles come out of the sum, as
Prometheus's `histogram_quantile` does.

Counting rules (what a bucket means): `requests` counts every request the router answered,
errors and rejections included; `errors` those answered 5xx; `rejected` those refused by
admission (429); `hedges` requests that fired a hedge, `hedge_wins` those the hedge answered
first. Latency and TTFT histograms hold successful requests only.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator, model_validator

__all__ = [
    "DEFAULT_WIDTH_S",
    "LATENCY_BUCKETS_MS",
    "Histogram",
    "SeriesBatch",
    "SeriesBucket",
    "bucket_start",
    "parse_duration",
]

# Upper bounds (ms) of the histogram buckets; one more bucket, +Inf, catches the rest. Dense
# where inference SLOs live (TTFT 50-500 ms, end-to-end 1-10 s).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5,
    10,
    25,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    10000,
    30000,
)
DEFAULT_WIDTH_S = 10

_LABEL = Annotated[str, Field(max_length=253)]
_NAME = Annotated[str, Field(min_length=1, max_length=253)]


def _empty_counts() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS_MS) + 1)


class Histogram(BaseModel):
    """Counts per bucket of `LATENCY_BUCKETS_MS` (not cumulative; the last is +Inf), and the sum
    of the observations."""

    model_config = ConfigDict(extra="forbid")

    counts: list[NonNegativeInt] = Field(default_factory=_empty_counts)
    sum_ms: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("counts")
    @classmethod
    def _one_count_per_bucket(cls, counts: list[int]) -> list[int]:
        if len(counts) != len(LATENCY_BUCKETS_MS) + 1:
            raise ValueError(
                f"must hold {len(LATENCY_BUCKETS_MS) + 1} counts (one per bucket of "
                f"LATENCY_BUCKETS_MS, then +Inf), got {len(counts)}"
            )
        return counts

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, ms: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus's `le`).
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        self.sum_ms += max(ms, 0.0)

    def merge(self, other: Histogram) -> None:
        """Add `other`'s observations to this histogram."""
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum_ms += other.sum_ms

    def count_at_most(self, threshold_ms: float, *, interpolate: bool = False) -> float:
        """How many observations were at most `threshold_ms` (the good events of a latency SLI).

        Exact when the threshold is one of LATENCY_BUCKETS_MS. Otherwise the histogram cannot
        tell where in its bucket the threshold falls: by default the threshold is rounded *down*
        to the nearest bound, so the bucket holding it counts as over (good events are never
        overstated); with `interpolate`, that bucket counts in proportion, linearly, as
        Prometheus's `histogram_fraction`. The +Inf bucket is always over."""
        i = bisect.bisect_right(LATENCY_BUCKETS_MS, threshold_ms)  # buckets wholly <= threshold
        good = float(sum(self.counts[:i]))
        if interpolate and i < len(LATENCY_BUCKETS_MS):
            lower = LATENCY_BUCKETS_MS[i - 1] if i else 0.0
            upper = LATENCY_BUCKETS_MS[i]
            good += self.counts[i] * max(threshold_ms - lower, 0.0) / (upper - lower)
        return good

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) in ms, interpolated linearly within its bucket as Prometheus's
        `histogram_quantile`; None without observations. A quantile in the +Inf bucket is the
        highest finite bound: the histogram cannot say more."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, got {q}")
        total = self.count
        if total == 0:
            return None
        rank = q * total
        below = 0
        for i, n in enumerate(self.counts):
            # Skipping empty buckets keeps q=0 off a bucket with nothing in it.
            if n and below + n >= rank:
                if i == len(LATENCY_BUCKETS_MS):
                    return float(LATENCY_BUCKETS_MS[-1])
                lower = LATENCY_BUCKETS_MS[i - 1] if i else 0.0
                upper = LATENCY_BUCKETS_MS[i]
                return lower + (upper - lower) * (rank - below) / n
            below += n
        return float(LATENCY_BUCKETS_MS[-1])  # unreachable: rank <= total


class SeriesBucket(BaseModel):
    """What one router saw in one time bucket for one (project, endpoint, revision, domain,
    tenant). See the module docstring for what each counter counts."""

    model_config = ConfigDict(extra="forbid")

    start: NonNegativeInt  # epoch seconds, a multiple of width_s
    width_s: Annotated[int, Field(ge=1, le=3600)] = DEFAULT_WIDTH_S
    project: _NAME
    endpoint: _NAME
    revision: _LABEL = ""
    domain: _LABEL = ""  # "" when the request reached no domain (rejected, no target)
    tenant: _LABEL = "default"
    requests: NonNegativeInt = 0
    errors: NonNegativeInt = 0
    rejected: NonNegativeInt = 0
    hedges: NonNegativeInt = 0
    hedge_wins: NonNegativeInt = 0
    prompt_tokens: NonNegativeInt = 0
    completion_tokens: NonNegativeInt = 0
    latency: Histogram = Field(default_factory=Histogram)
    ttft: Histogram = Field(default_factory=Histogram)

    @model_validator(mode="after")
    def _aligned(self) -> SeriesBucket:
        if self.start % self.width_s:
            raise ValueError(
                f"start {self.start} is not a multiple of width_s {self.width_s} "
                f"(use bucket_start(time, width_s))"
            )
        return self


class SeriesBatch(BaseModel):
    """One post of a router: its buckets, open ones included (re-sent until closed)."""

    model_config = ConfigDict(extra="forbid")

    source: _NAME  # the router's id; a re-sent bucket replaces this source's earlier copy
    buckets: list[SeriesBucket]


def bucket_start(epoch_s: float, width_s: int = DEFAULT_WIDTH_S) -> int:
    """The start of the bucket of width `width_s` that holds the instant `epoch_s`."""
    return int(epoch_s) // width_s * width_s


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `30s`, `5m`, `1.5h`, `7d` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 5m, 2h, 7d)")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r}")
    return seconds
