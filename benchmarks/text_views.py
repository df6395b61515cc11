"""Inline references as a second text view, measured on the sample corpus: the same short tiny-model pretraining run
with `data.text_views=[caption]` and with `[caption, inline_refs]` (and `text_concat`), val Recall@1 (captions).

    python benchmarks/text_views.py [--articles 320] [--epochs 16]

The sample corpus cites each figure in one sentence that restates part of its caption ("The chest X-ray in Figure 1
shows two nodules on the left."), so this measures the mechanism, not the gain to expect on PMC text.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import ray

from biomedclip.config import load_config
from biomedclip.data.extract import ExtractConfig, run_extraction
from biomedclip.pmc.sources import SourceConfig
from biomedclip.pmc.split import SplitConfig
from biomedclip.samples.corpus import write_sample_corpus
from biomedclip.train.config import PretrainConfig
from biomedclip.train.trainer import run_pretraining

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"caption": ["data.text_views=[caption]"],
            "caption|inline_refs": ["data.text_views=[caption, inline_refs]"],
            "caption+inline_refs (concat)": ["data.text_views=[caption, inline_refs]", "data.text_concat=true"]}


def start_ray(attempts: int = 3) -> None:
    """A local Ray with 4 logical CPUs (a training worker plus data tasks on a small machine); a loaded machine can
    miss the node start-up deadline, and a second start succeeds."""
    for attempt in range(attempts):
        try:
            ray.init(num_cpus=4, include_dashboard=False,
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
            return
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    start_ray()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_sample_corpus(root / "pmc", articles=args.articles, layout="folders", seed=args.seed)
        run_extraction(ExtractConfig(source=SourceConfig(uri=str(root / "pmc")), output=str(root / "pairs"),
                                     split=SplitConfig(train=0.9, val=0.1, test=0.0)))
        results = {}
        for name, overrides in VARIANTS.items():
            cfg = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml", [
                f"data.path={root / 'pairs'}", f"run.output_dir={root / name}", "data.micro_batch=32",
                "data.augment=false", "data.vocab_size=512", "run.num_workers=1", "run.export=false",
                "run.keep_checkpoints=1", f"train.epochs={args.epochs}", "train.unmasked_epochs=0",
                "train.curriculum=[{global_batch: 32}]", *overrides])
            metrics = run_pretraining(cfg).result.metrics
            results[name] = round((metrics["val/i2t_R@1"] + metrics["val/t2i_R@1"]) / 2, 4)
            print(name, results[name], flush=True)
    print(json.dumps({"val_recall@1": results}, indent=1))


if __name__ == "__main__":
    main()
