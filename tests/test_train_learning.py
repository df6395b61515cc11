"""On the sample corpus (synthetic PMC articles whose figure captions say what is visible), extracted into Parquet
like any PMC source, a short CPU pretraining run with the demo's tiny recipe lifts val Recall@1 to at least 5x
chance."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedclip.config import load_config
from biomedclip.data.extract import ExtractConfig, run_extraction
from biomedclip.pmc.sources import SourceConfig
from biomedclip.pmc.split import SplitConfig
from biomedclip.samples.corpus import write_sample_corpus
from biomedclip.train.config import PretrainConfig
from biomedclip.train.trainer import run_pretraining

REPO = Path(__file__).resolve().parent.parent
ARTICLES = 320  # ~560 train pairs (the demo's count) and a val split of ~60: chance Recall@1 ~ 0.017


@pytest.mark.slow
def test_short_cpu_run_on_the_sample_corpus_learns_retrieval(ray_session, tmp_path):
    write_sample_corpus(tmp_path / "pmc", articles=ARTICLES, layout="folders", seed=5)
    manifest = run_extraction(ExtractConfig(source=SourceConfig(uri=str(tmp_path / "pmc")),
                                            output=str(tmp_path / "pairs"),
                                            split=SplitConfig(train=0.9, val=0.1, test=0.0)))
    val_pairs = pq.read_table(tmp_path / "pairs" / "val").num_rows
    assert val_pairs == manifest["pairs_written"]["val"] >= 40  # chance = 1/val_pairs, small enough to mean something
    # The demo's recipe (jobs/configs/tiny.yaml, curriculum included) on one worker: micro-batch 32, k = 1 then 2.
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml", [
        f"data.path={tmp_path / 'pairs'}", f"run.output_dir={tmp_path / 'run'}", "data.micro_batch=32",
        "data.augment=false", "data.vocab_size=512", "run.num_workers=1", "run.export=false", "run.keep_checkpoints=1"])
    result = run_pretraining(cfg).result
    chance = 1 / val_pairs
    recall = (result.metrics["val/i2t_R@1"] + result.metrics["val/t2i_R@1"]) / 2
    print(f"\n{manifest['pairs_written']} pairs; val Recall@1 {recall:.3f} = {recall / chance:.1f}x chance "
          f"({chance:.3f})")
    assert result.metrics["epoch"] == cfg.train.epochs - 1
    assert recall >= 5 * chance
