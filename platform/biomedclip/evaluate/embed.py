"""Embeddings through Ray Data: an actor pool loads the model artifact once per actor and embeds batches.

Each actor holds one `Predictor` (the shared inference path). Actors take one GPU each when the cluster has GPUs
(one actor per GPU by default), else CPUs. An example that fails to load (bad image bytes, unreadable file) comes
back with its error and a zero embedding; the driver drops it and reports it by name, so one bad file never stops an
evaluation.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from biomedclip import progress
from biomedclip.evaluate.datasets import Problem
from biomedclip.evaluate.retrieval import first_occurrence
from biomedclip.inference import Predictor
from biomedclip.io import s3_endpoint, storage_location
from biomedclip.io.transfer import local_copy
from biomedclip.model.transforms import decode_image
from biomedclip.pmc.schema import MODEL_INPUT_COLUMNS


@dataclass(frozen=True)
class EmbedConfig:
    batch_size: int = 64
    num_actors: int = 0  # 0: one per GPU when the cluster has GPUs, else 1
    cpus_per_actor: float = 1.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_actors < 0 or self.cpus_per_actor <= 0:
            raise ValueError("embed: batch_size and cpus_per_actor must be positive, num_actors >= 0")


@dataclass
class PairEmbeddings:
    keys: list[str]  # pmcid/fig_id
    captions: list[str]
    images: np.ndarray  # N x D, L2-normalised
    texts: np.ndarray | None  # N x D, or None when only images were embedded
    problems: list[Problem]


@dataclass
class DatasetEmbeddings:
    names: list[str]
    labels: list[str]
    features: np.ndarray  # N x D, L2-normalised
    problems: list[Problem]


def embed_loaded(predictor: Predictor, loaders: list[Callable]) -> tuple[np.ndarray, list[str]]:
    """Embeds each loader's image; (N x D with zero rows for failures, error message per item or "")."""
    pixels, errors = [], []
    for load in loaders:
        try:
            pixels.append(predictor.transform(load()))
            errors.append("")
        except Exception as err:  # any failure to read one example is reported by name; the rest goes on
            errors.append(f"unreadable image: {type(err).__name__}: {err}")
    features = np.zeros((len(loaders), predictor.embed_dim), dtype=np.float32)
    if pixels:
        encoded = predictor.encode_pixels(torch.from_numpy(np.stack(pixels)))
        features[[i for i, error in enumerate(errors) if not error]] = encoded
    return features, errors


def _local_predictor(artifact_dir: str, s3_endpoint: str | None) -> Predictor:
    """The artifact from this node's copy of it (a URI is downloaded once per node, again when it changed)."""
    directory = local_copy(artifact_dir, s3_endpoint, refresh=True)
    return Predictor.load(directory, device="cuda" if torch.cuda.is_available() else "cpu")


class PairEmbedder:
    """Ray Data callable: Parquet rows (image bytes + caption) -> image and caption embeddings."""

    def __init__(self, artifact_dir: str, with_text: bool, keep_columns: tuple[str, ...] = (),
                 s3_endpoint: str | None = None):
        self.predictor, self.with_text = _local_predictor(artifact_dir, s3_endpoint), with_text
        self.keep_columns = keep_columns  # input columns passed through unchanged (the figure index's metadata)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaders = [lambda data=data: decode_image(bytes(data)) for data in batch["image"]]
        features, errors = embed_loaded(self.predictor, loaders)
        captions = [str(c) for c in batch["caption"]]
        out = {
            "key": np.array([f"{p}/{f}" for p, f in zip(batch["pmcid"], batch["fig_id"])], dtype=object),
            "caption": np.array(captions, dtype=object),
            "image_embedding": features,
            "error": np.array(errors, dtype=object),
        }
        if self.with_text:
            out["text_embedding"] = self.predictor.encode_texts(captions)
        out.update({name: batch[name] for name in self.keep_columns})
        return out


class DatasetEmbedder:
    """Ray Data callable: dataset indices -> image embeddings, reading each image in the actor."""

    def __init__(self, artifact_dir: str, dataset, s3_endpoint: str | None = None):
        self.predictor, self.dataset = _local_predictor(artifact_dir, s3_endpoint), dataset

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in batch["id"]]
        features, errors = embed_loaded(self.predictor, [lambda i=i: self.dataset.load_image(i) for i in indices])
        return {"id": np.array(indices), "embedding": features, "error": np.array(errors, dtype=object)}


def embed_pairs(artifact_dir: str | Path, split_dir: str | Path, config: EmbedConfig | None = None,
                with_text: bool = True) -> PairEmbeddings:
    """Embeds every figure (and, with `with_text`, caption) of a Parquet split (a folder or URI), sorted by
    pmcid/fig_id."""
    filesystem, path = storage_location(str(split_dir))
    rows = ray.data.read_parquet(path, filesystem=filesystem).select_columns(MODEL_INPUT_COLUMNS)
    out = _collect(map_pair_embeddings(rows, artifact_dir, config, with_text))
    if not out:
        raise ValueError(f"{split_dir}: the split holds no rows")
    order = np.argsort(out["key"].astype(str), kind="stable")
    out = {name: column[order] for name, column in out.items()}
    ok = out["error"] == ""
    problems = [Problem(str(key), str(error)) for key, error in zip(out["key"][~ok], out["error"][~ok])]
    captions = [str(c) for c in out["caption"][ok]]
    return PairEmbeddings(
        keys=[str(k) for k in out["key"][ok]],
        captions=captions,
        images=out["image_embedding"][ok],
        texts=out["text_embedding"][ok][first_occurrence(captions)] if with_text else None,
        problems=problems,
    )


def map_pair_embeddings(rows: ray.data.Dataset, artifact_dir: str | Path, config: EmbedConfig | None = None,
                        with_text: bool = True, keep_columns: tuple[str, ...] = ()) -> ray.data.Dataset:
    """Lazily adds embeddings to pair rows (MODEL_INPUT_COLUMNS plus `keep_columns`, which pass through): columns
    key, caption, image_embedding, error (and text_embedding with `with_text`)."""
    kwargs = {"artifact_dir": str(artifact_dir), "with_text": with_text, "keep_columns": tuple(keep_columns)}
    return _map(rows, PairEmbedder, kwargs, config)


def embed_dataset(artifact_dir: str | Path, dataset, config: EmbedConfig | None = None) -> DatasetEmbeddings:
    """Embeds every sample of a labelled dataset (see datasets.py), in sample order."""
    samples = dataset.samples
    if not samples:
        raise ValueError("the dataset holds no samples: " + "; ".join(map(str, dataset.problems[:5])))
    indices = ray.data.range(len(samples))
    out = _collect(_map(indices, DatasetEmbedder, {"artifact_dir": str(artifact_dir), "dataset": dataset}, config),
                   total=len(samples))
    order = np.argsort(out["id"], kind="stable")
    ids, features, errors = out["id"][order], out["embedding"][order], out["error"][order]
    ok = errors == ""
    problems = list(dataset.problems) + [Problem(samples[i].name, str(e)) for i, e in zip(ids[~ok], errors[~ok])]
    return DatasetEmbeddings(
        names=[samples[i].name for i in ids[ok]],
        labels=[samples[i].label for i in ids[ok]],
        features=features[ok],
        problems=problems,
    )


def _map(dataset: ray.data.Dataset, embedder: type, kwargs: dict, config: EmbedConfig | None) -> ray.data.Dataset:
    config = config or EmbedConfig()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return dataset.map_batches(
        embedder,
        # the endpoint as the driver sees it ($AWS_ENDPOINT_URL): actors on nodes started earlier may lack it
        fn_constructor_kwargs={**kwargs, "s3_endpoint": s3_endpoint()},
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.num_actors or max(gpus, 1)),
        num_gpus=1 if gpus else 0,
        num_cpus=config.cpus_per_actor,
    )


def _collect(dataset: ray.data.Dataset, total: int | None = None) -> dict[str, np.ndarray]:
    """The embedded batches, gathered in the driver behind one progress bar (`total` examples, when known)."""
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    with progress.bar(total=total, desc="embedding", unit="example") as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for name, column in batch.items():
                parts[name].append(column)
            bar.update(len(next(iter(batch.values()))))
    return {name: np.concatenate(columns) for name, columns in parts.items()}
