"""How fast each replica is, as this router sees it from its own answers: two moving averages
per replica slot, written into `LiveState` for the strategies (hybrid_mesh) to read.

- `base_ttft_ms`: the TTFT of requests that found no queue there, sent while none of this
  router's requests there was still waiting for its first byte and its agent reported none
  waiting. It is the replica's latency without queueing (prefill, a slow node), so a strategy
  that prices the queue separately does not count the queue twice, as the TTFT p95 would.
- `decode_ms`: first byte to last of whole answers (a hang-up or a hedge's loser says nothing
  about speed). With the TTFT, how long a request holds one of the replica's batch slots.

A slot with no answer for `max_age_s` forgets both: a replica avoided for being slow gets
nothing to show it has recovered, and would otherwise keep its old figures for good.
"""

from __future__ import annotations

import math

import numpy as np

from infermesh.router.strategies.base import LiveState


class ReplicaSpeed:
    def __init__(self, live: LiveState, weight: float = 0.1, max_age_s: float = 10.0) -> None:
        self.base_ttft_ms, self.decode_ms = live.base_ttft_ms, live.decode_ms
        self.weight = weight  # of the newest answer: ~10 answers make the average
        self.max_age_s = max_age_s
        self._last: dict[int, float] = {}
        self._next_expiry = 0.0

    def first_byte(self, slot: int, ttft_ms: float, queued: bool, now: float) -> None:
        """A request's first byte came; `queued`: it was sent behind others (not a base)."""
        self._last[slot] = now
        if not queued:
            _average(self.base_ttft_ms, slot, ttft_ms, self.weight)

    def finished(self, slot: int, decode_ms: float, now: float) -> None:
        """A whole answer ended, `decode_ms` after its first byte."""
        self._last[slot] = now
        _average(self.decode_ms, slot, decode_ms, self.weight)

    def expire(self, now: float) -> None:
        """Forget slots silent for `max_age_s`; cheap to call per request (runs once a second)."""
        if now < self._next_expiry:
            return
        self._next_expiry = now + 1.0
        for slot in [s for s, last in self._last.items() if now - last > self.max_age_s]:
            del self._last[slot]
            self.base_ttft_ms[slot] = self.decode_ms[slot] = np.nan


def _average(column: np.ndarray, slot: int, value: float, weight: float) -> None:
    old = float(column[slot])
    column[slot] = value if math.isnan(old) else old + weight * (value - old)
