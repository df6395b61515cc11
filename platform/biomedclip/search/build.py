"""Builds a figure index with Ray Data: pair Parquet (local or any URI) -> thumbnails -> image embeddings through the
evaluation actor pool (`evaluate.embed`, one Predictor per actor, GPU when the cluster has one) -> index shards +
manifest (see index.py). A figure whose image does not decode is left out and reported by pmcid/fig_id.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
import ray
from pyarrow.fs import FileType

from biomedclip.evaluate.embed import EmbedConfig, map_pair_embeddings
from biomedclip.io import filesystem
from biomedclip.model.artifact import artifact_fingerprint
from biomedclip.model.transforms import decode_image
from biomedclip.pmc.schema import MODEL_INPUT_COLUMNS
from biomedclip.search.index import MANIFEST, SHARDS, index_table, write_manifest

MAX_REPORTED_PROBLEMS = 100


@dataclass
class IndexConfig:
    thumbnail_size: int = 128  # longest side of the stored JPEG thumbnail, pixels
    thumbnail_quality: int = 80
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    def __post_init__(self) -> None:
        if not 16 <= self.thumbnail_size <= 1024 or not 1 <= self.thumbnail_quality <= 95:
            raise ValueError("index: thumbnail_size must be in 16..1024 and thumbnail_quality in 1..95")


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


def _index_rows(batch: dict[str, np.ndarray]):
    ok = batch["error"] == ""
    return index_table(batch["pmcid"][ok], batch["fig_id"][ok], batch["caption"][ok], batch["thumbnail"][ok],
                       np.asarray(batch["image_embedding"][ok], dtype=np.float32))


def build_index(checkpoint: str | Path, data: str, output: str, config: IndexConfig | None = None) -> dict:
    """Indexes every figure of the pair Parquet under `data`; returns the manifest written to `output`."""
    config = config or IndexConfig()
    fingerprint = artifact_fingerprint(checkpoint)
    if not ray.is_initialized():
        ray.init()
    source_fs, source_path = filesystem(data)
    rows = ray.data.read_parquet(source_path, filesystem=source_fs).select_columns(MODEL_INPUT_COLUMNS)
    rows = rows.map_batches(_add_thumbnails, fn_kwargs={"size": config.thumbnail_size,
                                                        "quality": config.thumbnail_quality}, batch_format="numpy")
    embedded = map_pair_embeddings(rows, checkpoint, config.embed, with_text=False,
                                   keep_columns=("pmcid", "fig_id", "thumbnail")).materialize()
    failed = embedded.filter(lambda row: row["error"] != "")
    problems = [{"figure": row["key"], "error": row["error"]} for row in failed.take(MAX_REPORTED_PROBLEMS)]
    output_fs, output_path = filesystem(output)
    shards = f"{output_path.rstrip('/')}/{SHARDS}"
    for stale in output_fs.get_file_info([f"{output_path.rstrip('/')}/{MANIFEST}", shards]):
        if stale.type == FileType.File:  # a rebuild is unusable until its new manifest is written, last
            output_fs.delete_file(stale.path)
        elif stale.type == FileType.Directory:
            output_fs.delete_dir_contents(stale.path)
    embedded.map_batches(_index_rows, batch_format="numpy").write_parquet(shards, filesystem=output_fs)
    return write_manifest(output, fingerprint, str(checkpoint), _embed_dim(embedded), data, problems,
                          failed.count())


def _embed_dim(embedded: ray.data.Dataset) -> int:
    first = embedded.take(1)
    if not first:
        raise ValueError("the pairs hold no rows to index")
    return len(first[0]["image_embedding"])
