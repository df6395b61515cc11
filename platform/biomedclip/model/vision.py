"""Image tower: a timm VisionTransformer trunk pooled on the class token, then a bias-free linear projection.

Module names match open_clip's TimmModel (`trunk`, `head.proj`) so state dicts are interchangeable.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import PatchDropout
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from biomedclip.model.config import PATCH_SIZE, VISION_PRESETS, VisionConfig


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        width, depth, heads = VISION_PRESETS[cfg.preset]
        self.trunk = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=PATCH_SIZE,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            num_classes=0,
            global_pool="token",
        )
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.0), proj=nn.Linear(width, embed_dim, bias=False)))
        self.set_patch_dropout(cfg.patch_dropout)

    def set_patch_dropout(self, rate: float) -> None:
        """Drops this fraction of patch tokens (class token kept) in training mode; 0 turns it off. The new module
        follows the tower's mode, so an eval-mode model stays deterministic."""
        drop = PatchDropout(rate, num_prefix_tokens=self.trunk.num_prefix_tokens) if rate else nn.Identity()
        self.trunk.patch_drop = drop.train(self.training)

    @property
    def patch_dropout(self) -> float:
        drop = self.trunk.patch_drop
        return drop.prob if isinstance(drop, PatchDropout) else 0.0

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(pixels))
