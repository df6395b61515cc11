"""The driver-side reads of the training input (row count, tokenizer captions) on a local folder and on S3."""
from __future__ import annotations

import io

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomedclip.data.train_input import count_rows, iter_captions

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
