"""Circuit breakers per replica slot, after Envoy's outlier detection.

A slot is ejected after `consecutive_failures` failures in a row, or when more than `error_ratio`
of its answers over the last `window_s` failed (once it has at least `min_requests` of them). An
ejection lasts `base_ejection_s` × the times the slot has been ejected, at most `max_ejection_s`;
a slot that then stays healthy for `max_ejection_s` starts again from the base. When an ejection
ends the slot is half-open: one probe request goes through; its success closes the breaker, its
failure ejects the slot again. Never more than `max_ejection_percent` of the live slots are out
at once, so a fleet-wide problem degrades service instead of refusing it.

`ejected` is LiveState's array: strategies skip flagged slots without asking the breaker.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np


class RollingCounts:
    """Counts of `kinds` kinds of event over the last `window_s` seconds, in 1-second buckets."""

    __slots__ = ("_counts", "_kinds", "_seconds")

    def __init__(self, window_s: float, kinds: int) -> None:
        n = max(1, math.ceil(window_s))
        self._kinds = kinds
        self._seconds = [-1] * n  # which second each bucket holds
        self._counts = [[0] * kinds for _ in range(n)]

    def add(self, now: float, kind: int) -> None:
        second = math.floor(now)
        i = second % len(self._seconds)
        if self._seconds[i] != second:
            self._seconds[i] = second
            self._counts[i] = [0] * self._kinds
        self._counts[i][kind] += 1

    def totals(self, now: float) -> list[int]:
        second = math.floor(now)
        oldest = second - len(self._seconds)
        sums = [0] * self._kinds
        for s, counts in zip(self._seconds, self._counts, strict=True):
            if oldest < s <= second:
                for kind, count in enumerate(counts):
                    sums[kind] += count
        return sums

    def clear(self) -> None:
        self._seconds = [-1] * len(self._seconds)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    EJECTED = "ejected"
    HALF_OPEN = "half-open"


_OK, _FAILED = 0, 1


@dataclass(slots=True)
class _Slot:
    window: RollingCounts
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    times_ejected: int = 0
    restored_at: float | None = None  # when the breaker last closed after an ejection
    probe_at: float | None = None  # when the half-open probe was let through


class Breakers:
    def __init__(
        self,
        ejected: np.ndarray,
        *,
        consecutive_failures: int = 3,
        window_s: float = 10.0,
        error_ratio: float = 0.5,
        min_requests: int = 10,
        base_ejection_s: float = 5.0,
        max_ejection_s: float = 60.0,
        max_ejection_percent: float = 50.0,
        probe_timeout_s: float = 30.0,
    ) -> None:
        self.ejected = ejected
        self.consecutive_failures = consecutive_failures
        self.window_s = window_s
        self.error_ratio = error_ratio
        self.min_requests = min_requests
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.max_ejection_percent = max_ejection_percent
        # A probe whose result never comes (its caller went away) stops blocking the next one.
        self.probe_timeout_s = probe_timeout_s
        self._slots: dict[int, _Slot] = {}
        self._ejected_until: dict[int, float] = {}
        self._next_expiry = math.inf

    def state(self, slot: int, now: float) -> BreakerState:
        self.tick(now)
        entry = self._slots.get(slot)
        return entry.state if entry else BreakerState.CLOSED

    def tick(self, now: float) -> None:
        """End the ejections that are over: those slots become half-open."""
        if now < self._next_expiry:
            return
        for slot, until in list(self._ejected_until.items()):
            if until <= now:
                del self._ejected_until[slot]
                self.ejected[slot] = False
                entry = self._slots[slot]
                entry.state, entry.probe_at = BreakerState.HALF_OPEN, None
        self._next_expiry = min(self._ejected_until.values(), default=math.inf)

    def allow_probe(self, slot: int, now: float) -> bool:
        """May a request go to `slot` now? Closed: yes; ejected: no; half-open: yes to exactly
        one request, until its result is recorded (or `probe_timeout_s` passes)."""
        self.tick(now)
        entry = self._slots.get(slot)
        if entry is None or entry.state is BreakerState.CLOSED:
            return True
        if entry.state is BreakerState.EJECTED:
            return False
        if entry.probe_at is not None and now - entry.probe_at < self.probe_timeout_s:
            return False
        entry.probe_at = now
        return True

    def record_success(self, slot: int, now: float) -> None:
        entry = self._entry(slot)
        if entry.state is BreakerState.EJECTED:
            return  # sent before the ejection; says nothing about the slot now
        if entry.state is BreakerState.HALF_OPEN:
            entry.state, entry.probe_at, entry.restored_at = BreakerState.CLOSED, None, now
            entry.window.clear()
        entry.consecutive = 0
        entry.window.add(now, _OK)

    def record_failure(self, slot: int, now: float, live_slots: int | None = None) -> None:
        """`live_slots`: how many slots can serve now, for the ejection cap (default: the slots
        this breaker has seen answer; LiveState's arrays are far longer than the fleet)."""
        entry = self._entry(slot)
        if entry.state is BreakerState.EJECTED:
            return  # sent before the ejection; the probe will judge the slot
        entry.consecutive += 1
        entry.window.add(now, _FAILED)
        if entry.state is BreakerState.HALF_OPEN or self._tripped(entry, now):
            live = len(self._slots) if live_slots is None else live_slots
            self._eject(slot, entry, now, live)

    def _entry(self, slot: int) -> _Slot:
        entry = self._slots.get(slot)
        if entry is None:
            entry = self._slots[slot] = _Slot(RollingCounts(self.window_s, 2))
        return entry

    def _tripped(self, entry: _Slot, now: float) -> bool:
        if entry.consecutive >= self.consecutive_failures:
            return True
        ok, failed = entry.window.totals(now)
        total = ok + failed
        return total >= self.min_requests and failed > self.error_ratio * total

    def _eject(self, slot: int, entry: _Slot, now: float, live_slots: int) -> None:
        self.tick(now)  # ejections that are over do not count against the cap
        if len(self._ejected_until) + 1 > live_slots * self.max_ejection_percent / 100:
            entry.probe_at = None  # at the cap: stay in service, let the next probe decide
            return
        if entry.restored_at is not None and now - entry.restored_at >= self.max_ejection_s:
            entry.times_ejected = 0
        entry.times_ejected += 1
        until = now + min(self.base_ejection_s * entry.times_ejected, self.max_ejection_s)
        entry.state, entry.consecutive, entry.probe_at = BreakerState.EJECTED, 0, None
        entry.window.clear()
        self._ejected_until[slot] = until
        self._next_expiry = min(self._next_expiry, until)
        self.ejected[slot] = True
