"""The three evaluations end to end: embed through Ray Data, score, write the report. Each returns the report dict.

`checkpoint` is a model artifact directory (ours, or an open_clip BiomedCLIP directory), as `load_artifact` takes, a
local folder or a URI (copied once per node). Parquet splits and `output_dir` may be URIs too (s3://, any pyarrow
filesystem); the report and plots are written to a local folder uploaded when they are complete.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from biomedclip.config import ConfigError
from biomedclip.evaluate import report as reports
from biomedclip.evaluate.datasets import DataConfig, Problem, detect_format, open_dataset
from biomedclip.evaluate.embed import DatasetEmbeddings, EmbedConfig, embed_dataset, embed_pairs
from biomedclip.evaluate.linear_probe import LinearProbeConfig, linear_probe, stratified_split
from biomedclip.evaluate.metrics import classification_metrics
from biomedclip.evaluate.retrieval import paired_ranks, retrieval_metrics
from biomedclip.evaluate.tasks import ZeroShotTask, caption_label, load_task
from biomedclip.inference import Predictor
from biomedclip.io import is_local
from biomedclip.io.transfer import is_dir, join, local_copy, staged_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    chunk_size: int = 4096  # extra memory ~ 9 * chunk_size^2 bytes (150 MB at 4096), whatever N is
    device: str = "auto"  # where the similarity blocks are computed; auto: cuda when available

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or not self.ks or min(self.ks) < 1:
            raise ValueError("chunk_size and every k must be positive")


@dataclass(frozen=True)
class ZeroShotConfig:
    task: str = "pmc-modality"  # a built-in task (tasks.yaml) or one of tasks_file
    tasks_file: str | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)


def run_retrieval(checkpoint: str | Path, data: str | Path, config: EvaluateConfig | None = None,
                  output_dir: str | Path | None = None) -> dict:
    """Image->text and text->image Recall@k and median rank over all pairs of a Parquet split."""
    config = config or EvaluateConfig()
    split_dir = parquet_split(data, config.data.split)
    started = time.perf_counter()
    pairs = embed_pairs(checkpoint, split_dir, config.embed)
    embedded = time.perf_counter()
    device = _device(config.retrieval.device)
    ranks = paired_ranks(pairs.images, pairs.texts, config.retrieval.chunk_size, device)
    report = {
        "task": "retrieval",
        "checkpoint": str(checkpoint),
        "data": str(split_dir),
        "metrics": retrieval_metrics(ranks, config.retrieval.ks),
        "seconds": {"embed": round(embedded - started, 3), "rank": round(time.perf_counter() - embedded, 3)},
        **reports.skipped_summary(pairs.problems),
    }
    if output_dir is not None:
        with staged_dir(str(output_dir)) as out:
            reports.write_report(report, pairs.problems, out, "retrieval")
            reports.plot_recall_at_k(report["metrics"], out / "retrieval_recall.png")
    _log_skipped(pairs.problems)
    return report


def run_zeroshot(checkpoint: str | Path, data: str | Path, task: str | ZeroShotTask | None = None,
                 config: EvaluateConfig | None = None, output_dir: str | Path | None = None) -> dict:
    """Zero-shot classification of a labelled dataset (or of a Parquet split labelled by caption keywords)."""
    config = config or EvaluateConfig()
    if not isinstance(task, ZeroShotTask):
        task = load_task(task or config.zeroshot.task, config.zeroshot.tasks_file)
    names, features, labels, problems = _task_examples(checkpoint, data, task, config)
    predictor = Predictor.load(local_copy(str(checkpoint), refresh=True))
    scores = predictor.zero_shot(features, predictor.label_features(task.class_names, task.templates))
    metrics = classification_metrics(labels, scores.argmax(axis=1), task.class_names,
                                      scores[:, 1] if len(task.class_names) == 2 else None)
    report = {
        "task": "zeroshot",
        "zeroshot_task": task.name,
        "checkpoint": str(checkpoint),
        "data": str(data),
        "classes": task.classes,
        "templates": task.templates,
        "primary_metric": task.primary_metric,
        "primary": metrics.get(task.primary_metric),
        "metrics": metrics,
        **reports.skipped_summary(problems),
    }
    if output_dir is not None:
        stem = f"zeroshot_{task.name or 'task'}"
        with staged_dir(str(output_dir)) as out:
            reports.write_report(report, problems, out, stem)
            reports.write_scores(names, [task.class_names[i] for i in labels], scores, task.class_names,
                                 out / f"{stem}_scores.csv")
            reports.plot_confusion_matrix(metrics["confusion_matrix"], task.class_names, out / f"{stem}_confusion.png",
                                          f"zero-shot {task.name}")
    _log_skipped(problems)
    return report


def run_linear_probe(checkpoint: str | Path, data: str | Path, test_data: str | Path | None = None,
                     config: EvaluateConfig | None = None, output_dir: str | Path | None = None) -> dict:
    """Logistic regression on frozen image features for each fraction of the training labels."""
    config = config or EvaluateConfig()
    probe = config.linear_probe
    train = embed_dataset(checkpoint, open_dataset(data, config.data), config.embed)
    class_names = sorted(set(train.labels))
    (train_x, train_y), (test_x, test_y), problems = _probe_sets(checkpoint, train, class_names, test_data, config)
    results = linear_probe(train_x, train_y, test_x, test_y, class_names, probe)
    report = {
        "task": "linear-probe",
        "checkpoint": str(checkpoint),
        "data": str(data),
        "test_data": str(test_data) if test_data is not None else f"stratified {probe.test_fraction:g} of data",
        "classes": class_names,
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
        "results": results,
        **reports.skipped_summary(problems),
    }
    if output_dir is not None:
        with staged_dir(str(output_dir)) as out:
            reports.write_report(report, problems, out, "linear_probe")
            reports.plot_linear_probe(results, out / "linear_probe.png")
    _log_skipped(problems)
    return report


def _probe_sets(checkpoint, train: DatasetEmbeddings, class_names: list[str], test_data, config: EvaluateConfig):
    """(train features, labels), (test features, labels), problems: a stratified hold-out without `test_data`."""
    labels = np.array([class_names.index(label) for label in train.labels])
    if test_data is None:
        train_idx, test_idx = stratified_split(labels, config.linear_probe.test_fraction, config.linear_probe.seed)
        return ((train.features[train_idx], labels[train_idx]), (train.features[test_idx], labels[test_idx]),
                list(train.problems))
    test = embed_dataset(checkpoint, open_dataset(test_data, config.data), config.embed)
    _, test_x, test_y, unknown = _indexed(test, class_names)
    return (train.features, labels), (test_x, test_y), train.problems + test.problems + unknown


def parquet_split(data: str | Path, split: str) -> str:
    """`data/<split>` when it exists (an extraction output root), else `data` itself (a split folder); either may be
    a URI."""
    return join(str(data), split) if is_dir(join(str(data), split)) else str(data)


def _task_examples(checkpoint, data, task: ZeroShotTask, config: EvaluateConfig):
    """(names, image features, class indices, problems) of the examples whose labels the task knows."""
    data_format = task_data_format(task, data, config)
    if data_format == "parquet":
        return _keyword_examples(checkpoint, parquet_split(data, config.data.split), task, config)
    embeddings = embed_dataset(checkpoint, open_dataset(data, config.data, data_format), config.embed)
    names, features, labels, problems = _indexed(embeddings, task.labels)
    return names, features, labels, embeddings.problems + problems


def task_data_format(task: ZeroShotTask, data: str | Path, config: EvaluateConfig) -> str:
    """An explicit data.format wins over the task's own (e.g. LC25000 listed in a CSV); with neither, the path's
    contents decide."""
    for data_format in (config.data.format, task.format):
        if data_format != "auto":
            return data_format
    return detect_format(Path(data), config.data.split) if is_local(str(data)) else "parquet"


def _keyword_examples(checkpoint, split_dir: str, task: ZeroShotTask, config: EvaluateConfig):
    """Figures of a Parquet split labelled by the class keywords their captions mention."""
    if not task.keywords:
        raise ConfigError(f"{task.name}: a Parquet split needs a task with caption keywords")
    pairs = embed_pairs(checkpoint, split_dir, config.embed, with_text=False)
    labelled = [caption_label(task, caption) for caption in pairs.captions]
    keep = [i for i, (label, _) in enumerate(labelled) if label is not None]
    unlabelled = [Problem(key, why) for key, (label, why) in zip(pairs.keys, labelled) if label is None]
    labels = np.array([task.class_index(labelled[i][0]) for i in keep], dtype=np.int64)
    return [pairs.keys[i] for i in keep], pairs.images[keep], labels, pairs.problems + unlabelled


def _indexed(embeddings: DatasetEmbeddings, labels: list[str]):
    """(names, features, indices into `labels`, problems) of the examples whose label is one of `labels`; the others
    become problems."""
    known = [i for i, label in enumerate(embeddings.labels) if label in labels]
    problems = [Problem(name, f"unknown label {label!r} (expected one of {', '.join(labels)})")
                for name, label in zip(embeddings.names, embeddings.labels) if label not in labels]
    indices = np.array([labels.index(embeddings.labels[i]) for i in known], dtype=np.int64)
    return [embeddings.names[i] for i in known], embeddings.features[known], indices, problems


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _log_skipped(problems: list[Problem]) -> None:
    if problems:
        log.warning("skipped %d example(s), e.g. %s", len(problems), "; ".join(map(str, problems[:3])))
