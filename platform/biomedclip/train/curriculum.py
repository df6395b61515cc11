"""Batch-size curriculum as data: a list of stages `{until_epoch, global_batch}`, the last one open-ended.

A stage is realised by the number of accumulated micro-batches, k = global_batch / (micro_batch x workers), so the
micro-batch (the memory footprint) never changes. The plan gives the steps of every epoch, which fixes the length of
the learning-rate schedule across stage changes.
"""
from __future__ import annotations

from dataclasses import dataclass

from biomedclip.config import ConfigError


class CurriculumError(ConfigError):
    """A batch-size schedule that cannot run; the message names the entry."""


@dataclass(frozen=True)
class Stage:
    global_batch: int
    until_epoch: int | None = None  # exclusive; None: until the end of training


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    global_batch: int
    accumulation: int  # micro-batches per worker per step
    steps: int


def accumulation_steps(stage: Stage, index: int, micro_batch: int, world_size: int) -> int:
    per_step = micro_batch * world_size
    if stage.global_batch < per_step or stage.global_batch % per_step:
        raise CurriculumError(
            f"train.curriculum[{index}]: global_batch {stage.global_batch} is not a positive multiple of "
            f"micro_batch x workers = {micro_batch} x {world_size} = {per_step}")
    return stage.global_batch // per_step


def stage_index(curriculum: list[Stage], epoch: int) -> int:
    for index, stage in enumerate(curriculum):
        if stage.until_epoch is None or epoch < stage.until_epoch:
            return index
    raise CurriculumError(f"train.curriculum: no stage covers epoch {epoch} (make the last stage open-ended)")


def check_order(curriculum: list[Stage]) -> None:
    if not curriculum:
        raise CurriculumError("train.curriculum: at least one stage {global_batch: N} is needed")
    previous = 0
    for index, stage in enumerate(curriculum):
        if stage.until_epoch is None and index != len(curriculum) - 1:
            raise CurriculumError(f"train.curriculum[{index}]: only the last stage may omit until_epoch")
        if stage.until_epoch is not None and stage.until_epoch <= previous:
            raise CurriculumError(
                f"train.curriculum[{index}]: until_epoch {stage.until_epoch} must be greater than {previous}")
        previous = stage.until_epoch or previous


def plan(curriculum: list[Stage], epochs: int, micro_batch: int, world_size: int, train_rows: int) -> list[EpochPlan]:
    """Steps per epoch for this world size; refuses stages that do not divide or do not fit one epoch."""
    check_order(curriculum)
    shard_rows = train_rows // world_size  # Ray's equal split drops the remainder
    plans = []
    for epoch in range(epochs):
        index = stage_index(curriculum, epoch)
        stage = curriculum[index]
        k = accumulation_steps(stage, index, micro_batch, world_size)
        steps = shard_rows // (k * micro_batch)
        if steps == 0:
            raise CurriculumError(
                f"train.curriculum[{index}]: global_batch {stage.global_batch} exceeds the {train_rows} training "
                f"pairs of one epoch")
        plans.append(EpochPlan(epoch, stage.global_batch, k, steps))
    return plans
