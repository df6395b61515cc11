"""A small LRU cache of zero-shot label embeddings, keyed by (model id, labels, templates).

A model id names one fixed artifact, so entries stay valid when the model itself is unloaded and loaded again.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


class PromptCache:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"prompt cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def get(self, key: Hashable) -> np.ndarray | None:
        if key not in self._entries:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: Hashable, value: np.ndarray) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def stats(self) -> dict:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}
