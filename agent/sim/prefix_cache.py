"""Automatic prefix caching, as vLLM does it: full blocks of prompt tokens keyed by a chained hash.

A block's key covers every token before it, so a hit on block k means blocks 0..k-1 hit too and
only a common *prefix* is ever reused. The cache is an LRU bounded by the KV capacity in blocks:
in vLLM cached blocks live in free KV memory and are evicted, oldest first, when it is needed.
The simulator keeps the index only; it does not share cached blocks between running sequences
in its KV accounting (each running sequence counts all of its blocks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence


def block_hashes(tokens: Sequence[Hashable], block_size: int) -> list[int]:
    """Chained keys of the full blocks of `tokens` (a partial last block is never cached)."""
    keys: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        keys.append(parent)
    return keys


class PrefixCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def lookup(self, keys: Sequence[int]) -> int:
        """How many leading blocks of `keys` are cached; those become most recently used."""
        hits = 0
        for key in keys:
            if key not in self._blocks:
                break
            self._blocks.move_to_end(key)
            hits += 1
        return hits

    def insert(self, keys: Sequence[int]) -> None:
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
