"""AdamW as CLIP trains it and a cosine learning-rate schedule with linear warmup.

Warm-up is counted in optimizer steps. The cosine decays over optimizer steps (`schedule_unit: steps`) or over
samples seen (`samples`): when a curriculum stage multiplies the batch by 16, the optimizer takes 16x fewer steps per
epoch, so a step-based cosine spends most of its decay on the small-batch epochs while a sample-based one decays
evenly over the data. `lr_scaling` multiplies a stage's learning rate by (its batch / the first stage's batch)
(`linear`), by its square root (`sqrt`), or not at all (`none`). `module_lrs` gives parts of the model their own base
learning rate (VQA: encoders slower than the fusion head); the schedule multiplies every base rate alike.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from biomedclip.config import ConfigError
from biomedclip.train.step import unwrap


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 2000
    warmup_fraction: float | None = None  # warm-up as a share of all steps, instead of warmup_steps
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    schedule_unit: Literal["steps", "samples"] = "steps"  # what the cosine decays over
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # per curriculum stage, relative to the first stage's batch
    # Base learning rate of the parameters under a module (name prefix up to a dot, e.g. {encoder: 1.0e-5}); others: lr
    module_lrs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"train.optim.lr: must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"train.optim.warmup_fraction: {self.warmup_fraction} is not in [0, 1)")
        for module, lr in self.module_lrs.items():
            if lr <= 0:
                raise ConfigError(f"train.optim.module_lrs.{module}: must be a positive number, got {lr!r}")

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps of a run of `total_steps` optimizer steps."""
        if self.warmup_fraction is None:
            return self.warmup_steps
        return int(self.warmup_fraction * total_steps)

    def lr_of(self, name: str) -> float:
        """Base learning rate of the parameter called `name`."""
        return next((lr for module, lr in self.module_lrs.items() if name == module or name.startswith(module + ".")),
                    self.lr)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only: gains, biases and the temperature (all of fewer than 2 dims) are exempt. One
    group per (base learning rate, decay) pair, in a fixed order; frozen parameters are left out."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in unwrap(model).named_parameters():
        if param.requires_grad:
            groups.setdefault((cfg.lr_of(name), param.ndim < 2), []).append(param)
    order = [cfg.lr, *cfg.module_lrs.values()]
    return torch.optim.AdamW(
        [{"params": groups[key], "lr": key[0], "weight_decay": 0.0 if key[1] else cfg.weight_decay}
         for key in sorted(groups, key=lambda key: (order.index(key[0]), key[1]))],
        lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


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
    warmup_steps = cfg.warmup(total_steps)
    seen = [0]
    for batch in step_batches:
        seen.append(seen[-1] + batch)
    warmup_samples = seen[min(warmup_steps, total_steps)]
    multipliers = []
    for step, batch in enumerate(step_batches):
        if cfg.schedule_unit == "steps" or step < warmup_steps:
            shape = cosine_with_warmup(step, warmup_steps, total_steps)
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
