"""AdamW as CLIP trains it and a cosine learning-rate schedule with linear warmup, both in optimizer steps."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from biomedclip.config import ConfigError


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 2000
    grad_clip: float | None = None  # max global gradient norm; None: no clipping

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"train.optim.lr: must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.optim.warmup_steps: must be >= 0, got {self.warmup_steps}")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only: gains, biases and the temperature (all of fewer than 2 dims) are exempt."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    exempt = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: cosine_with_warmup(step, warmup_steps, total_steps))
