"""The burn table: good/valid events, ratio and burn rate per window, and the error budget left.

error budget = 1 - objective; burn rate = bad ratio / budget (1x spends exactly the budget over
the SLO window, 14.4x spends 2 % of a 30-day budget in an hour). `evaluate` is a pure function
of the counts per window, so any slice of traffic can be judged the same way: an SLO's target, or
one (endpoint, revision) of a canary against its baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infermesh.store.slo.counts import Counts, good_total
from infermesh.store.slo.windows import BURN_WINDOW, table_windows


@dataclass(frozen=True, slots=True)
class SliSpec:
    """What is measured and promised: the parts of an SLO the math needs."""

    sli: str  # availability | latency | ttft
    objective: float  # percent of good events, 0 < objective < 100
    threshold_ms: float | None = None  # latency, ttft
    rate_limited_is_bad: bool = False
    window: str = "30d"

    @property
    def budget(self) -> float:
        """The error budget as a fraction of valid events (99.5 % -> 0.005)."""
        return 1.0 - self.objective / 100.0


@dataclass(frozen=True, slots=True)
class WindowBurn:
    window: str  # "5m" .. "3d", or the SLO window ("30d")
    seconds: int
    good: float
    total: float  # valid events
    budget: float

    @property
    def ratio(self) -> float | None:
        """Good / valid; None without valid events."""
        return self.good / self.total if self.total > 0 else None

    @property
    def burn(self) -> float:
        """Bad ratio / budget; 0 without valid events (nothing is burning)."""
        ratio = self.ratio
        return 0.0 if ratio is None else (1.0 - ratio) / self.budget

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "window": self.window,
            "seconds": self.seconds,
            "good": round(self.good, 3),
            "total": round(self.total, 3),
            "ratio": None if ratio is None else round(ratio, 6),
            "burn": round(self.burn, 4),
        }


@dataclass(frozen=True, slots=True)
class BurnTable:
    spec: SliSpec
    rows: tuple[WindowBurn, ...]  # shortest window first, the SLO window last

    def row(self, window: str) -> WindowBurn:
        for row in self.rows:
            if row.window == window:
                return row
        raise KeyError(f"no window {window!r} in this burn table")

    def burn(self, window: str) -> float:
        return self.row(window).burn

    @property
    def slo_row(self) -> WindowBurn:
        return self.rows[-1]

    @property
    def budget_remaining(self) -> float:
        """The share of the SLO window's error budget not yet spent (negative: overspent)."""
        return 1.0 - self.slo_row.burn

    @property
    def exhaustion_seconds(self) -> float | None:
        """When the budget runs out if the last hour's burn rate holds: 0 when already spent,
        None when nothing is burning. At burn rate b a budget lasts window / b in all."""
        remaining = self.budget_remaining
        if remaining <= 0:
            return 0.0
        burn = self.burn(BURN_WINDOW)
        if burn <= 0:
            return None
        return remaining * self.slo_row.seconds / burn


def evaluate(counts_by_window: Mapping[str, Counts], spec: SliSpec) -> BurnTable:
    """The burn table of one slice of traffic: `counts_by_window` maps each window of
    `table_windows(spec.window)` to that window's counts (a missing window counts as no traffic).
    """
    rows = []
    for window, seconds in table_windows(spec.window):
        counts = counts_by_window.get(window) or Counts.zero()
        good, total = good_total(counts, spec.sli, spec.threshold_ms, spec.rate_limited_is_bad)
        rows.append(WindowBurn(window, seconds, good, total, spec.budget))
    return BurnTable(spec, tuple(rows))
