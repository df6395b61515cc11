"""The pretraining job's config: model, data, training and run sections, loaded with `biomedclip.config.load_config`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from biomedclip.config import ConfigError
from biomedclip.model import ModelConfig
from biomedclip.train.curriculum import Stage, check_order
from biomedclip.train.optim import OptimConfig


@dataclass(frozen=True)
class DataSection:
    path: str = ""  # directory or s3://bucket/prefix holding train/ and val/ Parquet shards
    s3_endpoint: str | None = None  # e.g. http://127.0.0.1:9000 for a local S3
    micro_batch: int = 32  # pairs per worker per forward pass
    augment: bool = True  # RandomResizedCrop for training images (random crops are not replayed on resume)
    shuffle_buffer: int = 256  # rows in each worker's seeded local shuffle buffer; 0: no shuffle
    # Group captions of similar length into the same micro-batch within windows of shuffle_buffer rows, so dynamic
    # padding cuts more. Changes batch composition (negatives of similar length): off by default. docs/performance.md
    length_bucketing: bool = False
    map_batch_size: int = 64  # rows per decode/tokenise task
    map_tasks: int | None = None  # parallel preprocessing tasks; None: as many as Ray schedules
    preserve_order: bool = True  # deterministic block order and split, so a resumed epoch sees the same rows
    tokenizer_dir: str | None = None  # None: train a WordPiece vocabulary on the train captions at job start
    vocab_size: int = 30522  # size of the trained vocabulary
    # Texts a training image is paired with: the caption, and the article's sentences citing the figure. With both,
    # each step reads a row with one drawn at random; text_concat appends the citing sentences to the caption instead.
    text_views: list[str] = field(default_factory=lambda: ["caption"])
    text_concat: bool = False

    def __post_init__(self) -> None:
        if self.micro_batch <= 0:
            raise ConfigError(f"data.micro_batch: must be positive, got {self.micro_batch}")
        if "caption" not in self.text_views or not set(self.text_views) <= {"caption", "inline_refs"}:
            raise ConfigError(f"data.text_views: {self.text_views} must hold caption, optionally inline_refs")
        if len(set(self.text_views)) != len(self.text_views):
            raise ConfigError(f"data.text_views: {self.text_views} repeats a view")
        if self.text_concat and "inline_refs" not in self.text_views:
            raise ConfigError("data.text_concat: needs inline_refs in data.text_views")
        if self.length_bucketing and self.shuffle_buffer < 2 * self.micro_batch:
            raise ConfigError(f"data.length_bucketing: needs data.shuffle_buffer (the window it sorts, "
                              f"{self.shuffle_buffer} rows) of at least 2 x data.micro_batch = {2 * self.micro_batch}")

    @property
    def bucketing_window(self) -> int:
        """Rows sorted together by length: the shuffle buffer rounded down to whole micro-batches."""
        return self.shuffle_buffer // self.micro_batch * self.micro_batch


TOWERS = ("visual", "text")


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 32
    curriculum: list[Stage] = field(default_factory=lambda: [Stage(global_batch=4096)])
    optim: OptimConfig = field(default_factory=OptimConfig)
    unmasked_epochs: int = 0  # last epochs trained with patch dropout off
    # auto: bf16 on GPUs that have it, else fp16 with loss scaling (V100); fp32 on CPU. Or bf16, fp16, fp32 as asked.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: int = 0
    log_every_steps: int = 10
    # Start a new run (step 0, fresh optimiser and schedule) from a trained model: an artifact directory, an open_clip
    # directory (our export, or BiomedCLIP's hub snapshot on disk) or a weights file. Resuming is not this: a run
    # with checkpoints continues from its last one.
    init_from: str | None = None
    require_init_from: bool = False  # the recipe fine-tunes (finetune.yaml): jobs refuse to start without init_from
    frozen_towers: list[str] = field(default_factory=list)  # "visual" and/or "text": kept as initialised
    eval_at_start: bool = False  # validate the starting model before the first step (logged at step 0)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.frozen_towers) - set(TOWERS))
        if unknown:
            raise ConfigError(f"train.frozen_towers: {unknown} (choose from {', '.join(TOWERS)})")
        if len(self.frozen_towers) == len(TOWERS):
            raise ConfigError("train.frozen_towers: freezing both towers leaves only the temperature to train")
        if self.epochs <= 0:
            raise ConfigError(f"train.epochs: must be positive, got {self.epochs}")
        if not 0 <= self.unmasked_epochs <= self.epochs:
            raise ConfigError(f"train.unmasked_epochs: {self.unmasked_epochs} is not in [0, epochs={self.epochs}]")
        check_order(self.curriculum)


@dataclass(frozen=True)
class RunSection:
    name: str = "pretrain"
    # tokenizer/, tensorboard/, curves.png, final/, open_clip/: a folder, s3://bucket/prefix or any pyarrow URI
    output_dir: str = "runs/pretrain"
    storage_path: str | None = None  # checkpoints: a folder or URI as output_dir; None: <output_dir>/checkpoints
    s3_endpoint: str | None = None
    num_workers: int | tuple[int, int] = 2  # fixed, or [min, max] for elastic training
    use_gpu: bool = False
    accelerator_type: str | None = None  # e.g. A100: every worker on that GPU type (a cluster's node types name it)
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    keep_checkpoints: int | None = 3
    stop_at_step: int | None = None  # end after the checkpoint at this step; rerun the same command to resume
    mlflow_tracking_uri: str | None = None  # also log to MLflow (needs the mlflow package)
    export: bool = True  # write the final model as an artifact and in open_clip's layout

    def __post_init__(self) -> None:
        sizes = self.worker_range
        if sizes[0] < 1 or sizes[0] > sizes[1]:
            raise ConfigError(f"run.num_workers: {self.num_workers} is not a positive count or [min, max] range")
        if self.accelerator_type and not self.use_gpu:
            raise ConfigError("run.accelerator_type: set run.use_gpu=true as well (it pins the GPU type)")

    @property
    def worker_range(self) -> tuple[int, int]:
        return (self.num_workers, self.num_workers) if isinstance(self.num_workers, int) else tuple(self.num_workers)


@dataclass(frozen=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunSection = field(default_factory=RunSection)


def check_initialisation(cfg: PretrainConfig) -> None:
    """Refuses a recipe that needs a starting model or a pretrained text tower when none is given (rather than
    silently training from scratch). A run started from a trained model (`train.init_from`) has its text tower."""
    if cfg.train.require_init_from and not cfg.train.init_from:
        raise ConfigError("train.init_from: this recipe fine-tunes a trained model; pass --set train.init_from=DIR "
                          "(BiomedCLIP's hub snapshot on disk, an open_clip export or a run's final/ artifact)")
    text = cfg.model.text
    if text.require_pretrained and not text.pretrained and not cfg.train.init_from:
        raise ConfigError(
            "model.text.pretrained: this recipe starts the text tower from PubMedBERT; download "
            "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract (config.json, weights, vocab.txt) and pass "
            "--set model.text.pretrained=DIR, or train from scratch with jobs/configs/paper_scratch.yaml")
