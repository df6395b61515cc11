"""Symmetric InfoNCE over a batch sharded across workers.

Each worker scores its local images against every gathered text and its local texts against every gathered image,
so its logits are local_batch x global_batch, never global_batch^2. Features are gathered with gradient: the backward
of the gather sums every worker's contribution to a feature's gradient back onto the worker that produced it, so after
DDP's gradient averaging the parameters' gradient equals that of the full-batch loss.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_with_grad


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) outside distributed runs."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenates every worker's features in rank order, keeping the gradient path to the local slice."""
    _, world_size = world()
    if world_size == 1:
        return features
    return torch.cat(all_gather_with_grad(features), dim=0)


def local_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                 all_image_features: torch.Tensor, all_text_features: torch.Tensor):
    """(local images x all texts, local texts x all images), both scaled by the temperature."""
    logits_per_image = logit_scale * image_features @ all_text_features.T
    logits_per_text = logit_scale * text_features @ all_image_features.T
    return logits_per_image, logits_per_text


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     rank: int | None = None) -> torch.Tensor:
    """This worker's share of the symmetric InfoNCE loss; the full-batch loss is the mean over workers.

    `logit_scale` is the multiplier (already exponentiated). Features are this worker's local batch.
    """
    if rank is None:
        rank, _ = world()
    all_images = gather_features(image_features)
    all_texts = gather_features(text_features)
    logits_per_image, logits_per_text = local_logits(image_features, text_features, logit_scale, all_images, all_texts)
    return symmetric_cross_entropy(logits_per_image, logits_per_text, offset=rank * image_features.shape[0])


def symmetric_cross_entropy(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor, offset: int) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; row i's positive is column offset + i."""
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device) + offset
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
