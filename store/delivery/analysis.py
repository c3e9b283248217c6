"""Canary analysis: is the canary revision no worse than its baseline over the same window?

Both revisions are measured on the same SLIs from the routers' series (store/slo/counts.py):
error rate (5xx over answered requests; 429s are the router's, not the revision's), latency p95
and TTFT p95 of successful requests. The verdict, a pure function of the two samples and the
rollout policy:

- `fail`: the canary passed a failure gate of the policy (its own value over the gate's
  threshold), judged once the canary has `minRequests` in the window;
- `wait`: fewer canary requests than that: nothing to judge yet;
- `hold`: the canary is worse than its baseline beyond the tolerance, but within every gate;
- `pass`: no worse on every SLI: error rate within `tolerancePercent` of the baseline's plus
  half a point, p95 and TTFT p95 within `tolerancePercent` plus 5 ms (the histograms' finest
  resolution), so a handful of requests cannot tell two equal revisions apart as "worse".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from infermesh.model.policy import RolloutPolicy
from infermesh.store.slo.counts import Counts, histogram

Outcome = Literal["pass", "fail", "wait", "hold"]
ERROR_SLACK = 0.005  # half a point of error rate
LATENCY_SLACK_MS = 5.0
METRICS = ("error_rate", "p95_ms", "ttft_ms")


@dataclass(frozen=True, slots=True)
class Sample:
    """One revision's SLIs over the analysis window (None: nothing observed)."""

    requests: int
    error_rate: float | None
    p95_ms: float | None
    ttft_ms: float | None

    @classmethod
    def of(cls, c: Counts) -> Sample:
        answered = c.requests - c.rejected
        return cls(
            requests=answered,
            error_rate=c.errors / answered if answered > 0 else None,
            p95_ms=_rounded(histogram(c.latency).quantile(0.95)),
            ttft_ms=_rounded(histogram(c.ttft).quantile(0.95)),
        )

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.error_rate is not None:
            out["error_rate"] = round(self.error_rate, 5)
        return out


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str
    canary: Sample
    baseline: Sample

    def comparison(self) -> dict[str, Any]:
        return {"canary": self.canary.as_dict(), "baseline": self.baseline.as_dict()}


def judge(canary: Counts, baseline: Counts, policy: RolloutPolicy) -> Verdict:
    """The canary's verdict against its baseline (see the module docstring)."""
    c, b = Sample.of(canary), Sample.of(baseline)
    if c.requests < policy.minRequests:
        return Verdict("wait", f"{c.requests} of {policy.minRequests} canary requests", c, b)
    for gate in policy.failureGates:
        value = c.value(gate.metric)
        if value is not None and value > gate.threshold:
            return Verdict(
                "fail",
                f"{gate.metric} {show(gate.metric, value)} over its gate "
                f"{show(gate.metric, gate.threshold)} (baseline "
                f"{show(gate.metric, b.value(gate.metric))}; {summary(c, b)})",
                c,
                b,
            )
    worse = [m for m in METRICS if _worse(m, c.value(m), b.value(m), policy.tolerancePercent)]
    if worse:
        said = ", ".join(f"{m} {show(m, c.value(m))} vs {show(m, b.value(m))}" for m in worse)
        return Verdict("hold", f"worse than the baseline: {said}", c, b)
    return Verdict("pass", f"no worse than the baseline ({summary(c, b)})", c, b)


def _worse(metric: str, canary: float | None, baseline: float | None, tolerance: float) -> bool:
    if canary is None or baseline is None:
        return False  # nothing to compare against: only the gates judge
    slack = ERROR_SLACK if metric == "error_rate" else LATENCY_SLACK_MS
    return canary > baseline * (1 + tolerance / 100) + slack


def show(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "error_rate":
        return f"{value * 100:.1f}%"
    return f"{value:.0f}ms"


def summary(c: Sample, b: Sample) -> str:
    """The numbers an event shows: each SLI, canary vs baseline, and the requests behind them."""
    parts = [f"{m} {show(m, c.value(m))} vs {show(m, b.value(m))}" for m in METRICS]
    return ", ".join(parts) + f" over {c.requests} vs {b.requests} requests"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
