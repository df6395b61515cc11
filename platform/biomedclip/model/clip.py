"""BiomedCLIP: the two towers and a learnable temperature."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from biomedclip.model.config import ModelConfig
from biomedclip.model.text_tower import TextTower
from biomedclip.model.vision import VisionTower

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)


class BiomedCLIP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.visual = VisionTower(cfg.vision, cfg.embed_dim)
        self.text = TextTower(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        if cfg.grad_checkpointing:
            self.set_grad_checkpointing(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def freeze(self, towers: list[str]) -> None:
        """Keeps the named towers ("visual", "text") as they are: no gradients, no optimizer state."""
        for name in towers:
            getattr(self, name).requires_grad_(False)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.visual(pixels)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text(token_ids)
        return F.normalize(features, dim=-1) if normalize else features

    def clamp_logit_scale(self) -> None:
        """Keeps the temperature at most 100, as CLIP does after every optimizer step."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def forward(self, pixels: torch.Tensor | None = None, token_ids: torch.Tensor | None = None) -> dict:
        return {
            "image_features": None if pixels is None else self.encode_image(pixels),
            "text_features": None if token_ids is None else self.encode_text(token_ids),
            "logit_scale": self.logit_scale.exp(),
        }


def build_model(cfg: ModelConfig) -> BiomedCLIP:
    return BiomedCLIP(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
