"""Exact weighted choice for traffic splits (revisions) and domain weights.

`SmoothWeighted` is nginx's smooth weighted round robin: deterministic, and interleaved, so a
90/10 canary gets one request in ten spread evenly rather than ten in a row. With weights adding
up to W every W consecutive picks contain each item exactly its weight's times, which is what an
operator reading `trafficSplit: 90/10` expects to see in the request counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from infermesh.model import Endpoint

T = TypeVar("T")
_Cached = tuple[tuple[tuple[str, int], ...], "SmoothWeighted[str]"]


class SmoothWeighted(Generic[T]):
    __slots__ = ("_current", "_items", "_total", "_weights")

    def __init__(self, weighted: Sequence[tuple[T, int]]) -> None:
        live = [(item, weight) for item, weight in weighted if weight > 0]
        if not live:
            raise ValueError("nothing to choose from: every weight is zero")
        self._items = [item for item, _ in live]
        self._weights = [weight for _, weight in live]
        self._total = sum(self._weights)
        self._current = [0] * len(live)

    def pick(self) -> T:
        current, weights = self._current, self._weights
        best = 0
        for i, weight in enumerate(weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._items[best]


def endpoint_key(endpoint: Endpoint) -> str:
    return f"{endpoint.metadata.project}/{endpoint.metadata.name}"


def revision_split(endpoint: Endpoint) -> list[tuple[str, int]]:
    """Which model revisions get what percent of the endpoint's traffic."""
    split = endpoint.spec.trafficSplit
    if not split:
        return [(endpoint.spec.modelRef, 100)]
    return [(entry.modelRef, entry.weight) for entry in split]


def domain_split(endpoint: Endpoint) -> list[tuple[str, int]]:
    return [(domain.name, domain.weight) for domain in endpoint.spec.domains]


class Splits:
    """One chooser per endpoint and split, kept across requests so the interleaving holds; it
    starts over only when the endpoint's weights change (other edits leave it be)."""

    def __init__(self) -> None:
        self._revisions: dict[str, _Cached] = {}
        self._domains: dict[str, _Cached] = {}

    def pick_revision(self, endpoint: Endpoint) -> str:
        return _pick(self._revisions, endpoint_key(endpoint), revision_split(endpoint))

    def pick_domain(self, endpoint: Endpoint) -> str:
        return _pick(self._domains, endpoint_key(endpoint), domain_split(endpoint))

    def forget(self, key: str) -> None:
        """Drop a deleted endpoint's choosers (`key` as from `endpoint_key`)."""
        self._revisions.pop(key, None)
        self._domains.pop(key, None)


def _pick(cache: dict[str, _Cached], key: str, split: list[tuple[str, int]]) -> str:
    weights = tuple(split)
    cached = cache.get(key)
    if cached is None or cached[0] != weights:
        cached = cache[key] = (weights, SmoothWeighted(weights))
    return cached[1].pick()
