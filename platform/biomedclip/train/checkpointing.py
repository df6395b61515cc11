"""Training checkpoints: a model artifact (weights + tokenizer, loadable by `load_artifact`) plus the training state.

The state holds the optimizer, the schedule, the loss scale (fp16), every worker's RNG states, the progress (epoch,
step within the epoch, global step, samples, the curriculum's batch) and the metric history for the curves. VQA
fine-tuning writes the same state next to its own artifact (`write_train_state`, `read_train_state`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from biomedclip.model.artifact import WEIGHTS, save_artifact
from biomedclip.model.checkpoint import check_vocabulary, load_weights, read_state_dict
from biomedclip.text import Tokenizer
from biomedclip.train.step import FP32, Precision

TRAIN_STATE = "train_state.pt"
CHECKPOINT_PREFIX = "checkpoint_step"  # + the global step on 8 digits: names sort by step


def checkpoint_name(global_step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{global_step:08d}"


@dataclass
class Progress:
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch` (the data position)
    global_step: int = 0
    samples_seen: int = 0
    global_batch: int = 0  # the curriculum stage's batch when the checkpoint was written
    history: dict[str, list] = field(default_factory=dict)  # metric name -> [(step, value)]
    resumes: list[int] = field(default_factory=list)  # global steps at which training resumed from a checkpoint

    def record(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.history.setdefault(name, []).append((self.global_step, float(value)))


def rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def all_rng_states(device: torch.device, world_size: int) -> list[dict]:
    """Every rank's RNG states, in rank order (a collective: every rank calls it)."""
    if world_size == 1:
        return [rng_state(device)]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, rng_state(device))
    return gathered


def write_train_state(directory: Path, optimizer, scheduler, progress, rng_states: list[dict],
                      precision: Precision = FP32) -> None:
    """`progress`: a dataclass (pretraining's `Progress`, VQA's epoch progress)."""
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "progress": asdict(progress),
                "rng": rng_states, "precision": precision.state_dict()}, Path(directory) / TRAIN_STATE)


def read_train_state(directory: Path, optimizer, scheduler, precision: Precision = FP32) -> tuple[dict, list[dict]]:
    """Loads optimizer, schedule and loss scale in place; returns the progress (a dict) and the per-rank RNG states."""
    # weights_only: a checkpoint store must not be a way to run code; the state holds only tensors and plain types
    state = torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    precision.load_state_dict(state.get("precision", {}))
    return state["progress"], state["rng"]


def write_checkpoint(directory: Path, model, tokenizer: Tokenizer, optimizer, scheduler, progress: Progress,
                     rng_states: list[dict], precision: Precision = FP32) -> Path:
    save_artifact(model, tokenizer, directory)
    write_train_state(directory, optimizer, scheduler, progress, rng_states, precision)
    return directory


def read_checkpoint(directory: Path, model, optimizer, scheduler, tokenizer_size: int, source: str,
                    precision: Precision = FP32) -> tuple[Progress, list[dict]]:
    """Loads weights, optimizer, schedule and loss scale in place; returns the progress and the per-rank RNG states.
    Refuses weights whose vocabulary is not the run tokenizer's (`tokenizer_size` tokens); `source` names the
    checkpoint."""
    state = read_state_dict(directory / WEIGHTS)
    check_vocabulary(state, tokenizer_size, f"checkpoint {source}")
    load_weights(model, state)
    progress, rng_states = read_train_state(directory, optimizer, scheduler, precision)
    return Progress(**progress), rng_states
