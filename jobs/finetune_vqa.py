"""Fine-tune a VQA model on BiomedCLIP encoders with Ray Train and report overall/open/closed accuracy.

    python jobs/finetune_vqa.py --checkpoint demo_out/pretrain/final --dataset synthetic --data demo_out/pairs \\
        --config jobs/configs/finetune_vqa_tiny.yaml --output demo_out/vqa
    python jobs/finetune_vqa.py --checkpoint MODEL --dataset slake --data Slake1.0 --lang en --set train.epochs=5

--checkpoint is a BiomedCLIP artifact directory (`save_artifact`, or an open_clip BiomedCLIP folder), local or a URI
(s3://...); so is --data (a remote one is copied once per node into $BIOMEDCLIP_CACHE). `synthetic` takes the
extraction job's Parquet output and first derives a VQA set from it (biomedclip.samples.vqa). Writes to --output, a
folder or a URI: model/ (the VQA artifact for serving), metrics.json (per-epoch history + final accuracies of the saved
model), predictions.json (one row per test question) and, unless run.storage_path says otherwise, checkpoints/
(rerunning the same command resumes from the last one). With run.stop_at_epoch the job ends after that epoch's
checkpoint, writing only the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from biomedclip import cli

if TYPE_CHECKING:
    from biomedclip.vqa.train import FinetuneConfig, ImageRoot

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "finetune_vqa.yaml"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="BiomedCLIP artifact directory or URI")
    parser.add_argument("--dataset", required=True, choices=("vqa-rad", "slake", "synthetic"))
    parser.add_argument("--data", required=True, help="dataset folder or URI (Parquet root for synthetic)")
    parser.add_argument("--lang", choices=("en", "zh", "all"), help="SLAKE question language (config: data.lang)")
    parser.add_argument("--output", default="runs/finetune_vqa", help="folder or URI for model, metrics, checkpoints")


def run(args: argparse.Namespace) -> dict:
    cli.existing(args.checkpoint, "--checkpoint")  # a URI is checked when the workers read it
    cli.existing(args.data, "--data")
    # Libraries are imported here, not at the top: --help and usage errors answer at once.
    from biomedclip.io import absolute, staged_dir
    from biomedclip.vqa.train import FinetuneConfig

    checkpoint, output, data = absolute(args.checkpoint), absolute(args.output), absolute(args.data)

    cfg = cli.load(FinetuneConfig, args, [f"data.lang={args.lang}"] if args.lang else [])
    # Metrics, predictions and a derived set are written here; checkpoints and the model go to `output` directly.
    with staged_dir(output, cfg.run.s3_endpoint) as local_output:
        return finetune_and_score(args, cfg, checkpoint, data, output, local_output)


def finetune_and_score(args: argparse.Namespace, cfg: FinetuneConfig, checkpoint: str, data: str, output: str,
                       local_output: Path) -> dict:
    from biomedclip.vqa import AnswerVocab, load_vqa_dataset, load_vqa_predictor
    from biomedclip.vqa.evaluate import evaluate_predictor
    from biomedclip.vqa.train import finetune

    dataset, data_dir, image_root, cfg = prepare_dataset(args.dataset, data, output, local_output, cfg)
    splits = {split: load_vqa_dataset(dataset, data_dir, split, lang=cfg.data.lang,
                                      vqa_rad_format=cfg.data.vqa_rad_format) for split in ("train", "test")}
    train, test = splits["train"].records, splits["test"].records
    vocab = AnswerVocab.from_answers(r.answer for r in train)
    unseen = sum(r.answer not in vocab for r in test)
    print(f"{dataset}: {len(train)} train / {len(test)} test questions, "
          f"{sum(len(s.problems) for s in splits.values())} skipped, {len(vocab)} answers, "
          f"{unseen} test answers never seen in training (scored wrong)", flush=True)
    if cfg.run.num_workers > 0:  # 0 workers: Ray Train's local mode, no cluster needed
        cli.start_ray(args)
    result = finetune(checkpoint, train, test, vocab, cfg, output, image_root)
    if result.artifact is None:
        print(f"stopped after epoch {cfg.run.stop_at_epoch} (run.stop_at_epoch); rerun the same command to resume",
              flush=True)
        return {"history": result.history, "stopped_at_epoch": cfg.run.stop_at_epoch}
    counts, predictions = evaluate_predictor(load_vqa_predictor(result.artifact, s3_endpoint=cfg.run.s3_endpoint),
                                             test)
    metrics = {
        "dataset": args.dataset, "data": str(data), "checkpoint": checkpoint, "model": result.artifact,
        "train_questions": len(train), "test_questions": len(test), "answers": len(vocab),
        "test_unseen_answers": unseen, "skipped": [str(p) for s in splits.values() for p in s.problems],
        "history": result.history, "test": counts.to_metrics(),
    }
    (local_output / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    (local_output / "predictions.json").write_text(json.dumps(predictions, indent=1, ensure_ascii=False))
    print_summary(metrics, output)
    return metrics


def prepare_dataset(dataset: str, data: str, output: str, local_output: Path,
                    cfg: FinetuneConfig) -> tuple[str, Path, ImageRoot, FinetuneConfig]:
    """(loader name, folder the driver reads, where every node finds the images, config). A URI is copied into the
    node cache; `synthetic` first derives a VQA-RAD-style set from the Parquet corpus, stored with the output so that
    workers on other nodes can read it."""
    from biomedclip.io import local_copy, upload_dir
    from biomedclip.io.transfer import join
    from biomedclip.samples.vqa import write_vqa_set
    from biomedclip.vqa.train import ImageRoot

    endpoint = cfg.run.s3_endpoint
    local_data = local_copy(data, endpoint)
    if dataset != "synthetic":
        return dataset, local_data, ImageRoot(data, str(local_data)), cfg
    derived, derived_uri = local_output / "vqa_set", join(output, "vqa_set")
    print(f"deriving a VQA set from {data}: {write_vqa_set(local_data, derived)}", flush=True)
    upload_dir(derived, derived_uri, endpoint)  # a no-op for a local output, which `derived` already is
    config = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vqa_rad_format="splits"))
    return "vqa-rad", derived, ImageRoot(derived_uri, str(derived)), config


def print_summary(metrics: dict, output: str) -> None:
    rows = [(epoch["epoch"], f"{epoch['train_loss']:.4f}", _pct(epoch["train_accuracy"]),
             _pct(epoch["test_accuracy"]), _pct(epoch["test_open_accuracy"]), _pct(epoch["test_closed_accuracy"]))
            for epoch in metrics["history"]]
    cli.print_table(rows, header=("epoch", "train loss", "train acc", "test acc", "open", "closed"))
    final = metrics["test"]
    print(f"saved model test accuracy {_pct(final['accuracy'])} (open {_pct(final['open_accuracy'])}, "
          f"closed {_pct(final['closed_accuracy'])}) on {final['n']} questions -> {output}/metrics.json")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def user_errors() -> tuple[type[Exception], ...]:
    from biomedclip.vqa.datasets import DatasetError

    return (DatasetError,)


JOB = cli.Job(__doc__, arguments, run, default_config=DEFAULT_CONFIG, user_errors=user_errors)

if __name__ == "__main__":
    sys.exit(JOB.main())
