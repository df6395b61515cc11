"""Training input on Ray Data: read the extraction job's Parquet shards, decode, augment, normalise and tokenise.

The heavy work runs in `map_batches` tasks, so it scales with the cluster's CPUs rather than the training workers'.
Each row leaves as `pixels` (float32 [3, H, W]) and `token_ids` (int64 [context_length]). A row whose image cannot
be decoded is dropped with a message naming its pmcid and fig_id.

Text views: the caption, and the article's sentences that cite the figure (`inline_refs`, one per line). With
`text_views=("caption", "inline_refs")` each training row draws, every time it is read (so per step), one view
uniformly and of the citing sentences one at random (the caption when it has none); with `concat=True` the citing
sentences follow the caption, cut at the context length by the tokenizer. Validation always reads the caption.

Optional length bucketing (`data.length_bucketing`) groups captions of similar length into the same micro-batch, so
that the text tower's dynamic padding cuts more: see `length_bucketed`.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
from ray.data import DataContext
from tokenizers import Tokenizer as FastTokenizer

from biomedclip.io import filesystem
from biomedclip.model.transforms import decode_image, eval_transform, train_transform
from biomedclip.pmc.schema import MODEL_INPUT_COLUMNS
from biomedclip.text import Tokenizer

PIXELS, TOKENS = "pixels", "token_ids"
TEXT_VIEWS = ("caption", "inline_refs")


def read_split(path: str, split: str, s3_endpoint: str | None = None, columns=None) -> ray.data.Dataset:
    """The split's shards through Ray Data's V1 Parquet datasource: Ray 2.60's default V2 one (ListFiles ->
    ReadFiles) spends ~5 s of wall time, nearly all waiting, listing even five local files on every execution, and
    training executes the train and val datasets anew every epoch."""
    fs, root = filesystem(path, s3_endpoint)
    context = DataContext.get_current()
    default, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        dataset = ray.data.read_parquet(f"{root}/{split}", filesystem=fs, file_extensions=["parquet"])
    finally:
        context.use_datasource_v2 = default
    return dataset.select_columns(columns or MODEL_INPUT_COLUMNS)


def _split_files(path: str, split: str, s3_endpoint: str | None = None) -> pads.Dataset:
    """The split's Parquet shards read in this process: row counts come from the footers and captions stream in
    batches, without the seconds a Ray Data job takes to start."""
    fs, root = filesystem(path, s3_endpoint)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{split}", recursive=True))
    shards = sorted(info.path for info in infos if info.is_file and info.path.endswith(".parquet"))
    return pads.dataset(shards, format="parquet", filesystem=fs)


def iter_captions(path: str, s3_endpoint: str | None = None):
    """Captions of the train split, for training the tokenizer."""
    for batch in _split_files(path, "train", s3_endpoint).to_batches(columns=["caption"]):
        yield from (str(caption) for caption in batch.column(0).to_pylist())


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str, context_length: int) -> Tokenizer:
    return Tokenizer(FastTokenizer.from_str(tokenizer_json), context_length)


def text_view(caption: str, inline_refs: str, views: tuple[str, ...], concat: bool, rng: np.random.Generator) -> str:
    """The text a training row is read with this time (see the module docstring)."""
    sentences = [s for s in inline_refs.split("\n") if s.strip()] if "inline_refs" in views else []
    if concat:
        return " ".join([caption, *sentences])
    if sentences and rng.integers(len(views)) == views.index("inline_refs"):
        return sentences[int(rng.integers(len(sentences)))]
    return caption


def preprocess_batch(batch: dict[str, np.ndarray], *, tokenizer_json: str, context_length: int, image_size: int,
                     augment: bool, text_views: tuple[str, ...] = ("caption",),
                     concat: bool = False) -> dict[str, np.ndarray]:
    transform = train_transform(image_size) if augment else eval_transform(image_size)
    refs = batch["inline_refs"] if "inline_refs" in text_views else [""] * len(batch["caption"])
    rng = np.random.default_rng()
    pixels, captions = [], []
    for pmcid, fig_id, caption, inline_refs, image in zip(batch["pmcid"], batch["fig_id"], batch["caption"], refs,
                                                           batch["image"]):
        try:
            pixels.append(transform(decode_image(bytes(image))))
        except Exception as err:  # PIL raises many kinds for a corrupt file
            print(f"skipping {pmcid}/{fig_id}: cannot decode image ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        captions.append(text_view(str(caption), str(inline_refs), text_views, concat, rng))
    tokens = _tokenizer(tokenizer_json, context_length).encode(captions)
    shape = (0, 3, image_size, image_size)
    return {PIXELS: np.stack(pixels).astype(np.float32) if pixels else np.zeros(shape, np.float32), TOKENS: tokens}


def preprocess(ds: ray.data.Dataset, *, tokenizer: Tokenizer, image_size: int, augment: bool,
               batch_size: int = 64, tasks: int | None = None, text_views: tuple[str, ...] = ("caption",),
               concat: bool = False) -> ray.data.Dataset:
    compute = ray.data.TaskPoolStrategy(size=tasks) if tasks else None
    return ds.map_batches(
        preprocess_batch, batch_size=batch_size, batch_format="numpy", compute=compute,
        fn_kwargs={"tokenizer_json": tokenizer.backend.to_str(), "context_length": tokenizer.context_length,
                   "image_size": image_size, "augment": augment, "text_views": tuple(text_views), "concat": concat})


def training_datasets(path: str, tokenizer: Tokenizer, image_size: int, *, augment: bool, s3_endpoint=None,
                      batch_size: int = 64, tasks: int | None = None, text_views: tuple[str, ...] = ("caption",),
                      concat: bool = False) -> dict[str, ray.data.Dataset]:
    """{"train": augmented, read in `text_views`, "val": eval-transformed, captions} datasets of pixels and token
    ids."""
    datasets = {}
    for split in ("train", "val"):
        views = tuple(text_views) if split == "train" else ("caption",)
        columns = [*MODEL_INPUT_COLUMNS, "inline_refs"] if "inline_refs" in views else None
        datasets[split] = preprocess(read_split(path, split, s3_endpoint, columns), tokenizer=tokenizer,
                                     image_size=image_size, augment=augment and split == "train",
                                     batch_size=batch_size, tasks=tasks, text_views=views,
                                     concat=concat and split == "train")
    return datasets


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
