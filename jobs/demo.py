"""The whole pipeline on a local Ray with the embedded defaults: corpus -> extraction -> pretraining -> evaluation
-> VQA fine-tuning -> serving. Each stage runs the command a user would (printed first) and shows its progress bar;
its full output goes to a log file under OUTPUT/logs/. The demo ends with a table of every stage's key figure.

    python jobs/demo.py --output demo_out
    python jobs/demo.py --output /tmp/small_demo --articles 120
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from biomedclip import cli

JOBS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stage:
    title: str
    args: list
    output: Path  # where the stage's results are
    key_figure: Callable[[Path], str]  # read from the stage's output files


def stages(out: Path, articles: int) -> list[Stage]:
    corpus, pairs, run = out / "corpus", out / "pairs", out / "pretrain"
    model = run / "final"
    return [
        Stage("Write a synthetic PMC corpus (Cloud Service layout)",
              ["make_sample_corpus.py", "--output", corpus, "--articles", articles], corpus,
              lambda _: f"{articles} articles"),
        Stage("Extract figure-caption pairs with Ray Data",
              ["extract.py", "--source", corpus, "--output", pairs, "--config", JOBS / "configs/extract.yaml"], pairs,
              lambda path: f"{json.loads((path / 'manifest.json').read_text())['pairs_written']} pairs"),
        Stage("Pretrain a tiny BiomedCLIP with Ray Train",
              ["pretrain.py", "--config", JOBS / "configs/tiny.yaml", "--set", f"data.path={pairs}",
               "--set", f"run.output_dir={run}", "--set", "run.name=demo"], model, lambda _: _val_recall(run)),
        Stage("Cross-modal retrieval on the test split",
              ["evaluate.py", "--checkpoint", model, "--task", "retrieval", "--data", pairs / "test",
               "--output", out / "eval-retrieval"], out / "eval-retrieval", _retrieval),
        Stage("Zero-shot classification of the test split's figure types",
              ["evaluate.py", "--checkpoint", model, "--task", "zeroshot", "--data", pairs / "test",
               "--config", JOBS / "configs/evaluate_demo.yaml", "--output", out / "eval-zeroshot"],
              out / "eval-zeroshot", _zeroshot),
        Stage("Fine-tune a VQA head on questions about the figures",
              ["finetune_vqa.py", "--checkpoint", model, "--dataset", "synthetic", "--data", pairs,
               "--config", JOBS / "configs/finetune_vqa_tiny.yaml", "--set", "train.epochs=3", "--output",
               out / "vqa"], out / "vqa", _vqa),
        Stage("Serve zero-shot, VQA and embedding endpoints, one request each",
              ["serve_demo.py", "--model", model, "--vqa", out / "vqa" / "model", "--image-dir", pairs / "test"],
              out / "logs" / "7-serve_demo.log", lambda _: "4 of 4 requests answered"),
    ]


def _val_recall(run: Path) -> str:
    """The last checkpoint's validation image->text Recall@1 (from its training state)."""
    import torch

    last = sorted(run.glob("checkpoints/*/checkpoint_step*/train_state.pt"))[-1]
    history = torch.load(last, map_location="cpu", weights_only=True)["progress"]["history"]
    return f"val R@1 {history['val/i2t_R@1'][-1][1]:.3f} (i2t)"


def _retrieval(path: Path) -> str:
    metrics = json.loads((path / "retrieval.json").read_text())["metrics"]
    return f"test R@1 {metrics['image_to_text']['R@1']:.3f} i2t, {metrics['text_to_image']['R@1']:.3f} t2i"


def _zeroshot(path: Path) -> str:
    metrics = json.loads(next(path.glob("zeroshot_*.json")).read_text())["metrics"]
    return f"accuracy {metrics['accuracy']:.3f} on {metrics['n']} figures"


def _vqa(path: Path) -> str:
    test = json.loads((path / "metrics.json").read_text())["test"]
    return f"test accuracy {test['accuracy']:.3f} on {test['n']} questions"


def run_stage(number: int, stage: Stage, logs: Path, ray_address: str, verbose: bool) -> float:
    """Runs one stage; its stdout (and, unless verbose, nothing else) goes to its log file. Returns seconds."""
    command = [sys.executable, str(JOBS / str(stage.args[0])), *map(str, stage.args[1:])]
    if verbose:
        command.append("--verbose")
    log = logs / f"{number}-{Path(str(stage.args[0])).stem}.log"
    print(f"\n[{number}/7] {stage.title}\n$ {shlex.join(command)}", flush=True)
    started = time.monotonic()
    with open(log, "w") as stdout:
        code = subprocess.run(command, stdout=None if verbose else stdout,
                              env={**os.environ, "RAY_ADDRESS": ray_address}).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise cli.RunFailed(f"stage {number} exited with {code}; the end of {log}:\n{tail}")
    return time.monotonic() - started


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("demo_out"), help="folder for every stage's outputs")
    parser.add_argument("--articles", type=cli.positive_int, default=400, help="articles in the synthetic corpus")


def run(args: argparse.Namespace) -> list[tuple]:
    started = time.monotonic()
    out = args.output.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # One local Ray for every stage: each job joins it through RAY_ADDRESS, as it would join a cluster. At least 4
    # logical CPUs, so that the 2 training workers leave Ray Data a CPU for decoding on a 2-core laptop.
    cli.start_ray(args, lambda machine_cpus: max(4, machine_cpus))
    import ray

    address = ray.get_runtime_context().gcs_address
    rows = []
    for number, stage in enumerate(stages(out, args.articles), start=1):
        seconds = run_stage(number, stage, logs, address, args.verbose)
        rows.append((number, stage.args[0].removesuffix(".py"), stage.key_figure(stage.output), f"{seconds:.0f} s",
                     os.path.relpath(stage.output)))
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; each stage's full output is in {logs}/\n")
    cli.print_table(rows, header=("#", "stage", "key figure", "time", "outputs"))
    return rows


JOB = cli.Job(__doc__, arguments, run, config=False)

if __name__ == "__main__":
    sys.exit(JOB.main())
