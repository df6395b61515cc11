"""The figure index without Ray: exact chunked top-k against a brute-force sort, the manifest, and the refusal of an
index built by another model."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from biomedclip.search import FigureIndex, SearchIndexError
from biomedclip.search.index import SHARDS, index_table, write_manifest


def write_index(directory, vectors: np.ndarray, fingerprint: str = "sha256:model-a", shard_rows: int = 40):
    (directory / SHARDS).mkdir(parents=True)
    for part, start in enumerate(range(0, len(vectors), shard_rows)):
        rows = range(start, min(start + shard_rows, len(vectors)))
        pq.write_table(index_table([f"PMC{i}" for i in rows], [f"F{i}" for i in rows], [f"caption {i}" for i in rows],
                                   [bytes([i % 256]) for i in rows], vectors[start:start + shard_rows]),
                       directory / SHARDS / f"part-{part:05d}.parquet")
    return write_manifest(str(directory), fingerprint, "/models/a", vectors.shape[1], "test", [], 0)


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_chunked_top_k_equals_a_full_sort(tmp_path, chunk_rows):
    vectors = unit_vectors(150, 16)
    vectors[90] = vectors[12]  # an exact tie: the lower row comes first
    manifest = write_index(tmp_path, vectors)
    assert manifest["count"] == 150 and len(manifest["shards"]) == 4
    index = FigureIndex.load(str(tmp_path), "sha256:model-a", chunk_rows=chunk_rows)
    for query in (vectors[12], unit_vectors(1, 16, seed=3)[0]):
        scores = vectors @ query
        want = np.lexsort((np.arange(len(scores)), -scores))[:10]
        rows, got = index.top_k(query, 10)
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_allclose(got, scores[want], rtol=1e-6)
    rows, _ = index.top_k(vectors[12], 500)  # k over the index size: every row once
    assert sorted(rows.tolist()) == list(range(150))
    hit = index.hits(vectors[12], 2)
    assert [(h["pmcid"], h["fig_id"], h["caption"]) for h in hit] == [("PMC12", "F12", "caption 12"),
                                                                     ("PMC90", "F90", "caption 90")]
    assert hit[0]["thumbnail"] == "data:image/jpeg;base64,DA==" and hit[0]["score"] == pytest.approx(1.0)


def test_an_index_built_by_another_model_or_broken_is_refused(tmp_path):
    write_index(tmp_path / "a", unit_vectors(10, 8))
    with pytest.raises(SearchIndexError, match="built with another model .*/models/a"):
        FigureIndex.load(str(tmp_path / "a"), "sha256:model-b")
    with pytest.raises(SearchIndexError, match="no manifest.json"):
        FigureIndex.load(str(tmp_path / "missing"), "sha256:model-a")
    (tmp_path / "a" / SHARDS / "part-00000.parquet").unlink()
    with pytest.raises(FileNotFoundError):
        FigureIndex.load(str(tmp_path / "a"), "sha256:model-a")
    with pytest.raises(ValueError, match="dimensions"):
        write_index(tmp_path / "b", unit_vectors(3, 8))
        FigureIndex.load(str(tmp_path / "b"), "sha256:model-a").top_k(np.ones(4), 1)
