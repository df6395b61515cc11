"""A short CPU pretraining run on grounded synthetic data lifts val Recall@1 to at least 5x chance."""
from __future__ import annotations

from pathlib import Path

import pytest

from biomedclip.config import load_config
from biomedclip.train.config import PretrainConfig
from biomedclip.train.synthetic import write_shapes_corpus
from biomedclip.train.trainer import run_pretraining

REPO = Path(__file__).resolve().parent.parent
VAL = 48


@pytest.mark.slow
def test_short_cpu_run_learns_retrieval(ray_session, tmp_path):
    data = write_shapes_corpus(tmp_path / "data", train=256, val=VAL, seed=3)
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml", [
        f"data.path={data}", f"run.output_dir={tmp_path / 'run'}", "data.micro_batch=32", "data.augment=false",
        "data.vocab_size=512", "train.epochs=20", "train.curriculum=[{global_batch: 32}]", "train.unmasked_epochs=4",
        "train.optim.lr=1.0e-3", "train.optim.warmup_steps=10", "train.log_every_steps=20", "run.num_workers=1",
        "run.export=false", "run.keep_checkpoints=1"])
    result = run_pretraining(cfg).result
    chance = 1 / VAL
    recall = (result.metrics["val/i2t_R@1"] + result.metrics["val/t2i_R@1"]) / 2
    print(f"val Recall@1 {recall:.3f} = {recall / chance:.1f}x chance ({chance:.3f})")
    assert recall >= 5 * chance
