"""Exact in-memory retrieval recall for the per-epoch validation (val sets are small; pair i matches pair i)."""
from __future__ import annotations

import torch

RECALL_KS = (1, 5, 10)


def recall_at_k(query: torch.Tensor, keys: torch.Tensor, ks=RECALL_KS, chunk: int = 1024) -> dict[int, float]:
    """Fraction of queries whose own key (same index) ranks in the top k by cosine similarity (ties count against)."""
    hits = dict.fromkeys(ks, 0)
    for start in range(0, len(query), chunk):
        sims = query[start:start + chunk] @ keys.T
        own = sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))]
        rank = (sims >= own[:, None]).sum(dim=1) - 1  # other keys at least as close as the true one
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {k: hits[k] / len(query) for k in ks}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, float]:
    i2t = recall_at_k(image_features, text_features)
    t2i = recall_at_k(text_features, image_features)
    return {**{f"val/i2t_R@{k}": v for k, v in i2t.items()}, **{f"val/t2i_R@{k}": v for k, v in t2i.items()}}


def contrastive_loss_chunked(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float,
                             chunk: int = 1024) -> float:
    """The full-set symmetric InfoNCE, computed a block of rows at a time (exact: each row needs only its logits)."""
    total = 0.0
    for start in range(0, len(image_features), chunk):
        rows = slice(start, start + chunk)
        labels = torch.arange(start, start + len(image_features[rows]), device=image_features.device)
        i2t = torch.nn.functional.cross_entropy(logit_scale * image_features[rows] @ text_features.T, labels,
                                                reduction="sum")
        t2i = torch.nn.functional.cross_entropy(logit_scale * text_features[rows] @ image_features.T, labels,
                                                reduction="sum")
        total += float(i2t + t2i) / 2
    return total / len(image_features)
