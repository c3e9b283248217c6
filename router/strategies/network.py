"""WAN distance from a request's origin to each candidate: link class and round trip.

The link-class rule is the simulator's (`link_class_between`), so what the router prices is what
the simulated WAN charges. Link classes are worked out once per (CandidateSet, origin) over the
set's distinct locations; the RTTs come from `LiveState.rtt_ms` and are re-read only when those
change, so a decision pays one dictionary lookup for its network column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from infermesh.agent.sim.wan import DEFAULT_RTT_MS, Location, link_class_between
from infermesh.router.strategies.base import CandidateSet, LiveState

# Code 0 is "no link" (the origin is unknown: treated as local); code i + 1 is LINK_CLASSES[i].
LINK_CLASSES: tuple[str, ...] = ("intra-zone", "inter-zone", "inter-region", "public")
LOCAL = 0
_CODE = {name: i + 1 for i, name in enumerate(LINK_CLASSES)}
ORIGIN_CACHE_MAX = 256  # origins remembered per CandidateSet


@dataclass(frozen=True, slots=True)
class OriginNetwork:
    """Per candidate: the link-class code and the RTT in ms from one origin."""

    codes: np.ndarray  # int64, see LINK_CLASSES
    rtt_ms: np.ndarray  # float64
    rtt_table: tuple[float, ...]  # RTT per code, as it was when rtt_ms was computed


def link_class_name(code: int) -> str | None:
    return None if code == LOCAL else LINK_CLASSES[code - 1]


def rtt_table(rtt_ms: Mapping[str, float]) -> tuple[float, ...]:
    """RTT per link-class code; a class the router has no figure for gets the default."""
    return (0.0, *(float(rtt_ms.get(name, DEFAULT_RTT_MS[name])) for name in LINK_CLASSES))


def origin_network(
    origin: Location | None, candidates: CandidateSet, live: LiveState
) -> OriginNetwork:
    """The candidates' link classes and RTTs from `origin`, cached in the CandidateSet."""
    cache = candidates.origin_cache()
    table = rtt_table(live.rtt_ms)
    hit: OriginNetwork | None = cache.get(origin)
    if hit is not None and hit.rtt_table == table:
        return hit
    codes = hit.codes if hit is not None else _codes(origin, candidates)
    found = OriginNetwork(codes, np.asarray(table)[codes], table)
    if len(cache) >= ORIGIN_CACHE_MAX:  # origins come from request headers: bound what they cost
        cache.clear()
    cache[origin] = found
    return found


def _codes(origin: Location | None, candidates: CandidateSet) -> np.ndarray:
    if origin is None:
        return np.zeros(len(candidates), dtype=np.int64)
    regions = candidates.domain_regions
    per_place = np.fromiter(
        (
            _CODE.get(link_class_between(origin, here, regions) or "", LOCAL)
            for here in candidates.locations
        ),
        dtype=np.int64,
        count=len(candidates.locations),
    )
    return per_place[candidates.location_index]
