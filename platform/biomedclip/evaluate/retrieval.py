"""Exact cross-modal retrieval ranks in bounded memory: the N x N similarity matrix is never materialised.

Definitions (the brute-force oracle in the tests uses the same ones):
- Pairs are given by index: image i and caption i. A query's only positive is its own pair; a duplicate caption
  elsewhere in the split is a negative (it is another figure's caption).
- Score = dot product of the (normalised) embeddings.
- Rank of query i (1-based) = 1 + #{candidates j with score > score(i, i)} + #{j < i with score == score(i, i)}:
  ties go to the candidate with the lower index, i.e. the positive's position in a stable descending sort. So two
  images with bit-identical duplicate captions get ranks 1 and 2 (not both 1, not both 2).
- Recall@k = fraction of queries with rank <= k; median rank = median of the 1-based ranks.
- Identical captions get identical embeddings (`first_occurrence`): copies embedded in different batches can differ
  in the last bit, which would let batching, not the rule above, decide their order.
This module is the one definition: training's validation (`biomedclip.train.metrics`) and evaluation both use it.

Cost: the score matrix is computed block by block (chunk x chunk); each block serves both directions, so the work is
one N x N x D matmul in total, and the extra memory is about 9 * chunk^2 bytes (the float32 block, one boolean mask,
its int32 counts) plus O(N) counters, independent of N^2.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


@dataclass
class RetrievalRanks:
    image_to_text: np.ndarray  # rank of each image's own caption among all captions, 1-based
    text_to_image: np.ndarray  # rank of each caption's own image among all images, 1-based


def paired_ranks(images, texts, chunk_size: int = 4096, device: str | torch.device = "cpu") -> RetrievalRanks:
    """Ranks of every pair in both directions; `images[i]` and `texts[i]` are a pair (N x D each)."""
    images = torch.as_tensor(images, dtype=torch.float32, device=device)
    texts = torch.as_tensor(texts, dtype=torch.float32, device=device)
    if images.ndim != 2 or images.shape != texts.shape:
        raise ValueError(f"image and text embeddings must both be N x D, got {tuple(images.shape)} "
                         f"and {tuple(texts.shape)}")
    if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        raise ValueError("embeddings contain NaN or infinite values; ranks would be meaningless")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    n = images.shape[0]
    bounds = [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
    positive = torch.empty(n, device=device)
    for a, b in bounds:  # own-pair scores from the same kernel as the blocks below, so exact ties stay exact
        positive[a:b] = (images[a:b] @ texts[a:b].T).diagonal()
    image_before = torch.zeros(n, dtype=torch.long, device=device)
    text_before = torch.zeros(n, dtype=torch.long, device=device)
    for a, b in bounds:
        for c, d in bounds:
            block = images[a:b] @ texts[c:d].T  # rows: image queries; columns: text queries
            if a == c:
                block.diagonal().fill_(-torch.inf)  # a pair never competes with itself
            image_before[a:b] += _count_before(block, positive[a:b], dim=1, candidates=_order(c, a))
            text_before[c:d] += _count_before(block, positive[c:d], dim=0, candidates=_order(a, c))
            del block  # before the next block is allocated, so that only one exists at a time
    return RetrievalRanks((image_before + 1).cpu().numpy(), (text_before + 1).cpu().numpy())


def _order(candidate_start: int, query_start: int) -> str:
    """Blocks are aligned, so a block's candidates all precede its queries, all follow them, or are the same range."""
    if candidate_start == query_start:
        return "same"
    return "before" if candidate_start < query_start else "after"


def _count_before(block: torch.Tensor, positive: torch.Tensor, dim: int, candidates: str) -> torch.Tensor:
    """Per query (rows when dim=1, columns when dim=0): candidates ranked above its positive by the tie rule."""
    own = positive.unsqueeze(dim)
    if candidates == "before":  # every candidate has a lower index: ties count
        return _count(block >= own, dim)
    higher = _count(block > own, dim)
    if candidates == "after":  # every candidate has a higher index: ties do not count
        return higher
    ties = block == own  # diagonal block: a tie counts when the candidate's index is below the query's
    lower = torch.tril(ties, diagonal=-1) if dim == 1 else torch.triu(ties, diagonal=1)
    return higher + _count(lower, dim)


def _count(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """True entries along `dim`. Summing in int32 avoids the int64 copy of the mask that a plain sum makes."""
    return mask.sum(dim=dim, dtype=torch.int32)


def first_occurrence(keys: Sequence[Hashable]) -> np.ndarray:
    """For each key (a caption, or its token ids as bytes), the index of its first copy: index the text embeddings
    with it so that identical captions tie exactly."""
    first: dict = {}
    return np.array([first.setdefault(key, i) for i, key in enumerate(keys)], dtype=np.int64)


def rank_metrics(ranks: np.ndarray, ks=DEFAULT_KS) -> dict:
    ranks = np.asarray(ranks)
    metrics = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    metrics["median_rank"] = float(np.median(ranks))
    metrics["mean_rank"] = float(np.mean(ranks))
    return metrics


def retrieval_metrics(ranks: RetrievalRanks, ks=DEFAULT_KS) -> dict:
    return {
        "n": int(len(ranks.image_to_text)),
        "image_to_text": rank_metrics(ranks.image_to_text, ks),
        "text_to_image": rank_metrics(ranks.text_to_image, ks),
    }
