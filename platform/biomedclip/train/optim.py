"""AdamW as CLIP trains it and a cosine learning-rate schedule with linear warmup.

Warm-up is counted in optimizer steps. The cosine decays over optimizer steps (`schedule_unit: steps`) or over
samples seen (`samples`): when a curriculum stage multiplies the batch by 16, the optimizer takes 16x fewer steps per
epoch, so a step-based cosine spends most of its decay on the small-batch epochs while a sample-based one decays
evenly over the data. `lr_scaling` multiplies a stage's learning rate by (its batch / the first stage's batch)
(`linear`), by its square root (`sqrt`), or not at all (`none`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
    schedule_unit: Literal["steps", "samples"] = "steps"  # what the cosine decays over
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # per curriculum stage, relative to the first stage's batch

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


def batch_scale(global_batch: int, first_batch: int, scaling: str) -> float:
    ratio = global_batch / first_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[scaling]


def lr_multipliers(cfg: OptimConfig, step_batches: Sequence[int]) -> list[float]:
    """Multiplier of `cfg.lr` at every optimizer step, given each step's global batch (the curriculum's plan)."""
    total_steps = len(step_batches)
    seen = [0]
    for batch in step_batches:
        seen.append(seen[-1] + batch)
    warmup_samples = seen[min(cfg.warmup_steps, total_steps)]
    multipliers = []
    for step, batch in enumerate(step_batches):
        if cfg.schedule_unit == "steps" or step < cfg.warmup_steps:
            shape = cosine_with_warmup(step, cfg.warmup_steps, total_steps)
        else:
            progress = (seen[step] - warmup_samples) / max(1, seen[-1] - warmup_samples)
            shape = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        multipliers.append(shape * batch_scale(batch, step_batches[0], cfg.lr_scaling))
    return multipliers


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: cosine_with_warmup(step, warmup_steps, total_steps))


def build_plan_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step_batches: Sequence[int]) -> LambdaLR:
    """The schedule of `lr_multipliers`; past the planned steps it stays at the last value."""
    multipliers = lr_multipliers(cfg, step_batches)
    return LambdaLR(optimizer, lambda step: multipliers[min(step, len(multipliers) - 1)])
