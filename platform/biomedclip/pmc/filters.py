"""Pair filters (shorter image side, caption length) and the caption length statistic."""
from __future__ import annotations

import re
from dataclasses import dataclass

_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class FilterConfig:
    min_side: int = 64  # pixels, on the original image's shorter side
    min_caption_chars: int = 20

    def __post_init__(self):
        if self.min_side < 1 or self.min_caption_chars < 0:
            raise ValueError("min_side must be >= 1 and min_caption_chars >= 0")


def caption_word_count(text: str) -> int:
    """Length of a caption in words and punctuation marks (a whitespace/punctuation split, not WordPiece tokens)."""
    return len(_WORDS.findall(text))


def caption_problem(caption: str, config: FilterConfig) -> str | None:
    if len(caption) < config.min_caption_chars:
        return f"caption has {len(caption)} characters, fewer than {config.min_caption_chars}"
    return None


def size_problem(width: int, height: int, config: FilterConfig) -> str | None:
    if min(width, height) < config.min_side:
        return f"image is {width}x{height}, shorter side below {config.min_side}"
    return None
