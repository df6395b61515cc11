"""The whole pipeline on a local Ray with the embedded defaults: corpus -> extraction -> pretraining -> evaluation
-> VQA fine-tuning -> serving. Each stage runs the same command a user would, and prints it first.

    python jobs/demo.py --output demo_out
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import ray

JOBS = Path(__file__).resolve().parent


def stages(out: Path, articles: int) -> list[tuple[str, list[str]]]:
    corpus, pairs, run = out / "corpus", out / "pairs", out / "pretrain"
    model = run / "final"
    return [
        ("Write a synthetic PMC corpus (Cloud Service layout)",
         ["make_sample_corpus.py", "--output", corpus, "--articles", articles]),
        ("Extract figure-caption pairs with Ray Data",
         ["extract.py", "--source", corpus, "--output", pairs, "--config", JOBS / "configs/extract.yaml"]),
        ("Pretrain a tiny BiomedCLIP with Ray Train",
         ["pretrain.py", "--config", JOBS / "configs/tiny.yaml", "--set", f"data.path={pairs}",
          "--set", f"run.output_dir={run}", "--set", "run.name=demo"]),
        ("Cross-modal retrieval on the test split",
         ["evaluate.py", "--checkpoint", model, "--task", "retrieval", "--data", pairs / "test",
          "--output", out / "eval-retrieval"]),
        ("Zero-shot classification of the test split's figure types",
         ["evaluate.py", "--checkpoint", model, "--task", "zeroshot", "--data", pairs / "test",
          "--config", JOBS / "configs/evaluate_demo.yaml", "--output", out / "eval-zeroshot"]),
        ("Fine-tune a VQA head on questions about the figures",
         ["finetune_vqa.py", "--checkpoint", model, "--dataset", "synthetic", "--data", pairs,
          "--config", JOBS / "configs/finetune_vqa_tiny.yaml", "--set", "train.epochs=3", "--output", out / "vqa"]),
        ("Serve zero-shot, VQA and embedding endpoints, one request each",
         ["serve_demo.py", "--model", model, "--vqa", out / "vqa" / "model", "--image-dir", pairs / "test"]),
    ]


def run_stage(number: int, title: str, args: list, ray_address: str) -> None:
    command = [sys.executable, str(JOBS / str(args[0])), *map(str, args[1:])]
    print(f"\n=== [{number}] {title}\n$ {shlex.join(command)}", flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "RAY_ADDRESS": ray_address})
    print(f"--- [{number}] done in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo_out"))
    parser.add_argument("--articles", type=int, default=400)
    args = parser.parse_args(argv)
    started = time.monotonic()
    # One local Ray for every stage: each job joins it through RAY_ADDRESS, as it would join a cluster. At least 4
    # logical CPUs, so that the 2 training workers leave Ray Data a CPU for decoding on a 2-core laptop; the
    # dashboard serves the state API that Ray Train's placement-group cleaner polls. Worker logs go to the stage's
    # own driver only, not twice.
    context = ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=True, log_to_driver=False)
    address = context.address_info["address"]
    try:
        for number, (title, stage_args) in enumerate(stages(args.output.resolve(), args.articles), start=1):
            run_stage(number, title, stage_args, address)
    except subprocess.CalledProcessError as err:
        print(f"\ndemo stopped: {shlex.join(map(str, err.cmd))} exited with {err.returncode}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; outputs under {args.output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
