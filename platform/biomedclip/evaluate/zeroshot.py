"""Zero-shot classification: one text embedding per class, compared with image embeddings.

A class's weight is the mean over templates of the normalised text embeddings of `template.format(class name)`,
normalised again (CLIP's prompt ensembling; equal to open_clip's `build_zero_shot_classifier`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from biomedclip.model.clip import BiomedCLIP
from biomedclip.text import Tokenizer


@torch.no_grad()
def class_weights(model: BiomedCLIP, tokenizer: Tokenizer, class_names: list[str], templates: list[str],
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """C x D unit vectors, one per class."""
    weights = []
    for name in class_names:
        tokens = tokenizer([template.format(name) for template in templates]).to(device)
        prompts = model.encode_text(tokens, normalize=True)
        weights.append(F.normalize(prompts.mean(dim=0), dim=-1))
    return torch.stack(weights).cpu()


def zeroshot_scores(image_features: np.ndarray, weights: torch.Tensor, logit_scale: float) -> np.ndarray:
    """N x C class probabilities: softmax over classes of logit_scale * cosine similarity."""
    logits = logit_scale * torch.as_tensor(image_features, dtype=torch.float32) @ weights.T
    return logits.softmax(dim=-1).numpy()
