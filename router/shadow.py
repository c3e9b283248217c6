"""Shadow strategies: decide on live traffic without acting, and say how they compare.

For every request, each Strategy of the project marked `shadow: true` ranks the same candidates
as the live strategy. The router counts whether the two first picks agree and, when they differ,
whether the shadow's pick has the lower predicted TTFT: the replica's TTFT (this router's p95,
else its agent's p50) stretched by the requests ahead of it, `ttft x (1 + load / BATCH)`, the way
a continuous-batching runtime slows as its batch fills. Win rate = wins / disagreements.
"""

from __future__ import annotations

import math

import numpy as np

from infermesh.router.strategies.base import CandidateSet, LiveState

BATCH = 16  # requests a runtime batches before the next one waits a whole TTFT
DEFAULT_TTFT_MS = 50.0


def predicted_ttft_ms(candidates: CandidateSet, live: LiveState, index: int) -> float:
    slot = int(candidates.slots[index])
    ttft = float(live.ttft_p95_ms[slot])
    if math.isnan(ttft):
        ttft = float(candidates.ttft_p50_ms[index])
    if math.isnan(ttft):
        ttft = DEFAULT_TTFT_MS
    load = int(np.maximum(candidates.agent_load[index], live.inflight[slot]))
    return ttft * (1 + load / BATCH)


def compare(
    candidates: CandidateSet, live: LiveState, live_pick: int, shadow_pick: int
) -> tuple[bool, bool]:
    """(agreed, shadow predicted faster) for one request."""
    if live_pick == shadow_pick:
        return True, False
    faster = predicted_ttft_ms(candidates, live, shadow_pick) < predicted_ttft_ms(
        candidates, live, live_pick
    )
    return False, faster
