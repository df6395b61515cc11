"""Fine-tuning the VQA model on Ray Train, on pretraining's stack: its optimiser and schedule (`train.optim`), the
precision chosen from the device and the optimizer step (`train.step`), its checkpoint state (`train.checkpointing`).

Every worker loads the encoders from the BiomedCLIP artifact (a folder or a URI, copied once per node), trains on its
DistributedSampler shard (DDP averages gradients; NCCL on GPU workers, gloo on CPU) and scores a disjoint slice of the
test records; loss sums and accuracy counts are all-reduced, so each epoch reports the exact loss and accuracy of the
whole sets. Every epoch rank 0 attaches a checkpoint: the VQA artifact itself plus the training state (optimizer,
schedule, loss scale, every rank's RNG states, epochs done and the history). A run started again with the same
`run.name` and storage (after a worker failure, up to `run.max_failures` times, or the same command rerun after
`run.stop_at_epoch`) resumes from its last checkpoint as if it had not stopped: the data order and the random crops
follow the epoch and the restored RNG. The artifact of the last epoch is copied to `<output>/model`, a folder or a URI.
`run.num_workers: 0` runs the same loop in-process (Ray Train's local mode, without DDP, checkpoints or resume).
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from biomedclip.config import ConfigError, from_dict, to_dict
from biomedclip.io import absolute, local_copy, staged_dir, storage_location
from biomedclip.io.transfer import join
from biomedclip.model.artifact import load_artifact
from biomedclip.model.transforms import eval_transform, train_transform
from biomedclip.progress import ProgressBoard, remote_bar
from biomedclip.text import Tokenizer
from biomedclip.train.checkpointing import (
    TRAIN_STATE,
    all_rng_states,
    read_train_state,
    set_rng_state,
    write_train_state,
)
from biomedclip.train.loss import world
from biomedclip.train.optim import OptimConfig, build_optimizer, build_scheduler
from biomedclip.train.step import Precision, optimizer_step, unwrap
from biomedclip.vqa.answers import AnswerVocab
from biomedclip.vqa.artifact import load_vqa_artifact, save_vqa_artifact
from biomedclip.vqa.datasets import LANGUAGES, VQA_RAD_FORMATS, VQARecord
from biomedclip.vqa.metrics import AccuracyCounts
from biomedclip.vqa.model import FusionConfig, VQAModel

UNSEEN = -1  # label of a test answer outside the vocabulary: never predicted, so always wrong
MODEL_DIR = "model"


@dataclass(frozen=True)
class VQAOptimConfig(OptimConfig):
    """Pretraining's optimiser config with fine-tuning's defaults: the fusion head at `lr`, the encoders slower."""
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_fraction: float | None = 0.1
    module_lrs: dict[str, float] = field(default_factory=lambda: {"encoder": 1e-5})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32  # per worker
    optim: VQAOptimConfig = field(default_factory=VQAOptimConfig)
    freeze_encoders: bool = False
    augment: bool = True  # random resized crop on training images
    # auto: bf16 on GPUs that have it, else fp16 with loss scaling (V100); fp32 on CPU. Or bf16, fp16, fp32 as asked.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train: epochs and batch_size must be at least 1")


@dataclass(frozen=True)
class RunSection:
    """Where and on what the run trains, as pretraining's `run` section says it."""
    name: str = "finetune_vqa"  # the Ray Train run: a rerun with the same name and storage resumes it
    storage_path: str | None = None  # checkpoints: local path or s3://bucket/prefix; None: <output>/checkpoints
    s3_endpoint: str | None = None  # else AWS_ENDPOINT_URL
    num_workers: int = 1  # 0: Ray Train's local mode, the loop runs in this process without Ray workers
    use_gpu: bool = False
    accelerator_type: str | None = None  # e.g. A100: every worker on that GPU type
    cpus_per_worker: float = 1.0
    max_failures: int = 0  # worker failures survived by restarting from the last checkpoint
    keep_checkpoints: int | None = 2
    stop_at_epoch: int | None = None  # end after the checkpoint of this epoch; rerun the same command to resume

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"run.num_workers: {self.num_workers} is negative (0 = Ray Train's local mode)")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"run.cpus_per_worker: must be positive, got {self.cpus_per_worker}")
        if self.accelerator_type and not self.use_gpu:
            raise ConfigError("run.accelerator_type: set run.use_gpu=true as well (it pins the GPU type)")
        if self.stop_at_epoch is not None and self.stop_at_epoch < 1:
            raise ConfigError(f"run.stop_at_epoch: must be at least 1, got {self.stop_at_epoch}")


@dataclass(frozen=True)
class DataConfig:
    lang: str = "en"  # SLAKE question language: en, zh or all
    vqa_rad_format: str = "auto"  # auto, public (original release file) or splits (trainset/testset.json)

    def __post_init__(self) -> None:
        if self.lang not in LANGUAGES:
            raise ConfigError(f"data.lang: {self.lang!r} is not one of {list(LANGUAGES)}")
        if self.vqa_rad_format not in VQA_RAD_FORMATS:
            raise ConfigError(f"data.vqa_rad_format: {self.vqa_rad_format!r} is not one of {list(VQA_RAD_FORMATS)}")


@dataclass(frozen=True)
class FinetuneConfig:
    fusion: FusionConfig = field(default_factory=FusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class FinetuneResult:
    history: list[dict]  # one entry per epoch: train loss/accuracy and test accuracies
    artifact: str | None  # the trained VQA artifact (folder or URI); None when stopped at run.stop_at_epoch


@dataclass
class EpochProgress:
    """What a checkpoint records of the run besides weights and optimiser."""
    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)


class VQATorchDataset(Dataset):
    """(pixels, token ids, answer class) per record. Each image is read once: kept as pixels when the transform is
    deterministic (evaluation), else as the decoded image that the random crop sees anew every epoch."""

    def __init__(self, records: list[VQARecord], vocab: AnswerVocab, tokenizer: Tokenizer, image_size: int,
                 augment: bool):
        self.records = records
        self.labels = [UNSEEN if (i := vocab.index(r.answer)) is None else i for r in records]
        self.token_ids = tokenizer([r.question for r in records])
        self.image_size = image_size
        self.deterministic = not augment
        self.transform = eval_transform(image_size) if self.deterministic else train_transform(image_size)
        self._cache: dict[Path, Image.Image | torch.Tensor] = {}

    def seed_crops(self, seed: list[int]) -> None:
        """Random crops from a generator seeded by `seed` (the run, epoch and rank), so a resumed epoch replays them."""
        if not self.deterministic:
            self.transform = train_transform(self.image_size, np.random.default_rng(seed))

    def __len__(self) -> int:
        return len(self.records)

    def _pixels(self, path: Path) -> torch.Tensor:
        if path not in self._cache:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            self._cache[path] = torch.from_numpy(self.transform(rgb)) if self.deterministic else rgb
        cached = self._cache[path]
        return cached if self.deterministic else torch.from_numpy(self.transform(cached))

    def __getitem__(self, index: int):
        return self._pixels(self.records[index].image), self.token_ids[index], self.labels[index]


@dataclass(frozen=True)
class ImageRoot:
    """Where every node finds the records' images: `uri`, a folder all nodes see or a URI that each node copies into
    its cache, holds what the driver read under `driver_path`."""
    uri: str
    driver_path: str

    def on_this_node(self, records: list[VQARecord], s3_endpoint: str | None) -> list[VQARecord]:
        root = local_copy(self.uri, s3_endpoint)
        if root == Path(self.driver_path):
            return records
        return [dataclasses.replace(r, image=root / Path(r.image).relative_to(self.driver_path)) for r in records]


def finetune(encoder: str | Path, train_records: list[VQARecord], test_records: list[VQARecord],
             vocab: AnswerVocab, cfg: FinetuneConfig, output: str | Path,
             image_root: ImageRoot | None = None) -> FinetuneResult:
    """Runs the TorchTrainer (Ray must be initialised unless `run.num_workers` is 0) on the BiomedCLIP artifact
    `encoder` and writes the trained VQA artifact to `<output>/model`; `output` is a folder or a URI. `image_root`:
    where workers on other nodes find the images (none: the records' paths are valid on every node)."""
    if not train_records:
        raise ValueError("no training records")
    unknown = sorted({r.answer for r in train_records if r.answer not in vocab})
    if unknown:
        raise ValueError(f"training answers missing from the vocabulary: {unknown[:5]}")
    output, encoder = absolute(output), absolute(encoder)  # workers run elsewhere
    with remote_bar("fine-tuning", unit="epoch") as board:
        result = _trainer(encoder, train_records, test_records, vocab, cfg, output, board, image_root).fit()
    history = result.return_value
    if len(history) < cfg.train.epochs:  # stopped at run.stop_at_epoch
        return FinetuneResult(history=history, artifact=None)
    artifact = join(output, MODEL_DIR)
    with result.checkpoint.as_directory() as directory, staged_dir(artifact, cfg.run.s3_endpoint) as target:
        shutil.copytree(directory, target, ignore=shutil.ignore_patterns(TRAIN_STATE), dirs_exist_ok=True)
    if cfg.run.num_workers == 0:  # local mode keeps the reported directory itself, not a copy in storage
        shutil.rmtree(result.checkpoint.path, ignore_errors=True)
    return FinetuneResult(history=history, artifact=artifact)


def _trainer(encoder: str, train_records: list[VQARecord], test_records: list[VQARecord], vocab: AnswerVocab,
             cfg: FinetuneConfig, output: str, board: ProgressBoard,
             image_root: ImageRoot | None) -> ray.train.torch.TorchTrainer:
    run = cfg.run
    storage_fs, storage_path = storage_location(run.storage_path or join(output, "checkpoints"), run.s3_endpoint)
    return ray.train.torch.TorchTrainer(  # Ray Train's default backend: NCCL on GPU workers, gloo on CPU
        train_loop_per_worker,
        train_loop_config={"encoder": encoder, "config": to_dict(cfg), "train_records": train_records,
                           "test_records": test_records, "answers": vocab.answers, "progress": board,
                           "image_root": image_root},
        scaling_config=ray.train.ScalingConfig(num_workers=run.num_workers, use_gpu=run.use_gpu,
                                               resources_per_worker={"CPU": run.cpus_per_worker},
                                               accelerator_type=run.accelerator_type),
        run_config=ray.train.RunConfig(
            name=run.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.keep_checkpoints)),
    )


def train_loop_per_worker(loop_config: dict) -> list[dict]:
    """Returns the history of every epoch so far (a resumed run's includes the epochs before it stopped)."""
    cfg = from_dict(FinetuneConfig, loop_config["config"])
    torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as directory:
        worker = VQAWorker(cfg, loop_config, Path(directory) if directory else None)
    return worker.run()


class VQAWorker:
    def __init__(self, cfg: FinetuneConfig, loop_config: dict, checkpoint: Path | None):
        """`checkpoint`: the directory of the run's last checkpoint, or None for a new run."""
        self.cfg, self.board = cfg, loop_config["progress"]
        self.rank, self.world_size = world()
        self.device = ray.train.torch.get_device()
        self.precision = Precision.for_device(cfg.train.precision, self.device)
        self.vocab = AnswerVocab(loop_config["answers"])
        torch.manual_seed(cfg.train.seed)  # the same new head on every rank
        model, self.tokenizer = self._model(loop_config["encoder"], checkpoint)
        if cfg.train.freeze_encoders:
            model.freeze_encoders()
        self.train_set, self.test_set = self._datasets(loop_config, model.encoder.config.vision.image_size)
        self.loader = ray.train.torch.prepare_data_loader(
            DataLoader(self.train_set, batch_size=cfg.train.batch_size, shuffle=True))
        self.optimizer = build_optimizer(model, cfg.train.optim)
        total_steps = cfg.train.epochs * len(self.loader)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.optim.warmup(total_steps), total_steps)
        self.model = ray.train.torch.prepare_model(model)
        self.progress = self._restore(checkpoint) if checkpoint else self._seed()

    def _model(self, encoder: str, checkpoint: Path | None) -> tuple[VQAModel, Tokenizer]:
        """The checkpoint's model and tokenizer when resuming, else a new head on the encoders."""
        if checkpoint is None:
            clip, tokenizer = load_artifact(local_copy(encoder, self.cfg.run.s3_endpoint))
            return VQAModel(clip, self.cfg.fusion, len(self.vocab)), tokenizer
        model, tokenizer, vocab = load_vqa_artifact(checkpoint)
        if vocab.answers != self.vocab.answers:
            raise ValueError(f"checkpoint {checkpoint}: its {len(vocab)} answers differ from the run's "
                             f"{len(self.vocab)} (the training records changed); start a new run.name")
        if model.fusion_config != self.cfg.fusion:
            raise ValueError(f"checkpoint {checkpoint}: fusion {model.fusion_config} differs from the config's "
                             f"{self.cfg.fusion}; start a new run.name")
        return model, tokenizer

    def _datasets(self, loop_config: dict, image_size: int) -> tuple[VQATorchDataset, VQATorchDataset]:
        train, test = loop_config["train_records"], loop_config["test_records"]
        if loop_config.get("image_root") is not None:
            train, test = (loop_config["image_root"].on_this_node(records, self.cfg.run.s3_endpoint)
                           for records in (train, test))
        train_set = VQATorchDataset(train, self.vocab, self.tokenizer, image_size, augment=self.cfg.train.augment)
        # A disjoint slice per worker, so the summed counts cover every test record exactly once.
        test_set = VQATorchDataset(test[self.rank::self.world_size], self.vocab, self.tokenizer, image_size,
                                   augment=False)
        return train_set, test_set

    def _seed(self) -> EpochProgress:
        torch.manual_seed(self.cfg.train.seed * 1000 + self.rank + 1)  # each rank its own dropout
        return EpochProgress()

    def _restore(self, checkpoint: Path) -> EpochProgress:
        progress, rng_states = read_train_state(checkpoint, self.optimizer, self.scheduler, self.precision)
        if len(rng_states) == self.world_size:
            set_rng_state(rng_states[self.rank], self.device)
        else:  # another worker count: new streams, still reproducible
            torch.manual_seed(self.cfg.train.seed * 1000 + self.rank + 1 + progress["epoch"] * 7919)
        if self.rank == 0:
            print(f"resuming after epoch {progress['epoch']} from {checkpoint}", flush=True)
        return EpochProgress(**progress)

    def run(self) -> list[dict]:
        epochs = self.cfg.train.epochs
        for epoch in range(self.progress.epoch, epochs):
            if self.world_size > 1:
                self.loader.sampler.set_epoch(epoch)
            self.train_set.seed_crops([self.cfg.train.seed, epoch, self.rank])
            metrics = {"epoch": epoch + 1, **self._train_epoch(),
                       **{f"test_{k}": v for k, v in self._evaluate().items()}}
            self.progress.epoch = epoch + 1
            self.progress.history.append(metrics)
            if self.rank == 0:
                self.board.update(epoch + 1, epochs, f"loss {metrics['train_loss']:.3f} "
                                  f"test acc {metrics['test_accuracy'] or 0:.3f}")
            stop = epoch + 1 == self.cfg.run.stop_at_epoch
            self._report(metrics, attach=self.cfg.run.num_workers > 0 or stop or epoch + 1 == epochs)
            if stop:
                break
        return self.progress.history

    def _train_epoch(self) -> dict:
        """Mean loss and accuracy over the epoch's batches of all workers (DistributedSampler pads the shards to
        equal length, so with W workers up to W-1 examples count twice)."""
        self.model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, examples
        for pixels, token_ids, labels in self.loader:
            with self.precision.autocast(self.device):
                logits = self.model(pixels, token_ids)
            loss = F.cross_entropy(logits.float(), labels)
            self.precision.scale(loss).backward()
            optimizer_step(self.model, self.optimizer, self.scheduler, self.cfg.train.optim.grad_clip,
                           self.precision)
            totals += torch.tensor([loss.item() * len(labels), (logits.argmax(-1) == labels).sum().item(),
                                    len(labels)], dtype=torch.float64)
        loss_sum, correct, count = self._all_reduce(totals).tolist()
        return {"train_loss": loss_sum / count, "train_accuracy": correct / count}

    @torch.no_grad()
    def _evaluate(self) -> dict:
        """Accuracy over this worker's test slice, summed over all workers."""
        model, dataset, batch_size = unwrap(self.model).eval(), self.test_set, self.cfg.train.batch_size
        counts = AccuracyCounts()
        for start in range(0, len(dataset), batch_size):
            batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            pixels, token_ids = (torch.stack([b[i] for b in batch]).to(self.device) for i in (0, 1))
            with self.precision.autocast(self.device):
                predicted = model(pixels, token_ids).argmax(-1).tolist()
            for offset, guess in enumerate(predicted):
                index = start + offset
                counts.add(guess == dataset.labels[index], dataset.records[index].answer_type)
        return AccuracyCounts.from_tensor(self._all_reduce(counts.as_tensor())).to_metrics()

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Summed over workers, on the device (NCCL reduces GPU tensors only), returned on the CPU."""
        if self.world_size == 1:
            return values
        values = values.to(self.device)
        dist.all_reduce(values)
        return values.cpu()

    def _report(self, metrics: dict, attach: bool) -> None:
        """Every rank reports; rank 0 attaches the checkpoint: the VQA artifact plus the training state. Local mode
        attaches only the last (it keeps the reported folder itself, and cannot resume)."""
        rng_states = all_rng_states(self.device, self.world_size)
        name = f"checkpoint_epoch{self.progress.epoch:04d}"
        if self.rank != 0 or not attach:
            ray.train.report(metrics, checkpoint_dir_name=name)
            return
        staging = save_vqa_artifact(unwrap(self.model), self.tokenizer, self.vocab,
                                    tempfile.mkdtemp(prefix="vqa_checkpoint_"))
        write_train_state(staging, self.optimizer, self.scheduler, self.progress, rng_states, self.precision)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)),
                         checkpoint_dir_name=name, delete_local_checkpoint_after_upload=True)
