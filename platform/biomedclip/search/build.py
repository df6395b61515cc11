"""Builds a figure index with Ray Data: pair Parquet (local or any URI) -> thumbnails -> image embeddings through the
evaluation actor pool (`evaluate.embed`, one Predictor per actor, GPU when the cluster has one) -> index shards +
manifest (see index.py), written through biomedclip.io (local or s3://). A figure whose image does not decode is
left out and reported by pmcid/fig_id.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from PIL import Image
from pyarrow.fs import FileType

from biomedclip.evaluate.embed import EmbedConfig, map_pair_embeddings
from biomedclip.io import OutputStore, filesystem
from biomedclip.model.artifact import artifact_fingerprint
from biomedclip.model.transforms import decode_image
from biomedclip.pmc.schema import MODEL_INPUT_COLUMNS
from biomedclip.search.index import MANIFEST, SHARDS, index_table, write_manifest

MAX_REPORTED_PROBLEMS = 100


@dataclass(frozen=True)
class IndexConfig:
    thumbnail_size: int = 128  # longest side of the stored JPEG thumbnail, pixels
    thumbnail_quality: int = 80
    shard_rows: int = 50_000  # figures per Parquet shard
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    def __post_init__(self) -> None:
        if not 16 <= self.thumbnail_size <= 1024 or not 1 <= self.thumbnail_quality <= 95 or self.shard_rows < 1:
            raise ValueError("index: thumbnail_size must be in 16..1024, thumbnail_quality in 1..95, shard_rows >= 1")


def thumbnail(data: bytes, size: int, quality: int) -> bytes:
    """A JPEG no larger than size x size; empty when the image does not decode (the embedder reports why)."""
    try:
        image = decode_image(bytes(data)).convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):  # reported by the embedder
        return b""
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _add_thumbnails(batch: dict[str, np.ndarray], size: int, quality: int) -> dict[str, np.ndarray]:
    batch["thumbnail"] = np.array([thumbnail(data, size, quality) for data in batch["image"]], dtype=object)
    return batch


def build_index(checkpoint: str | Path, data: str, output: str, config: IndexConfig | None = None) -> dict:
    """Indexes every figure of the pair Parquet under `data`; returns the manifest written to `output`.

    One streaming pass: Ray Data reads, thumbnails and embeds (the actor pool); the driver writes a shard per
    `shard_rows` figures as they arrive, so memory stays bounded. The manifest is written last: until then the
    output is not a usable index."""
    config = config or IndexConfig()
    fingerprint = artifact_fingerprint(checkpoint)
    if not ray.is_initialized():
        ray.init()
    source_fs, source_path = filesystem(data)
    rows = ray.data.read_parquet(source_path, filesystem=source_fs).select_columns(MODEL_INPUT_COLUMNS)
    rows = rows.map_batches(_add_thumbnails, fn_kwargs={"size": config.thumbnail_size,
                                                        "quality": config.thumbnail_quality}, batch_format="numpy")
    embedded = map_pair_embeddings(rows, checkpoint, config.embed, with_text=False,
                                   keep_columns=("pmcid", "fig_id", "thumbnail"))
    store = _cleared(output)
    problems: list[dict] = []
    problem_count, embed_dim = 0, None
    for shard, batch in enumerate(embedded.iter_batches(batch_size=config.shard_rows, batch_format="numpy")):
        ok = batch["error"] == ""
        problem_count += int((~ok).sum())
        problems += [{"figure": str(key), "error": str(error)} for key, error in
                     zip(batch["key"][~ok], batch["error"][~ok])][:MAX_REPORTED_PROBLEMS - len(problems)]
        embed_dim = batch["image_embedding"].shape[1]
        store.write_table(f"{SHARDS}/part-{shard:05d}.parquet", index_table(
            batch["pmcid"][ok], batch["fig_id"][ok], batch["caption"][ok], batch["thumbnail"][ok],
            np.asarray(batch["image_embedding"][ok], dtype=np.float32)))
    if embed_dim is None:
        raise ValueError(f"{data}: the pairs hold no rows to index")
    return write_manifest(output, fingerprint, str(checkpoint), embed_dim, data, problems, problem_count)


def _cleared(output: str) -> OutputStore:
    """The output store without a previous build's manifest and shards."""
    store = OutputStore(output)
    if store.exists(MANIFEST):
        store.fs.delete_file(store.path(MANIFEST))
    if store.fs.get_file_info(store.path(SHARDS)).type == FileType.Directory:
        store.fs.delete_dir_contents(store.path(SHARDS))
    return store
