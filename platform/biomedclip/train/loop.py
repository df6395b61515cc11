"""The function every Ray Train worker runs: accumulated contrastive steps over its data shard, per-epoch validation,
checkpoints reported through `ray.train.report` (by every rank; only rank 0 attaches one), resume from the last one.

Resuming restores weights, optimizer, schedule, each rank's RNG states and the data position: the epoch's micro-batches
already trained on are skipped, which replays the same rows because the split and the seeded shuffle are deterministic.
"""
from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from tokenizers import Tokenizer as FastTokenizer

from biomedclip.config import from_dict
from biomedclip.data.train_input import PIXELS, TOKENS, length_bucketed
from biomedclip.model import build_model
from biomedclip.progress import ProgressBoard
from biomedclip.text import Tokenizer
from biomedclip.train import curriculum
from biomedclip.train.checkpointing import (
    Progress,
    all_rng_states,
    checkpoint_name,
    read_checkpoint,
    set_rng_state,
    write_checkpoint,
)
from biomedclip.train.config import PretrainConfig
from biomedclip.train.loss import gather_features, world
from biomedclip.train.metrics import contrastive_loss_chunked, retrieval_metrics
from biomedclip.train.optim import build_optimizer, build_plan_scheduler
from biomedclip.train.step import Precision, accumulate_gradients, apply_update, unwrap
from biomedclip.train.tracking import CURVES_PNG, Tracker, plot_curves


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = from_dict(PretrainConfig, loop_config["config"])
    tokenizer = Tokenizer(FastTokenizer.from_str(loop_config["tokenizer_json"]), cfg.model.text.context_length)
    PretrainWorker(cfg, tokenizer, loop_config["train_rows"], loop_config.get("progress"),
                   loop_config.get("initial_state")).run()


class PretrainWorker:
    def __init__(self, cfg: PretrainConfig, tokenizer: Tokenizer, train_rows: int,
                 board: ProgressBoard | None = None, initial=None):
        """`initial`: an object-store reference to the starting weights of a new run (ignored when resuming)."""
        self.cfg, self.tokenizer = cfg, tokenizer
        self.board = board
        self.rank, self.world_size = world()
        self.device = ray.train.torch.get_device()
        self.precision = Precision.for_device(cfg.train.precision, self.device)
        self.plans = curriculum.plan(cfg.train.curriculum, cfg.train.epochs, cfg.data.micro_batch, self.world_size,
                                     train_rows)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg.model)
        if initial is not None and ray.train.get_checkpoint() is None:
            model.load_state_dict(ray.get(initial))
        model.freeze(cfg.train.frozen_towers)
        self.model = ray.train.torch.prepare_model(model)
        self.optimizer = build_optimizer(self.model, cfg.train.optim)
        self.scheduler = build_plan_scheduler(self.optimizer, cfg.train.optim,
                                              [p.global_batch for p in self.plans for _ in range(p.steps)])
        self.progress = self._restore_or_seed()
        self.tracker = Tracker(cfg.run.output_dir, cfg.run.name, _flat_params(cfg), cfg.run.mlflow_tracking_uri,
                               cfg.run.s3_endpoint) if self.rank == 0 else None

    def _restore_or_seed(self) -> Progress:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            torch.manual_seed(self.cfg.train.seed * 1000 + self.rank + 1)  # each rank its own dropout masks
            return Progress()
        with checkpoint.as_directory() as directory:
            progress, rng_states = read_checkpoint(Path(directory), unwrap(self.model), self.optimizer, self.scheduler,
                                                   self.tokenizer.vocab_size, checkpoint.path, self.precision)
        progress.resumes.append(progress.global_step)
        if self.rank == 0:
            print(f"resuming at step {progress.global_step} (epoch {progress.epoch}, step {progress.step_in_epoch} "
                  f"of the epoch) from {checkpoint.path}", flush=True)
        if len(rng_states) == self.world_size:
            set_rng_state(rng_states[self.rank], self.device)
        else:  # the worker count changed (elastic): new streams, still reproducible
            torch.manual_seed(self.cfg.train.seed * 1000 + self.rank + 1 + progress.global_step * 7919)
        return progress

    def run(self) -> None:
        try:
            if self.cfg.train.eval_at_start and self.progress.global_step == 0:
                self._log(self._validate())  # the starting model's figures, at step 0
            for epoch in range(self.progress.epoch, self.cfg.train.epochs):
                if not self._train_epoch(epoch):
                    return  # stopped at run.stop_at_step, after its checkpoint
        finally:
            if self.tracker:
                self.tracker.close()

    def _set_patch_dropout(self, epoch: int) -> None:
        unmasked = epoch >= self.cfg.train.epochs - self.cfg.train.unmasked_epochs
        unwrap(self.model).visual.set_patch_dropout(0.0 if unmasked else self.cfg.model.vision.patch_dropout)

    def _steps(self, epoch: int, accumulation: int):
        """This worker's steps of `epoch`, each a list of `accumulation` micro-batches, in a seeded order."""
        data = self.cfg.data
        shard = ray.train.get_dataset_shard("train")
        shuffle = {"local_shuffle_buffer_size": data.shuffle_buffer or None,
                   "local_shuffle_seed": (self.cfg.train.seed * 100003 + epoch) * 64 + self.rank
                   if data.shuffle_buffer else None}
        if data.length_bucketing:
            windows = shard.iter_batches(batch_size=data.bucketing_window, batch_format="numpy", **shuffle)
            batches = ({column: torch.as_tensor(values, device=self.device) for column, values in batch.items()}
                       for batch in length_bucketed(windows, data.micro_batch, self.tokenizer.pad_token_id,
                                                    shuffle["local_shuffle_seed"]))
        else:
            batches = shard.iter_torch_batches(batch_size=data.micro_batch, drop_last=True, device=self.device,
                                               **shuffle)
        micro = ((b[PIXELS], b[TOKENS]) for b in batches)
        while step := list(itertools.islice(micro, accumulation)):
            if len(step) == accumulation:
                yield step

    def _train_epoch(self, epoch: int) -> bool:
        plan = self.plans[epoch]
        self._set_patch_dropout(epoch)
        self.model.train()
        steps = self._steps(epoch, plan.accumulation)
        for _ in range(self.progress.step_in_epoch):  # data position of a resumed epoch
            next(steps)
        waited_since = time.perf_counter()
        for step in steps:
            if self.progress.step_in_epoch >= plan.steps:
                continue  # drain the shard's remainder so every split finishes the epoch
            waited_since = self._train_step(step, plan, waited_since)
            if self.progress.global_step == self.cfg.run.stop_at_step:
                self._report({"train/loss": self.progress.history["train/loss"][-1][1]}, epoch)
                return False
            every = self.cfg.run.checkpoint_every_steps
            if every and self.progress.global_step % every == 0 and self.progress.step_in_epoch < plan.steps:
                self._report({"train/loss": self.progress.history["train/loss"][-1][1]}, epoch)
                waited_since = time.perf_counter()  # the checkpoint's time is not a data wait
        self.progress.epoch, self.progress.step_in_epoch = epoch + 1, 0
        metrics = self._validate()
        self._log(metrics)
        self._report(metrics, epoch)
        return True

    def _train_step(self, step: list, plan: curriculum.EpochPlan, waited_since: float) -> float:
        """One optimizer step; returns when it ended. Samples/s counts from `waited_since`, so data waits show."""
        loss = accumulate_gradients(self.model, step, self.precision)
        lr = self.scheduler.get_last_lr()[0]
        apply_update(self.model, self.optimizer, self.scheduler, self.cfg.train.optim.grad_clip, self.precision)
        ended = time.perf_counter()
        elapsed = ended - waited_since
        self.progress.global_step += 1
        self.progress.step_in_epoch += 1
        self.progress.samples_seen += plan.global_batch
        self.progress.global_batch = plan.global_batch
        metrics = {"train/loss": loss, "train/logit_scale": unwrap(self.model).logit_scale.exp().item(),
                   "train/lr": lr, "train/global_batch": plan.global_batch,
                   "train/samples_per_s": plan.global_batch / elapsed}
        self._log(metrics)
        self._show(f"epoch {plan.epoch + 1}/{self.cfg.train.epochs} loss {loss:.3f}")
        if self.rank == 0 and self.progress.global_step % self.cfg.train.log_every_steps == 0:
            print(f"epoch {plan.epoch} step {self.progress.global_step}: loss {loss:.4f} lr {lr:.2e} "
                  f"batch {plan.global_batch} ({metrics['train/samples_per_s']:.1f} samples/s)", flush=True)
        return ended

    def _show(self, note: str) -> None:
        """Moves the driver's bar (rank 0 only)."""
        if self.board is not None and self.rank == 0:
            self.board.update(self.progress.global_step, sum(p.steps for p in self.plans), note)

    def _log(self, metrics: dict[str, float]) -> None:
        self.progress.record(metrics)
        if self.tracker:
            self.tracker.log(metrics, self.progress.global_step)

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Loss and Recall@1/5/10 on the whole val split: each worker encodes its shard, all features are gathered."""
        model = unwrap(self.model).eval()
        images, texts, tokens = [], [], []
        for batch in ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=self.cfg.data.micro_batch,
                                                                          device=self.device):
            with self.precision.autocast(self.device):
                out = model(batch[PIXELS], batch[TOKENS])
            images.append(out["image_features"].float())
            texts.append(out["text_features"].float())
            tokens.append(batch[TOKENS])
        model.train()
        if not images:
            return {}
        all_images, all_texts = gather_features(torch.cat(images)), gather_features(torch.cat(texts))
        metrics = retrieval_metrics(all_images, all_texts, gather_features(torch.cat(tokens)))
        metrics["val/loss"] = contrastive_loss_chunked(all_images, all_texts, model.logit_scale.exp().item())
        if self.rank == 0:
            when = f"epoch {self.progress.epoch - 1}" if self.progress.global_step else "starting model"
            print(f"{when} val: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                  flush=True)
        if "val/i2t_R@1" in metrics:
            self._show(f"epoch {self.progress.epoch}/{self.cfg.train.epochs} val R@1 {metrics['val/i2t_R@1']:.3f}")
        return metrics

    def _report(self, metrics: dict[str, float], epoch: int) -> None:
        """Every rank reports; rank 0 attaches a checkpoint holding all ranks' RNG states."""
        rng_states = all_rng_states(self.device, self.world_size)
        metrics = {**metrics, "epoch": epoch, "global_step": self.progress.global_step}
        name = checkpoint_name(self.progress.global_step)
        if self.rank != 0:
            ray.train.report(metrics, checkpoint_dir_name=name)
            return
        with tempfile.TemporaryDirectory() as tmp:
            directory = write_checkpoint(Path(tmp), unwrap(self.model), self.tokenizer, self.optimizer,
                                         self.scheduler, self.progress, rng_states, self.precision)
            plot_curves(self.progress.history, directory / CURVES_PNG)
            self.tracker.publish(self.progress.history)  # the run's curves and TensorBoard events so far
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


def _flat_params(cfg: PretrainConfig) -> dict[str, str]:
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = str(value)

    walk("", asdict(cfg))
    return flat
