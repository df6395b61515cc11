"""Effect of `data.length_bucketing` on the loss curve: the same short tiny-model run on the sample corpus, off and on.

    python benchmarks/length_bucketing_curve.py [--epochs 6] [--articles 320]

Both runs start from the same weights and the same seeded shuffle; bucketing only regroups each window's rows by
caption length. Prints, per epoch, the mean train loss, val loss and val Recall@1 of both runs, and the mean
token length the text tower is cut to per micro-batch (dynamic padding) with and without bucketing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from biomedclip.config import load_config
from biomedclip.data.extract import ExtractConfig, run_extraction
from biomedclip.data.train_input import TOKENS, length_bucketed
from biomedclip.model.text_tower import trim_padding
from biomedclip.pmc.sources import SourceConfig
from biomedclip.pmc.split import SplitConfig
from biomedclip.samples.corpus import write_sample_corpus
from biomedclip.text import Tokenizer
from biomedclip.train.config import PretrainConfig
from biomedclip.train.trainer import run_pretraining

REPO = Path(__file__).resolve().parent.parent
MICRO, WINDOW = 32, 128


def run(pairs: Path, out: Path, epochs: int, bucketing: bool) -> dict:
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml", [
        f"data.path={pairs}", f"run.output_dir={out}", f"data.micro_batch={MICRO}", f"data.shuffle_buffer={WINDOW}",
        f"data.length_bucketing={str(bucketing).lower()}", "data.augment=false", "data.vocab_size=512",
        f"train.epochs={epochs}", "train.curriculum=[{global_batch: 64}]", "train.unmasked_epochs=0",
        "run.num_workers=1", "run.export=false", "run.keep_checkpoints=1"])
    result = run_pretraining(cfg, progress=lambda line: None).result
    with result.checkpoint.as_directory() as directory:
        history = torch.load(Path(directory) / "train_state.pt", weights_only=False)["progress"]["history"]
    steps_per_epoch = len(history["train/loss"]) // epochs
    losses = [value for _, value in history["train/loss"]]
    return {"train_loss": [statistics.mean(losses[e * steps_per_epoch:(e + 1) * steps_per_epoch])
                           for e in range(epochs)],
            "val_loss": [value for _, value in history["val/loss"]],
            "val_R@1": [(a + b) / 2 for (_, a), (_, b) in zip(history["val/i2t_R@1"], history["val/t2i_R@1"])],
            "tokenizer": out / "tokenizer"}


def cut_lengths(pairs: Path, tokenizer_dir: Path) -> dict:
    """Mean length the text tower runs at per micro-batch of the train split, in file order and bucketed."""
    tokenizer = Tokenizer.load(tokenizer_dir, 77)
    tokens = tokenizer.encode(pq.read_table(pairs / "train", columns=["caption"]).column(0).to_pylist())
    tokens = tokens[np.random.default_rng(0).permutation(len(tokens))]
    plain = [trim_padding(torch.from_numpy(tokens[i:i + MICRO]), tokenizer.pad_token_id).shape[1]
             for i in range(0, len(tokens) - MICRO + 1, MICRO)]
    windows = ({TOKENS: tokens[i:i + WINDOW]} for i in range(0, len(tokens), WINDOW))
    bucketed = [trim_padding(torch.from_numpy(b[TOKENS]), tokenizer.pad_token_id).shape[1]
                for b in length_bucketed(windows, MICRO, tokenizer.pad_token_id, seed=0)]
    lengths = (tokens != tokenizer.pad_token_id).sum(axis=1)
    return {"caption_tokens_median": float(np.median(lengths)), "caption_tokens_max": int(lengths.max()),
            "cut_length_mean_unbucketed": statistics.mean(plain), "cut_length_mean_bucketed": statistics.mean(bucketed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--articles", type=int, default=320)
    args = parser.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_sample_corpus(tmp / "pmc", articles=args.articles, layout="folders", seed=5)
        run_extraction(ExtractConfig(source=SourceConfig(uri=str(tmp / "pmc")), output=str(tmp / "pairs"),
                                     split=SplitConfig(train=0.9, val=0.1, test=0.0)))
        off = run(tmp / "pairs", tmp / "off", args.epochs, bucketing=False)
        on = run(tmp / "pairs", tmp / "on", args.epochs, bucketing=True)
        lengths = cut_lengths(tmp / "pairs", off.pop("tokenizer"))
        on.pop("tokenizer")
    print(json.dumps({"lengths": lengths, "bucketing_off": off, "bucketing_on": on}, indent=1))
    print("epoch  train loss off/on   val loss off/on   val R@1 off/on")
    for epoch in range(args.epochs):
        print(f"{epoch:5d}  {off['train_loss'][epoch]:.3f} / {on['train_loss'][epoch]:.3f}    "
              f"{off['val_loss'][epoch]:.3f} / {on['val_loss'][epoch]:.3f}    "
              f"{off['val_R@1'][epoch]:.3f} / {on['val_R@1'][epoch]:.3f}")


if __name__ == "__main__":
    main()
