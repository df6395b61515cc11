"""Fine-tune a VQA model on BiomedCLIP encoders with Ray Train and report overall/open/closed accuracy.

    python jobs/finetune_vqa.py --checkpoint CKPT --dataset vqa-rad|slake|synthetic --data DIR \
        [--config jobs/configs/finetune_vqa.yaml] [--set train.epochs=5 ...] [--lang en] [--output DIR]

CKPT is a BiomedCLIP artifact directory (`save_artifact`, or an open_clip BiomedCLIP folder). `synthetic` takes the
extraction job's Parquet output and first derives a VQA set from it (biomedclip.samples.vqa). Writes to --output:
model/ (the VQA artifact for serving), metrics.json (per-epoch history + final accuracies of the saved model) and
predictions.json (one row per test question).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import ray

from biomedclip.config import load_config
from biomedclip.vqa import AnswerVocab, load_vqa_dataset, load_vqa_predictor
from biomedclip.vqa.evaluate import evaluate_predictor
from biomedclip.samples.vqa import write_vqa_set
from biomedclip.vqa.train import FinetuneConfig, finetune

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "finetune_vqa.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="BiomedCLIP artifact directory")
    parser.add_argument("--dataset", required=True, choices=("vqa-rad", "slake", "synthetic"))
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (Parquet root for synthetic)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--lang", choices=("en", "zh", "all"), help="SLAKE question language (data.lang)")
    parser.add_argument("--output", type=Path, default=Path("runs/finetune_vqa"))
    args = parser.parse_args(argv)
    # absolute: Ray Train workers run in their own working directory
    for name in ("checkpoint", "data", "output"):
        setattr(args, name, getattr(args, name).resolve())
    return args


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    overrides = args.set + ([f"data.lang={args.lang}"] if args.lang else [])
    cfg = load_config(FinetuneConfig, args.config, overrides)
    args.output.mkdir(parents=True, exist_ok=True)

    dataset, data_dir = prepare_dataset(args, cfg)
    splits = {split: load_vqa_dataset(dataset, data_dir, split, lang=cfg.data.lang,
                                      vqa_rad_format=cfg.data.vqa_rad_format) for split in ("train", "test")}
    train, test = splits["train"].records, splits["test"].records
    vocab = AnswerVocab.from_answers(r.answer for r in train)
    unseen = sum(r.answer not in vocab for r in test)
    print(f"{dataset}: {len(train)} train / {len(test)} test questions, "
          f"{sum(len(s.problems) for s in splits.values())} skipped, {len(vocab)} answers, "
          f"{unseen} test answers never seen in training (scored wrong)")

    if cfg.train.num_workers > 0 and not ray.is_initialized():  # 0 workers: local mode, no cluster needed
        ray.init()
    result = finetune(args.checkpoint, train, test, vocab, cfg, output_dir=args.output)
    for epoch in result.history:
        print(f"epoch {epoch['epoch']}: train loss {epoch['train_loss']:.4f}, "
              f"train acc {epoch['train_accuracy']:.3f}, test acc {_pct(epoch['test_accuracy'])} "
              f"(open {_pct(epoch['test_open_accuracy'])}, closed {_pct(epoch['test_closed_accuracy'])})")

    model_dir = result.artifact_dir
    counts, predictions = evaluate_predictor(load_vqa_predictor(model_dir), test)
    metrics = {
        "dataset": args.dataset, "data": str(args.data), "checkpoint": str(args.checkpoint), "model": str(model_dir),
        "train_questions": len(train), "test_questions": len(test), "answers": len(vocab),
        "test_unseen_answers": unseen, "skipped": [str(p) for s in splits.values() for p in s.problems],
        "history": result.history, "test": counts.to_metrics(),
    }
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    (args.output / "predictions.json").write_text(json.dumps(predictions, indent=1, ensure_ascii=False))
    final = metrics["test"]
    print(f"saved model test accuracy {_pct(final['accuracy'])} (open {_pct(final['open_accuracy'])}, "
          f"closed {_pct(final['closed_accuracy'])}) on {final['n']} questions -> {args.output / 'metrics.json'}")
    return metrics


def prepare_dataset(args: argparse.Namespace, cfg: FinetuneConfig) -> tuple[str, Path]:
    """(loader name, folder); `synthetic` first writes a VQA-RAD-style set derived from the Parquet corpus."""
    if args.dataset != "synthetic":
        return args.dataset, args.data
    print(f"deriving a VQA set from {args.data}: {write_vqa_set(args.data, args.output / 'vqa_set')}")
    cfg.data.vqa_rad_format = "splits"
    return "vqa-rad", args.output / "vqa_set"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
