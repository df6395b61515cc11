"""Per-epoch validation metrics: retrieval recall (evaluation's definition) and the full-set contrastive loss."""
from __future__ import annotations

import numpy as np
import torch

from biomedclip.evaluate.retrieval import first_occurrence, paired_ranks

RECALL_KS = (1, 5, 10)


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      token_ids: torch.Tensor) -> dict[str, float]:
    """Validation Recall@k with evaluation's definitions and tie rule (`biomedclip.evaluate.retrieval`), so the number
    a sweep selects on is the number the evaluation report shows. Pair i is image i and caption i (`token_ids[i]`)."""
    same_caption = first_occurrence([row.tobytes() for row in token_ids.cpu().numpy()])
    ranks = paired_ranks(image_features, text_features[torch.from_numpy(same_caption).to(text_features.device)],
                         device=image_features.device)
    return {**{f"val/i2t_R@{k}": float(np.mean(ranks.image_to_text <= k)) for k in RECALL_KS},
            **{f"val/t2i_R@{k}": float(np.mean(ranks.text_to_image <= k)) for k in RECALL_KS}}


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
