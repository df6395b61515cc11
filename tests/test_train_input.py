"""The driver-side reads of the training input (row count, tokenizer captions) on a local folder and on S3."""
from __future__ import annotations

import io

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomedclip.config import ConfigError
from biomedclip.data.train_input import PIXELS, TOKENS, count_rows, iter_captions, length_bucketed
from biomedclip.train.config import DataSection

SHARDS = {"train/part-0.parquet": ["a chest x-ray", "two red cells"], "train/part-1.parquet": ["an h&e section"],
          "val/part-0.parquet": ["a bar chart"]}


def shard_bytes(captions: list[str]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"caption": captions, "fig_id": [f"F{i}" for i in range(len(captions))]}), buffer)
    return buffer.getvalue()


@pytest.fixture
def local_pairs(tmp_path):
    for name, captions in SHARDS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(shard_bytes(captions))
    (tmp_path / "train" / "_SUCCESS").write_text("")  # not a shard: ignored
    return str(tmp_path), None


@pytest.fixture
def s3_pairs(s3_server):
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="pairs")
    for name, captions in SHARDS.items():
        s3.put_object(Bucket="pairs", Key=f"pmc/{name}", Body=shard_bytes(captions))
    s3.put_object(Bucket="pairs", Key="pmc/train/manifest.json", Body=b"{}")
    return "s3://pairs/pmc", s3_server


@pytest.mark.parametrize("pairs", ["local_pairs", "s3_pairs"])
def test_rows_and_captions_of_a_split(pairs, request):
    path, endpoint = request.getfixturevalue(pairs)
    assert count_rows(path, "train", endpoint) == 3
    assert count_rows(path, "val", endpoint) == 1
    assert sorted(iter_captions(path, endpoint)) == ["a chest x-ray", "an h&e section", "two red cells"]


def bucketing_windows(lengths: list[int], window: int, context: int = 32):
    """Windows of rows whose token_ids hold a caption of the given length (pad id 0) and a row index as `pixels`."""
    tokens = np.zeros((len(lengths), context), np.int64)
    for row, length in enumerate(lengths):
        tokens[row, :length] = 7
    rows = np.arange(len(lengths))
    return [{PIXELS: rows[i:i + window], TOKENS: tokens[i:i + window]} for i in range(0, len(lengths), window)]


def test_length_bucketing_groups_similar_captions_and_keeps_every_whole_micro_batch():
    lengths = list(np.random.default_rng(0).integers(1, 33, size=40))  # windows of 16, 16 and 8 rows
    batches = list(length_bucketed(bucketing_windows(lengths, 16), micro_batch=4, pad_token_id=0, seed=3))
    assert len(batches) == 10 and all(len(b[PIXELS]) == 4 for b in batches)
    assert sorted(np.concatenate([b[PIXELS] for b in batches]).tolist()) == list(range(40))  # no row lost or repeated
    for batch in batches:  # each micro-batch holds a run of the window's length order
        window_rows = np.arange(batch[PIXELS][0] // 16 * 16, min(batch[PIXELS][0] // 16 * 16 + 16, 40))
        ranks = np.argsort(np.argsort([lengths[r] for r in window_rows], kind="stable"), kind="stable")
        positions = sorted(ranks[np.searchsorted(window_rows, batch[PIXELS])])
        assert positions == list(range(positions[0], positions[0] + 4))
    longest = [int((b[TOKENS] != 0).sum(axis=1).max()) for b in batches]
    unbucketed = [max(lengths[i:i + 4]) for i in range(0, 40, 4)]
    assert sum(longest) < sum(unbucketed)  # what dynamic padding gains
    again = list(length_bucketed(bucketing_windows(lengths, 16), micro_batch=4, pad_token_id=0, seed=3))
    assert all(np.array_equal(a[PIXELS], b[PIXELS]) for a, b in zip(batches, again))  # seeded: a resume replays it
    other = list(length_bucketed(bucketing_windows(lengths, 16), micro_batch=4, pad_token_id=0, seed=4))
    assert any(not np.array_equal(a[PIXELS], b[PIXELS]) for a, b in zip(batches, other))


def test_length_bucketing_drops_a_window_remainder_and_needs_a_window():
    batches = list(length_bucketed(bucketing_windows([5, 1, 3, 2, 4, 6], 6), micro_batch=4, pad_token_id=0, seed=0))
    assert [sorted(b[PIXELS].tolist()) for b in batches] == [[1, 2, 3, 4]]  # the 4 shortest; 2 rows as drop_last
    with pytest.raises(ConfigError, match=r"^data\.length_bucketing: .*shuffle_buffer"):
        DataSection(micro_batch=16, shuffle_buffer=16, length_bucketing=True)
    assert DataSection(micro_batch=16, shuffle_buffer=70, length_bucketing=True).bucketing_window == 64
