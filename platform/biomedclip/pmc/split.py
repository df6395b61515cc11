"""Deterministic article-level train/val/test split from a hash of the PMCID, so no article spans two splits."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self):
        ratios = (self.train, self.val, self.test)
        if min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0 and sum to 1, got {ratios}")


def hash_unit(key: str) -> float:
    """A uniform number in [0, 1) from the SHA-256 of `key`."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def assign_split(pmcid: str, config: SplitConfig) -> str:
    u = hash_unit(pmcid)
    if u < config.train:
        return "train"
    if u < config.train + config.val or config.test == 0:
        return "val" if config.val > 0 else "train"
    return "test"
