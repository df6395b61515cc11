"""Pretraining on Ray Train: tokenizer, datasets and checks on the driver, then a TorchTrainer, then the export.

The tokenizer is trained on the train captions before the trainer starts (unless `data.tokenizer_dir` is given) and
saved in the run's output directory; the model's vocabulary follows it. Checkpoints go to a local path or s3://.
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import ray
import ray.train
from ray.data import DataContext
from ray.train.torch import TorchTrainer

from biomedclip.config import ConfigError, to_dict
from biomedclip.data.train_input import count_rows, iter_captions, training_datasets
from biomedclip.io import storage_location
from biomedclip.model.artifact import (
    TOKENIZER_DIR,
    TOKENIZER_FILES,
    load_artifact,
    save_artifact,
    tokenizer_dir_of,
    weights_of,
)
from biomedclip.model.checkpoint import WORD_EMBEDDINGS_KEY, read_state_dict
from biomedclip.model.export import export_open_clip
from biomedclip.model.pretrained import initial_model
from biomedclip.progress import ProgressBoard, remote_bar
from biomedclip.text import Tokenizer
from biomedclip.train import curriculum
from biomedclip.train.config import PretrainConfig, check_initialisation
from biomedclip.train.loop import train_loop_per_worker
from biomedclip.train.tracking import require_mlflow


@dataclass
class PretrainResult:
    result: ray.train.Result
    artifact_dir: Path | None  # the final model (load_artifact), when exported
    open_clip_dir: Path | None


def prepare_tokenizer(cfg: PretrainConfig, output_dir: Path, progress: Callable[[str], None]) -> Tokenizer:
    """The tokenizer the starting weights were trained with (`train.init_from`, `model.text.pretrained`), else the
    configured one, else the run's own from an earlier start (WordPiece training is not reproducible, and a resumed
    run must keep its vocabulary), else one trained on the train captions now."""
    context = cfg.model.text.context_length
    saved = output_dir / "tokenizer"
    source = tokenizer_source(cfg, saved)
    if source is not None:
        progress(f"tokenizer: {source}")
        tokenizer = Tokenizer.load(source, context)
    else:
        progress(f"training a {cfg.data.vocab_size}-token vocabulary on the train captions")
        tokenizer = Tokenizer.train(iter_captions(cfg.data.path, cfg.data.s3_endpoint), cfg.data.vocab_size, context)
    tokenizer.save(saved)
    return tokenizer


def tokenizer_source(cfg: PretrainConfig, saved: Path) -> Path | None:
    if cfg.train.init_from:
        source = tokenizer_dir_of(cfg.train.init_from) or cfg.data.tokenizer_dir
        if source is None:
            raise ConfigError(
                f"train.init_from: {cfg.train.init_from} carries no tokenizer (none of "
                f"{', '.join(f'{TOKENIZER_DIR}/{name}' for name in TOKENIZER_FILES)}, {', '.join(TOKENIZER_FILES)}); "
                "set data.tokenizer_dir to the tokenizer that model was trained with")
        return Path(source)
    if cfg.model.text.pretrained:
        return Path(cfg.model.text.pretrained)
    if cfg.data.tokenizer_dir or (saved / "tokenizer.json").is_file():
        return Path(cfg.data.tokenizer_dir or saved)
    return None


def initial_state(cfg: PretrainConfig, progress: Callable[[str], None]) -> dict | None:
    """The starting weights of a new run, built once on the driver (every rank then loads the same ones), or None
    for a random start. The model config's vocabulary is the run tokenizer's by now."""
    init_from, text, vision = cfg.train.init_from, cfg.model.text, cfg.model.vision
    if not (init_from or text.pretrained or vision.pretrained):
        return None
    init_state = None
    if init_from:
        if text.pretrained or vision.pretrained:
            progress("model.text/vision.pretrained are not used: train.init_from's weights replace both towers")
        init_state = read_state_dict(weights_of(init_from))
        check_vocabulary(init_state, text.vocab, f"train.init_from {init_from}")
        progress(f"starting from {init_from}")
    else:
        progress("starting from " + ", ".join(f"{what} {path}" for what, path in (
            ("model.text.pretrained", text.pretrained), ("model.vision.pretrained", vision.pretrained)) if path))
    return initial_model(cfg.model, init_state).state_dict()


def check_vocabulary(state: dict, tokenizer_size: int, source: str) -> None:
    rows = state.get(WORD_EMBEDDINGS_KEY)
    if rows is not None and rows.shape[0] != tokenizer_size:
        raise ConfigError(f"{source}: its text embeddings have {rows.shape[0]} rows but the run's tokenizer has "
                          f"{tokenizer_size} tokens; use the tokenizer that model was trained with")


def localize_sources(cfg: PretrainConfig, output_dir: Path, progress: Callable[[str], None]) -> PretrainConfig:
    """Starting weights on S3 (`model.text.pretrained`, `model.vision.pretrained`, `train.init_from`) copied once into
    `<output_dir>/downloads/`. Only the driver reads them: workers get the weights from the object store."""
    endpoint = cfg.data.s3_endpoint or cfg.run.s3_endpoint

    def local(uri: str | None) -> str | None:
        filesystem, path = storage_location(uri, endpoint) if uri else (None, uri)
        if filesystem is None:
            return uri
        target = output_dir / "downloads" / path.replace("/", "_")
        if not target.exists():  # a later start (resume) reuses the copy
            kind = filesystem.get_file_info(path).type
            if kind == pafs.FileType.NotFound:
                raise ConfigError(f"{uri}: not found")
            progress(f"downloading {uri} to {target}")
            partial = target.with_name(target.name + ".partial")  # renamed when complete
            shutil.rmtree(partial, ignore_errors=True)
            (partial if kind == pafs.FileType.Directory else partial.parent).mkdir(parents=True, exist_ok=True)
            pafs.copy_files(path, str(partial), source_filesystem=filesystem)
            partial.rename(target)
        return str(target)

    model, train = cfg.model, cfg.train
    return dataclasses.replace(
        cfg, train=dataclasses.replace(train, init_from=local(train.init_from)),
        model=dataclasses.replace(model, text=dataclasses.replace(model.text, pretrained=local(model.text.pretrained)),
                                  vision=dataclasses.replace(model.vision, pretrained=local(model.vision.pretrained))))


def check_curriculum(cfg: PretrainConfig, train_rows: int) -> None:
    """Refuses, before any worker starts, a schedule that some allowed worker count cannot run."""
    low, high = cfg.run.worker_range
    for world_size in range(low, high + 1):
        curriculum.plan(cfg.train.curriculum, cfg.train.epochs, cfg.data.micro_batch, world_size, train_rows)


def workers_cpus(cfg: PretrainConfig) -> float:
    """CPUs the training workers hold at the largest allowed worker count."""
    return cfg.run.worker_range[1] * cfg.run.cpus_per_worker


def warn_if_data_starves(cfg: PretrainConfig, progress: Callable[[str], None]) -> None:
    """Ray Data decodes on the CPUs the workers leave free: with none left, training waits forever for its first
    batch. Only a warning, since an autoscaling cluster may still add nodes."""
    workers = workers_cpus(cfg)
    cluster_cpus = ray.cluster_resources().get("CPU", 0)
    if cluster_cpus - workers < 1:
        progress(f"warning: run.num_workers x run.cpus_per_worker = {workers:g} CPUs leaves less than one of "
                 f"the cluster's {cluster_cpus:g} CPUs for data preprocessing; training stalls unless nodes are "
                 "added (lower run.cpus_per_worker, or start Ray with more logical CPUs)")


def build_trainer(cfg: PretrainConfig, tokenizer: Tokenizer, datasets: dict, train_rows: int,
                  callbacks: Sequence[ray.train.UserCallback] = (), board: ProgressBoard | None = None,
                  initial: ray.ObjectRef | None = None) -> TorchTrainer:
    """`initial`: the starting weights in the object store (see `initial_state`), read by every worker of a new run."""
    run = cfg.run
    storage_fs, storage_path = storage_location(run.storage_path or str(Path(run.output_dir) / "checkpoints"),
                                              run.s3_endpoint)
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = cfg.data.preserve_order
    low, high = run.worker_range
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg), "tokenizer_json": tokenizer.backend.to_str(),
                           "train_rows": train_rows, "progress": board, "initial_state": initial},
        scaling_config=ray.train.ScalingConfig(num_workers=low if low == high else (low, high), use_gpu=run.use_gpu,
                                               resources_per_worker={"CPU": run.cpus_per_worker},
                                               accelerator_type=run.accelerator_type),
        run_config=ray.train.RunConfig(
            name=run.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.keep_checkpoints),
            callbacks=list(callbacks)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=ingest),
    )


def export_final(checkpoint: ray.train.Checkpoint, output_dir: Path, facts: dict | None = None) -> tuple[Path, Path]:
    """The last checkpoint as a model artifact and in open_clip's local-dir layout (`facts`: its model card's)."""
    with checkpoint.as_directory() as directory:
        model, tokenizer = load_artifact(directory)
    artifact = save_artifact(model, tokenizer, output_dir / "final")
    return artifact, export_open_clip(model, tokenizer, output_dir / "open_clip", facts)


def card_facts(cfg: PretrainConfig, train_rows: int, metrics: dict) -> dict:
    """What the model card says about data, recipe and evaluation: names, never the paths of this machine."""
    train, optim = cfg.train, cfg.train.optim
    starts = {"model.text.pretrained": cfg.model.text.pretrained,
              "model.vision.pretrained": cfg.model.vision.pretrained, "train.init_from": train.init_from}
    recipe = {
        "epochs": train.epochs,
        "global batch": ", ".join(f"{s.global_batch} until epoch {s.until_epoch}" if s.until_epoch else
                                  f"{s.global_batch}" for s in train.curriculum),
        "optimizer": f"AdamW betas {optim.betas}, eps {optim.eps:g}, lr {optim.lr:g}, "
                     f"weight decay {optim.weight_decay:g}",
        "schedule": f"cosine over {optim.schedule_unit} after {optim.warmup_steps} warm-up steps, lr scaling "
                    f"{optim.lr_scaling}",
        "patch dropout": f"{cfg.model.vision.patch_dropout:g} (last {train.unmasked_epochs} epochs unmasked)",
        "precision": train.precision,
        **{f"started from ({key})": Path(value).name for key, value in starts.items() if value},
        **({"frozen towers": ", ".join(train.frozen_towers)} if train.frozen_towers else {}),
    }
    return {"data": f"{train_rows} training image-caption pairs ({Path(cfg.data.path.rstrip('/')).name}).",
            "recipe": recipe,
            "metrics": {k: v for k, v in metrics.items() if k.startswith("val/") and isinstance(v, float)}}


def run_pretraining(cfg: PretrainConfig, progress: Callable[[str], None] = print,
                    callbacks: Sequence[ray.train.UserCallback] = (), show_bar: bool = True) -> PretrainResult:
    """`callbacks` run on the Train controller (e.g. a sweep's forwarding of each report to Ray Tune); `show_bar`
    draws a bar of the training steps on this process's terminal."""
    output_dir = Path(cfg.run.output_dir).resolve()
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(output_dir)))
    check_initialisation(cfg)
    if cfg.run.mlflow_tracking_uri:
        require_mlflow()
    data_context = DataContext.get_current()
    data_context.op_resource_reservation_enabled = False  # small clusters: let map tasks run in parallel
    train_rows = count_rows(cfg.data.path, "train", cfg.data.s3_endpoint)
    check_curriculum(cfg, train_rows)
    progress(f"{train_rows} training pairs")
    cfg = localize_sources(cfg, output_dir, progress)
    tokenizer = prepare_tokenizer(cfg, output_dir, progress)
    text = dataclasses.replace(cfg.model.text, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text=text))
    datasets = training_datasets(cfg.data.path, tokenizer, cfg.model.vision.image_size, augment=cfg.data.augment,
                                 s3_endpoint=cfg.data.s3_endpoint, batch_size=cfg.data.map_batch_size,
                                 tasks=cfg.data.map_tasks, text_views=tuple(cfg.data.text_views),
                                 concat=cfg.data.text_concat)
    state = initial_state(cfg, progress)
    initial = None if state is None else ray.put(state)
    del state  # the object store holds it now
    warn_if_data_starves(cfg, progress)
    progress(f"training {cfg.train.epochs} epochs on {cfg.run.num_workers} workers (vocabulary {tokenizer.vocab_size})")
    with remote_bar("training", unit="step", show=show_bar) as board:
        result = build_trainer(cfg, tokenizer, datasets, train_rows, callbacks, board, initial).fit()
    artifact = open_clip_dir = None
    if cfg.run.export and result.checkpoint is not None and cfg.run.stop_at_step is None:
        facts = card_facts(cfg, train_rows, result.metrics or {})
        artifact, open_clip_dir = export_final(result.checkpoint, output_dir, facts)
        progress(f"exported {artifact} and {open_clip_dir}")
    return PretrainResult(result, artifact, open_clip_dir)
