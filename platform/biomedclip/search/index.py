"""A figure index: image embeddings with pmcid, fig_id, caption and a small JPEG thumbnail, as Parquet shards under
`<index>/shards/` plus `<index>/manifest.json` naming the model that made the embeddings (its weights' sha256).

Queries are answered by exact cosine similarity, scored `chunk_rows` index rows at a time, so a query's extra memory
is one chunk of scores, whatever the index size.
"""
from __future__ import annotations

import base64
import json
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from biomedclip.io import OutputStore, filesystem

FORMAT = "biomedclip-figure-index/1"
MANIFEST = "manifest.json"
SHARDS = "shards"
METADATA_COLUMNS = ("pmcid", "fig_id", "caption", "thumbnail")


class SearchIndexError(ValueError):
    """An index that cannot be used: missing, malformed, or built by another model."""


def index_schema(embed_dim: int) -> pa.Schema:
    return pa.schema([pa.field("pmcid", pa.string()), pa.field("fig_id", pa.string()),
                      pa.field("caption", pa.string()), pa.field("thumbnail", pa.binary()),
                      pa.field("embedding", pa.list_(pa.float32(), embed_dim))])


def index_table(pmcid, fig_id, caption, thumbnail, embeddings: np.ndarray) -> pa.Table:
    """One shard's rows; `embeddings` is N x D float32, L2-normalised."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    columns = [pa.array(list(pmcid), pa.string()), pa.array(list(fig_id), pa.string()),
               pa.array(list(caption), pa.string()), pa.array(list(thumbnail), pa.binary()),
               pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])]
    return pa.Table.from_arrays(columns, schema=index_schema(embeddings.shape[1]))


def write_manifest(output: str, model_fingerprint: str, model_artifact: str, embed_dim: int, source: str,
                   problems: list[dict], problem_count: int) -> dict:
    """Lists the shards under `output/shards` and writes the manifest that makes the index usable."""
    store = OutputStore(output)
    shards = [f"{SHARDS}/{name}" for name in store.list_names(SHARDS) if name.endswith(".parquet")]
    count = sum(pq.ParquetFile(store.fs.open_input_file(store.path(shard))).metadata.num_rows for shard in shards)
    manifest = {"format": FORMAT, "model": {"fingerprint": model_fingerprint, "artifact": model_artifact},
                "embed_dim": embed_dim, "count": count, "source": source, "shards": shards,
                "problem_count": problem_count, "problems": problems}
    store.write_json(MANIFEST, manifest)
    return manifest


@dataclass
class FigureIndex:
    manifest: dict
    embeddings: np.ndarray  # N x D float32, L2-normalised
    metadata: pa.Table  # METADATA_COLUMNS, row-aligned with `embeddings`
    chunk_rows: int = 65_536

    @classmethod
    def load(cls, uri: str, model_fingerprint: str, chunk_rows: int = 65_536) -> FigureIndex:
        """Reads an index, refusing one whose embeddings were made by another model than `model_fingerprint`."""
        fs, root = filesystem(uri)
        manifest = _read_manifest(fs, root, uri)
        built_with = manifest["model"]["fingerprint"]
        if built_with != model_fingerprint:
            raise SearchIndexError(f"{uri}: the index was built with another model ({manifest['model']['artifact']}, "
                              f"{built_with}) than the one serving queries ({model_fingerprint}); rebuild it with "
                              "jobs/build_index.py --checkpoint <the served model>")
        tables = [pq.read_table(posixpath.join(root, shard), filesystem=fs) for shard in manifest["shards"]]
        table = pa.concat_tables(tables) if tables else index_schema(manifest["embed_dim"]).empty_table()
        if table.num_rows != manifest["count"]:
            raise SearchIndexError(f"{uri}: the shards hold {table.num_rows} rows, the manifest says "
                                   f"{manifest['count']}")
        column = table.column("embedding").combine_chunks()
        embeddings = column.values.to_numpy(zero_copy_only=False).reshape(-1, manifest["embed_dim"])
        return cls(manifest, np.ascontiguousarray(embeddings, dtype=np.float32),
                   table.select(list(METADATA_COLUMNS)).combine_chunks(), chunk_rows)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, cosine scores) of the k rows most similar to the unit-length `query`, best first; equal
        scores go to the lower row."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.embeddings.shape[1]:
            raise ValueError(f"query has {query.shape[0]} dimensions, the index {self.embeddings.shape[1]}")
        best_rows, best_scores = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        for start in range(0, len(self), self.chunk_rows):
            scores = self.embeddings[start:start + self.chunk_rows] @ query
            take = min(k, scores.shape[0])
            rows = np.argpartition(-scores, take - 1)[:take]
            best_rows = np.concatenate([best_rows, rows + start])
            best_scores = np.concatenate([best_scores, scores[rows]])
            order = np.lexsort((best_rows, -best_scores))[:k]
            best_rows, best_scores = best_rows[order], best_scores[order]
        return best_rows, best_scores

    def hits(self, query: np.ndarray, k: int) -> list[dict]:
        rows, scores = self.top_k(query, k)
        picked = self.metadata.take(pa.array(rows, pa.int64())).to_pylist()
        return [{"pmcid": row["pmcid"], "fig_id": row["fig_id"], "caption": row["caption"], "score": float(score),
                 "thumbnail": "data:image/jpeg;base64," + base64.b64encode(row["thumbnail"] or b"").decode()}
                for row, score in zip(picked, scores)]


def _read_manifest(fs, root: str, uri: str) -> dict:
    try:
        with fs.open_input_stream(posixpath.join(root, MANIFEST)) as stream:
            manifest = json.loads(stream.read())
    except FileNotFoundError as err:
        raise SearchIndexError(f"{uri}: no {MANIFEST} (not an index written by jobs/build_index.py?)") from err
    if manifest.get("format") != FORMAT:
        raise SearchIndexError(f"{uri}/{MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest
