"""Pretraining on Ray Train: tokenizer, datasets and checks on the driver, then a TorchTrainer, then the export.

The tokenizer is trained on the train captions before the trainer starts (unless `data.tokenizer_dir` is given) and
saved in the run's output location; the model's vocabulary follows it. The output location (`run.output_dir`) and the
checkpoints' (`run.storage_path`) are each a local folder, s3:// or any pyarrow filesystem URI.
"""
from __future__ import annotations

import dataclasses
import hashlib
import posixpath
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
from biomedclip.io import filesystem, is_local, s3_endpoint, storage_location
from biomedclip.io.transfer import cache_root, exists, join, local_copy, staged_dir
from biomedclip.model.artifact import (
    TOKENIZER_DIR,
    TOKENIZER_FILES,
    load_artifact,
    save_artifact,
    tokenizer_dir_of,
    weights_of,
)
from biomedclip.model.checkpoint import check_vocabulary, read_state_dict
from biomedclip.model.export import export_open_clip
from biomedclip.model.pretrained import initial_model
from biomedclip.progress import ProgressBoard, remote_bar
from biomedclip.text import Tokenizer
from biomedclip.train import curriculum
from biomedclip.train.checkpointing import CHECKPOINT_PREFIX
from biomedclip.train.config import PretrainConfig, RunSection, check_initialisation
from biomedclip.train.loop import train_loop_per_worker
from biomedclip.train.tracking import require_mlflow

FINAL_DIR, OPEN_CLIP_DIR = "final", "open_clip"  # under run.output_dir, beside tokenizer/, tensorboard/, curves.png


@dataclass
class PretrainResult:
    result: ray.train.Result
    artifact_dir: str | None  # the final model (load_artifact after local_copy), when exported: a folder or URI
    open_clip_dir: str | None


def output_location(cfg: PretrainConfig) -> str:
    """run.output_dir as every node reaches it: an absolute local path, or the URI as given (refused when pyarrow
    cannot open its scheme)."""
    try:
        fs, path = filesystem(cfg.run.output_dir, cfg.run.s3_endpoint)
    except (ValueError, OSError) as err:
        raise ConfigError(f"run.output_dir: {err}") from None
    return path if isinstance(fs, pafs.LocalFileSystem) else cfg.run.output_dir.rstrip("/")


def checkpoint_storage(run: RunSection) -> str:
    """Where Ray Train keeps the run's checkpoints (under `<storage>/<run.name>/`)."""
    return run.storage_path or join(run.output_dir, "checkpoints")


def prepare_tokenizer(cfg: PretrainConfig, progress: Callable[[str], None]) -> Tokenizer:
    """The tokenizer the starting weights were trained with (`train.init_from`, `model.text.pretrained`), else the
    configured one, else the run's own from an earlier start (WordPiece training is not reproducible, and a resumed
    run must keep its vocabulary), else one trained on the train captions now. Saved in `<run.output_dir>/tokenizer`.
    Sources must be local by now (`localize_sources`); the run's own may be anywhere."""
    context, endpoint = cfg.model.text.context_length, cfg.run.s3_endpoint
    saved = join(cfg.run.output_dir, TOKENIZER_DIR)
    source = configured_tokenizer(cfg) or runs_tokenizer(cfg)
    if source is not None:
        progress(f"tokenizer: {source}")
        tokenizer = Tokenizer.load(local_copy(source, endpoint, refresh=True), context)
    else:
        progress(f"training a {cfg.data.vocab_size}-token vocabulary on the train captions")
        tokenizer = Tokenizer.train(iter_captions(cfg.data.path, cfg.data.s3_endpoint), cfg.data.vocab_size, context)
    if source != saved:
        with staged_dir(saved, endpoint) as directory:
            tokenizer.save(directory)
    return tokenizer


def configured_tokenizer(cfg: PretrainConfig) -> str | None:
    if cfg.train.init_from:
        source = tokenizer_dir_of(cfg.train.init_from) or cfg.data.tokenizer_dir
        if source is None:
            raise ConfigError(
                f"train.init_from: {cfg.train.init_from} carries no tokenizer (none of "
                f"{', '.join(f'{TOKENIZER_DIR}/{name}' for name in TOKENIZER_FILES)}, {', '.join(TOKENIZER_FILES)}); "
                "set data.tokenizer_dir to the tokenizer that model was trained with")
        return str(source)
    return cfg.model.text.pretrained or cfg.data.tokenizer_dir


def runs_tokenizer(cfg: PretrainConfig) -> str | None:
    """The run's tokenizer from an earlier start: `<run.output_dir>/tokenizer`, else the one in its newest checkpoint
    (a resume on a fresh cluster whose output_dir was another node's disk)."""
    saved = join(cfg.run.output_dir, TOKENIZER_DIR)
    if exists(join(saved, "tokenizer.json"), cfg.run.s3_endpoint):
        return saved
    checkpoint = tokenized_checkpoint(cfg)
    return None if checkpoint is None else join(checkpoint, TOKENIZER_DIR)


def tokenized_checkpoint(cfg: PretrainConfig) -> str | None:
    """The run's newest checkpoint when it carries a tokenizer, else None."""
    endpoint = cfg.run.s3_endpoint
    checkpoint = newest_checkpoint(join(checkpoint_storage(cfg.run), cfg.run.name), endpoint)
    if checkpoint is None or not exists(join(checkpoint, TOKENIZER_DIR, "tokenizer.json"), endpoint):
        return None
    return checkpoint


def check_resume_tokenizer(cfg: PretrainConfig, tokenizer: Tokenizer) -> None:
    """A run that resumes reads its checkpoint with the vocabulary it was trained with: refused before any worker
    starts when the tokenizer differs from the newest checkpoint's, even at the same size (the workers check the
    weights' size again)."""
    checkpoint = tokenized_checkpoint(cfg)
    if checkpoint is None:
        return
    trained_with = Tokenizer.load(local_copy(join(checkpoint, TOKENIZER_DIR), cfg.run.s3_endpoint, refresh=True),
                                  cfg.model.text.context_length)
    if trained_with.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ConfigError(f"{checkpoint}: the run resumes from this checkpoint, trained with a "
                          f"{trained_with.vocab_size}-token vocabulary, but the run's tokenizer has "
                          f"{tokenizer.vocab_size} tokens and another vocabulary; leave data.tokenizer_dir unset to "
                          "use the checkpoint's, or start a new run.name")


def newest_checkpoint(run_uri: str, endpoint: str | None = None) -> str | None:
    """The `checkpoint_step*` directory of the highest step under a run's checkpoint folder, or None."""
    fs, root = filesystem(run_uri, endpoint)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(info.base_name for info in infos
                   if info.type == pafs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX))
    return join(run_uri, names[-1]) if names else None


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


def localize_sources(cfg: PretrainConfig, progress: Callable[[str], None]) -> PretrainConfig:
    """Starting weights and tokenizers elsewhere than on this disk (`model.text.pretrained`, `model.vision.pretrained`,
    `train.init_from`, `data.tokenizer_dir`) copied once into this node's cache (`biomedclip.io.transfer`). Only the
    driver reads them: workers get the weights from the object store."""
    endpoint = cfg.data.s3_endpoint or cfg.run.s3_endpoint

    def local(uri: str | None) -> str | None:
        if uri is None or is_local(uri):
            return uri
        fs, path = filesystem(uri, endpoint)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise ConfigError(f"{uri}: not found")
        progress(f"{uri}: read from this node's copy under {cache_root()}")
        return str(local_copy(uri, endpoint) if kind == pafs.FileType.Directory else cached_file(fs, path, uri))

    model, train = cfg.model, cfg.train
    return dataclasses.replace(
        cfg, train=dataclasses.replace(train, init_from=local(train.init_from)),
        data=dataclasses.replace(cfg.data, tokenizer_dir=local(cfg.data.tokenizer_dir)),
        model=dataclasses.replace(model, text=dataclasses.replace(model.text, pretrained=local(model.text.pretrained)),
                                  vision=dataclasses.replace(model.vision, pretrained=local(model.vision.pretrained))))


def cached_file(fs: pafs.FileSystem, path: str, uri: str) -> Path:
    """A single remote weights file in this node's cache (directories go through `local_copy`)."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_root() / f"{posixpath.basename(path)}-{digest}" / posixpath.basename(path)
    if not target.is_file():  # a later start (resume) reuses the copy
        partial = target.with_name(target.name + ".partial")  # renamed when complete
        partial.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(partial), source_filesystem=fs)
        partial.rename(target)
    return target


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
    storage_fs, storage_path = storage_location(checkpoint_storage(run), run.s3_endpoint)
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


def export_final(checkpoint: ray.train.Checkpoint, run: RunSection, facts: dict | None = None) -> tuple[str, str]:
    """The last checkpoint as a model artifact (`<output_dir>/final`) and in open_clip's local-dir layout
    (`<output_dir>/open_clip`, `facts`: its model card's)."""
    with checkpoint.as_directory() as directory:
        model, tokenizer = load_artifact(directory)
    artifact, open_clip_dir = join(run.output_dir, FINAL_DIR), join(run.output_dir, OPEN_CLIP_DIR)
    with staged_dir(artifact, run.s3_endpoint) as directory:
        save_artifact(model, tokenizer, directory)
    with staged_dir(open_clip_dir, run.s3_endpoint) as directory:
        export_open_clip(model, tokenizer, directory, facts)
    return artifact, open_clip_dir


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
    # Workers see the driver's endpoint ($AWS_ENDPOINT_URL here): their environment was fixed when their node started.
    run = dataclasses.replace(cfg.run, output_dir=output_location(cfg), s3_endpoint=s3_endpoint(cfg.run.s3_endpoint))
    cfg = requested = dataclasses.replace(cfg, run=run)
    check_initialisation(cfg)
    if cfg.run.mlflow_tracking_uri:
        require_mlflow()
    data_context = DataContext.get_current()
    data_context.op_resource_reservation_enabled = False  # small clusters: let map tasks run in parallel
    train_rows = count_rows(cfg.data.path, "train", cfg.data.s3_endpoint)
    check_curriculum(cfg, train_rows)
    progress(f"{train_rows} training pairs")
    cfg = localize_sources(cfg, progress)
    tokenizer = prepare_tokenizer(cfg, progress)
    check_resume_tokenizer(cfg, tokenizer)
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
        facts = card_facts(requested, train_rows, result.metrics or {})  # the sources as given, not their copies
        artifact, open_clip_dir = export_final(result.checkpoint, cfg.run, facts)
        progress(f"exported {artifact} and {open_clip_dir}")
    return PretrainResult(result, artifact, open_clip_dir)
