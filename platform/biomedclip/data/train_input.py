"""Training input on Ray Data: read the extraction job's Parquet shards, decode, augment, normalise and tokenise.

The heavy work runs in `map_batches` tasks, so it scales with the cluster's CPUs rather than the training workers'.
Each row leaves as `pixels` (float32 [3, H, W]) and `token_ids` (int64 [context_length]). A row whose image cannot
be decoded is dropped with a message naming its pmcid and fig_id.

Optional length bucketing (`data.length_bucketing`) groups captions of similar length into the same micro-batch, so
that the text tower's dynamic padding cuts more: see `length_bucketed`.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable, Iterator
from urllib.parse import urlparse

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
from ray.data import DataContext
from tokenizers import Tokenizer as FastTokenizer

from biomedclip.model.transforms import decode_image, eval_transform, train_transform
from biomedclip.pmc.schema import MODEL_INPUT_COLUMNS
from biomedclip.text import Tokenizer

PIXELS, TOKENS = "pixels", "token_ids"


def filesystem_for(uri: str, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path) for a local path or s3://bucket/prefix; an endpoint override serves a local S3."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        return None, uri
    options = {}
    if s3_endpoint:
        endpoint = urlparse(s3_endpoint)
        options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        # Keys set where the job starts travel with the (pickled) filesystem to Ray workers, whose environment
        # was fixed when their node started; without them each worker uses its own credential chain.
        options.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                       session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**options), f"{parsed.netloc}{parsed.path}".rstrip("/")


def read_split(path: str, split: str, s3_endpoint: str | None = None, columns=None) -> ray.data.Dataset:
    """The split's shards through Ray Data's V1 Parquet datasource: Ray 2.60's default V2 one (ListFiles ->
    ReadFiles) spends ~5 s of wall time, nearly all waiting, listing even five local files on every execution, and
    training executes the train and val datasets anew every epoch."""
    filesystem, root = filesystem_for(path, s3_endpoint)
    context = DataContext.get_current()
    default, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        dataset = ray.data.read_parquet(f"{root}/{split}", filesystem=filesystem, file_extensions=["parquet"])
    finally:
        context.use_datasource_v2 = default
    return dataset.select_columns(columns or MODEL_INPUT_COLUMNS)


def _split_files(path: str, split: str, s3_endpoint: str | None = None) -> pads.Dataset:
    """The split's Parquet shards read in this process: row counts come from the footers and captions stream in
    batches, without the seconds a Ray Data job takes to start."""
    filesystem, root = filesystem_for(path, s3_endpoint)
    filesystem = filesystem or pafs.LocalFileSystem()
    infos = filesystem.get_file_info(pafs.FileSelector(f"{root}/{split}", recursive=True))
    shards = sorted(info.path for info in infos if info.is_file and info.path.endswith(".parquet"))
    return pads.dataset(shards, format="parquet", filesystem=filesystem)


def iter_captions(path: str, s3_endpoint: str | None = None):
    """Captions of the train split, for training the tokenizer."""
    for batch in _split_files(path, "train", s3_endpoint).to_batches(columns=["caption"]):
        yield from (str(caption) for caption in batch.column(0).to_pylist())


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str, context_length: int) -> Tokenizer:
    return Tokenizer(FastTokenizer.from_str(tokenizer_json), context_length)


def preprocess_batch(batch: dict[str, np.ndarray], *, tokenizer_json: str, context_length: int, image_size: int,
                     augment: bool) -> dict[str, np.ndarray]:
    transform = train_transform(image_size) if augment else eval_transform(image_size)
    pixels, captions = [], []
    for pmcid, fig_id, caption, image in zip(batch["pmcid"], batch["fig_id"], batch["caption"], batch["image"]):
        try:
            pixels.append(transform(decode_image(bytes(image))))
        except Exception as err:  # PIL raises many kinds for a corrupt file
            print(f"skipping {pmcid}/{fig_id}: cannot decode image ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        captions.append(str(caption))
    tokens = _tokenizer(tokenizer_json, context_length).encode(captions)
    shape = (0, 3, image_size, image_size)
    return {PIXELS: np.stack(pixels).astype(np.float32) if pixels else np.zeros(shape, np.float32), TOKENS: tokens}


def preprocess(ds: ray.data.Dataset, *, tokenizer: Tokenizer, image_size: int, augment: bool,
               batch_size: int = 64, tasks: int | None = None) -> ray.data.Dataset:
    compute = ray.data.TaskPoolStrategy(size=tasks) if tasks else None
    return ds.map_batches(
        preprocess_batch, batch_size=batch_size, batch_format="numpy", compute=compute,
        fn_kwargs={"tokenizer_json": tokenizer.backend.to_str(), "context_length": tokenizer.context_length,
                   "image_size": image_size, "augment": augment})


def training_datasets(path: str, tokenizer: Tokenizer, image_size: int, *, augment: bool, s3_endpoint=None,
                      batch_size: int = 64, tasks: int | None = None) -> dict[str, ray.data.Dataset]:
    """{"train": augmented, "val": eval-transformed} datasets of pixels and token ids."""
    return {
        split: preprocess(read_split(path, split, s3_endpoint), tokenizer=tokenizer, image_size=image_size,
                          augment=augment and split == "train", batch_size=batch_size, tasks=tasks)
        for split in ("train", "val")
    }


def count_rows(path: str, split: str, s3_endpoint: str | None = None) -> int:
    return _split_files(path, split, s3_endpoint).count_rows()


def length_bucketed(windows: Iterable[dict[str, np.ndarray]], micro_batch: int, pad_token_id: int,
                    seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Micro-batches of similar caption lengths. Each window (rows already shuffled) is sorted by caption length and
    cut into micro-batches, which leave in a seeded random order, so steps mix short and long micro-batches.

    This changes which captions share a micro-batch (and, with accumulation, a step): the negatives of a step are
    then of similar length. A window's rows beyond its last whole micro-batch are dropped, as `drop_last` does.
    """
    rng = np.random.default_rng(seed)
    for window in windows:
        lengths = (window[TOKENS] != pad_token_id).sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        chunks = [order[start:start + micro_batch] for start in range(0, len(order) - micro_batch + 1, micro_batch)]
        for index in rng.permutation(len(chunks)):
            yield {column: values[chunks[index]] for column, values in window.items()}
