"""The function Tune runs for each trial (the Train V2 pattern): apply the trial's values to the base config, point
its outputs and checkpoints at the trial's own folder, run the pretraining TorchTrainer, and forward each epoch's
report to Tune so that ASHA can stop the trial between epochs.

A trial that is restarted (an interrupted sweep resumed) reuses its folder, so its TorchTrainer resumes from its
last checkpoint instead of starting over.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from biomedclip.train.config import PretrainConfig
from biomedclip.train.curriculum import Stage, stage_index
from biomedclip.train.trainer import run_pretraining
from biomedclip.tune.space import pretrain_config

EPOCHS = "epochs"  # finished epochs: Tune's time attribute for ASHA
SAMPLES_PER_S = "samples_per_s"
CHECKPOINTS = "checkpoints"  # the TorchTrainer's run name inside the trial folder
RUN_OUTPUT = "run"  # tokenizer, TensorBoard logs and curves of the trial


@dataclass
class TrialSetup:
    base: dict[str, Any]  # the base pretraining config (local paths made absolute)
    experiment_uri: str  # <storage_path>/<sweep name>: local folder or s3://...
    s3_endpoint: str | None = None


class EpochReportCallback(TuneReportCallback):
    """Forwards rank 0's end-of-epoch reports (those with validation metrics; mid-epoch checkpoints are skipped)
    with the count of finished epochs and the epoch's throughput: training pairs per second of wall time since
    the previous epoch's report (validation and checkpointing included; the first epoch also includes start-up)."""

    def __init__(self, curriculum: list[Stage]):
        super().__init__()
        self.curriculum = curriculum
        self.previous = (-1, 0, time.time())  # (epoch, global step, wall time) of the last forwarded report

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        rank0 = metrics[0]
        if "val/loss" not in rank0:
            return
        epoch, step, now = rank0["epoch"], rank0["global_step"], time.time()
        last_epoch, last_step, last_time = self.previous
        forwarded = {**rank0, EPOCHS: epoch + 1}
        if last_epoch == epoch - 1:  # unknown for the first epoch after a resume from a later epoch
            batch = self.curriculum[stage_index(self.curriculum, epoch)].global_batch
            forwarded[SAMPLES_PER_S] = (step - last_step) * batch / (now - last_time)
        self.previous = (epoch, step, now)
        super().after_report(run_context, [forwarded], checkpoint)


def trial_pretrain_config(setup: TrialSetup, values: dict[str, Any], trial_dir: Path) -> PretrainConfig:
    cfg = pretrain_config(setup.base, values)
    trial_uri = f"{setup.experiment_uri}/{trial_dir.name}"  # in the sweep's storage: no output lives on one node only
    run = dataclasses.replace(cfg.run, name=CHECKPOINTS, output_dir=f"{trial_uri}/{RUN_OUTPUT}", storage_path=trial_uri,
                              s3_endpoint=setup.s3_endpoint)
    return dataclasses.replace(cfg, run=run)


def run_trial(values: dict[str, Any], setup: TrialSetup) -> None:
    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg = trial_pretrain_config(setup, values, trial_dir)
    label = tune.get_context().get_trial_id()
    run_pretraining(cfg, progress=lambda line: print(f"[{label}] {line}", flush=True), show_bar=False,
                    callbacks=[EpochReportCallback(cfg.train.curriculum)])
