"""Fine-tuning the VQA model on Ray Train: cross-entropy over the answer vocabulary, accuracy on the test records.

Every worker loads the encoders from the BiomedCLIP artifact, trains on its DistributedSampler shard (DDP averages
gradients) and scores a disjoint slice of the test records; loss sums and accuracy counts are all-reduced, so each
epoch reports the exact loss and accuracy of the whole sets. The last report carries the VQA artifact as a Ray Train
checkpoint, copied to the output folder at the end; the run returns the per-epoch history. `num_workers: 0` runs the
same loop in-process (Ray Train's local mode), without DDP.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from biomedclip.config import ConfigError, from_dict, to_dict
from biomedclip.model.artifact import load_artifact
from biomedclip.model.transforms import eval_transform, train_transform
from biomedclip.progress import ProgressBoard, remote_bar
from biomedclip.text import Tokenizer
from biomedclip.vqa.answers import AnswerVocab
from biomedclip.vqa.artifact import save_vqa_artifact
from biomedclip.vqa.datasets import LANGUAGES, VQA_RAD_FORMATS, VQARecord
from biomedclip.vqa.metrics import AccuracyCounts
from biomedclip.vqa.model import FusionConfig, VQAModel

UNSEEN = -1  # label of a test answer outside the vocabulary: never predicted, so always wrong


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4  # fusion and classifier
    encoder_lr: float = 1e-5  # the encoders, unless frozen
    freeze_encoders: bool = False
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    augment: bool = True  # random resized crop on training images
    num_workers: int = 1  # 0: Ray Train's local mode, the loop runs in this process without Ray workers
    cpus_per_worker: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.cpus_per_worker < 1:
            raise ConfigError("train: epochs, batch_size and cpus_per_worker must be at least 1")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers: {self.num_workers} is negative (0 = Ray Train's local mode)")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"train.warmup_fraction: {self.warmup_fraction} is not in [0, 1)")


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
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class FinetuneResult:
    history: list[dict]  # one entry per epoch: train loss/accuracy and test accuracies
    artifact_dir: Path  # the trained VQA artifact


class VQATorchDataset(Dataset):
    """(pixels, token ids, answer class) per record. Each image is read once: kept as pixels when the transform is
    deterministic (evaluation), else as the decoded image that the random transform sees anew every epoch."""

    def __init__(self, records: list[VQARecord], vocab: AnswerVocab, tokenizer: Tokenizer, transform,
                 deterministic: bool):
        self.records = records
        self.labels = [UNSEEN if (i := vocab.index(r.answer)) is None else i for r in records]
        self.token_ids = tokenizer([r.question for r in records])
        self.transform = transform
        self.deterministic = deterministic
        self._cache: dict[Path, Image.Image | torch.Tensor] = {}

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


def finetune(checkpoint: str | Path, train_records: list[VQARecord], test_records: list[VQARecord],
             vocab: AnswerVocab, cfg: FinetuneConfig, output_dir: str | Path,
             run_name: str = "finetune_vqa") -> FinetuneResult:
    """Runs the TorchTrainer (Ray must be initialised; Ray Train's files go to output_dir/ray) and writes the trained
    VQA artifact to output_dir/model."""
    if not train_records:
        raise ValueError("no training records")
    unknown = sorted({r.answer for r in train_records if r.answer not in vocab})
    if unknown:
        raise ValueError(f"training answers missing from the vocabulary: {unknown[:5]}")
    output_dir = Path(output_dir).resolve()
    with remote_bar("fine-tuning", unit="epoch") as board:
        result = _trainer(checkpoint, train_records, test_records, vocab, cfg, output_dir, run_name, board).fit()
    artifact_dir = Path(result.checkpoint.to_directory(str(output_dir / "model")))
    if cfg.train.num_workers == 0:  # local mode keeps the reported directory itself, not a copy in storage
        shutil.rmtree(result.checkpoint.path, ignore_errors=True)
    return FinetuneResult(history=result.return_value, artifact_dir=artifact_dir)


def _trainer(checkpoint: str | Path, train_records: list[VQARecord], test_records: list[VQARecord],
             vocab: AnswerVocab, cfg: FinetuneConfig, output_dir: Path, run_name: str,
             board: ProgressBoard) -> ray.train.torch.TorchTrainer:
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"checkpoint": str(Path(checkpoint).resolve()), "config": to_dict(cfg),
                           "train_records": train_records, "test_records": test_records,
                           "answers": vocab.answers, "progress": board},
        torch_config=ray.train.torch.TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers,
                                               resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=run_name, storage_path=str(output_dir / "ray")),
    )


def train_loop_per_worker(loop_config: dict) -> list[dict]:
    cfg = from_dict(FinetuneConfig, loop_config["config"])
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.cpus_per_worker)
    vocab = AnswerVocab(loop_config["answers"])
    encoder, tokenizer = load_artifact(loop_config["checkpoint"])
    model = VQAModel(encoder, cfg.fusion, len(vocab))
    if cfg.train.freeze_encoders:
        model.freeze_encoders()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    train_set, test_set = _worker_datasets(loop_config, vocab, tokenizer, encoder.config.vision.image_size,
                                           cfg.train.augment, rank, world_size)
    train_loader = ray.train.torch.prepare_data_loader(
        DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True))
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps=cfg.train.epochs * len(train_loader))
    ddp_model = ray.train.torch.prepare_model(model)

    history = []
    for epoch in range(cfg.train.epochs):
        if world_size > 1:
            train_loader.sampler.set_epoch(epoch)
        metrics = {"epoch": epoch + 1, **train_epoch(ddp_model, train_loader, optimizer, scheduler),
                   **{f"test_{k}": v for k, v in evaluate(model, test_set, cfg.train.batch_size).items()}}
        history.append(metrics)
        if rank == 0:
            loop_config["progress"].update(epoch + 1, cfg.train.epochs, f"loss {metrics['train_loss']:.3f} "
                                           f"test acc {metrics['test_accuracy'] or 0:.3f}")
        _report(metrics, model, tokenizer, vocab, last=epoch == cfg.train.epochs - 1, rank=rank)
    return history


def _worker_datasets(loop_config: dict, vocab: AnswerVocab, tokenizer: Tokenizer, image_size: int, augment: bool,
                     rank: int, world_size: int) -> tuple[VQATorchDataset, VQATorchDataset]:
    transform = train_transform(image_size) if augment else eval_transform(image_size)
    train_set = VQATorchDataset(loop_config["train_records"], vocab, tokenizer, transform,
                                deterministic=not augment)
    # A disjoint slice per worker, so the summed counts cover every test record exactly once.
    test_set = VQATorchDataset(loop_config["test_records"][rank::world_size], vocab, tokenizer,
                               eval_transform(image_size), deterministic=True)
    return train_set, test_set


def build_optimizer(model: VQAModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in model.head_parameters() if p.requires_grad], "lr": cfg.lr}]
    encoder_params = model.encoder_parameters()
    if encoder_params:
        groups.append({"params": encoder_params, "lr": cfg.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, int(cfg.warmup_fraction * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(model, loader, optimizer, scheduler) -> dict:
    """Mean loss and accuracy over the epoch's batches of all workers (DistributedSampler pads the shards to equal
    length, so with W workers up to W-1 examples count twice)."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, examples
    for pixels, token_ids, labels in loader:
        logits = model(pixels, token_ids)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        totals += torch.tensor([loss.item() * len(labels), (logits.argmax(-1) == labels).sum().item(), len(labels)],
                               dtype=torch.float64)
    loss_sum, correct, count = _all_reduce(totals).tolist()
    return {"train_loss": loss_sum / count, "train_accuracy": correct / count}


@torch.no_grad()
def evaluate(model: VQAModel, dataset: VQATorchDataset, batch_size: int) -> dict:
    """Accuracy over this worker's test slice, summed over all workers."""
    model.eval()
    device = ray.train.torch.get_device()
    counts = AccuracyCounts()
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        pixels, token_ids = (torch.stack([b[i] for b in batch]).to(device) for i in (0, 1))
        predicted = model(pixels, token_ids).argmax(-1).tolist()
        for offset, guess in enumerate(predicted):
            index = start + offset
            counts.add(guess == dataset.labels[index], dataset.records[index].answer_type)
    return AccuracyCounts.from_tensor(_all_reduce(counts.as_tensor())).to_metrics()


def _report(metrics: dict, model: VQAModel, tokenizer: Tokenizer, vocab: AnswerVocab, last: bool, rank: int) -> None:
    """Every worker reports every epoch; rank 0 attaches the artifact to the last report."""
    if not (last and rank == 0):
        ray.train.report(metrics)
        return
    staging = save_vqa_artifact(model, tokenizer, vocab, tempfile.mkdtemp(prefix="vqa_artifact_"))
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)),
                     delete_local_checkpoint_after_upload=True)


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values
