"""jobs/pretrain.py end to end on the session's local Ray: 2 CPU workers, a curriculum step from k=1 to k=2,
checkpoints, TensorBoard, curves, export; stop-and-resume with every output on a local S3, after the node's local
directories are deleted, equal to an uninterrupted run."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import boto3
import pytest
import torch

from biomedclip.config import ConfigError, from_dict, load_config
from biomedclip.io.transfer import listing, local_copy, upload_dir
from biomedclip.model.artifact import load_artifact
from biomedclip.model.checkpoint import read_state_dict
from biomedclip.samples.shapes import write_shapes_corpus
from biomedclip.text import Tokenizer
from biomedclip.train.checkpointing import TRAIN_STATE
from biomedclip.train.config import PretrainConfig
from biomedclip.train.curriculum import CurriculumError, Stage, plan
from biomedclip.train.optim import cosine_with_warmup
from biomedclip.train.trainer import run_pretraining
from tests.helpers import load_job

REPO = Path(__file__).resolve().parent.parent
PRETRAIN = load_job("pretrain")
LR, WARMUP = 1e-3, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """32 train / 16 val pairs and one tokenizer shared by every run (WordPiece training is not reproducible)."""
    root = tmp_path_factory.mktemp("pretrain")
    data = write_shapes_corpus(root / "data", train=32, val=16, rows_per_file=8)
    captions = [f"A {s} {c} {sh} in the {p} corner." for s in ("small", "large") for c in ("red", "blue")
                for sh in ("circle", "square") for p in ("upper left",)]
    tokenizer = Tokenizer.train(captions, 256, 77)
    tokenizer.save(root / "tokenizer")
    return data, root / "tokenizer"


def overrides(data: Path, tokenizer: Path | None, output: Path | str, *extra: str) -> list[str]:
    """`tokenizer` None: the run finds its own (in its output or checkpoints)."""
    sets = [f"data.path={data}", *([f"data.tokenizer_dir={tokenizer}"] if tokenizer else []),
            f"run.output_dir={output}", "data.micro_batch=4", "data.augment=false", "data.shuffle_buffer=8",
            "data.map_batch_size=8", "train.epochs=2",
            "train.curriculum=[{until_epoch: 1, global_batch: 8}, {global_batch: 16}]", "train.unmasked_epochs=1",
            f"train.optim.lr={LR}", f"train.optim.warmup_steps={WARMUP}", "train.log_every_steps=1",
            "run.num_workers=2", *extra]
    return [arg for item in sets for arg in ("--set", item)]


@pytest.fixture(scope="module")
def uninterrupted(ray_session, corpus, tmp_path_factory):
    data, tokenizer = corpus
    output = tmp_path_factory.mktemp("run_a")
    outcome = PRETRAIN.JOB(["--config", str(REPO / "jobs/configs/tiny.yaml"), *overrides(data, tokenizer, output)])
    return outcome, output


@pytest.mark.slow
def test_pretrain_job_trains_checkpoints_logs_and_exports(uninterrupted):
    outcome, output = uninterrupted
    metrics = outcome.result.metrics
    assert metrics["global_step"] == 6 and metrics["epoch"] == 1  # 4 steps of 8 pairs, then 2 of 16
    for key in ("val/loss", "val/i2t_R@1", "val/i2t_R@5", "val/i2t_R@10", "val/t2i_R@1", "val/t2i_R@10"):
        assert math.isfinite(metrics[key]), key
    checkpoint = Path(outcome.result.checkpoint.path)
    assert (checkpoint / "curves.png").stat().st_size > 1000 and (output / "curves.png").is_file()
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))

    state = torch.load(checkpoint / TRAIN_STATE, weights_only=False)
    history = state["progress"]["history"]
    assert [v for _, v in history["train/global_batch"]] == [8, 8, 8, 8, 16, 16]
    expected_lr = [LR * cosine_with_warmup(step, WARMUP, 6) for step in range(6)]
    assert [v for _, v in history["train/lr"]] == pytest.approx(expected_lr)  # one schedule across the batch change
    assert all(v > 0 for _, v in history["train/samples_per_s"])

    model, _ = load_artifact(outcome.artifact_dir)
    final = read_state_dict(checkpoint / "model.safetensors")
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in final.items())
    exported, _ = load_artifact(outcome.open_clip_dir)
    assert torch.equal(exported.logit_scale, model.logit_scale)
    assert model.visual.patch_dropout == 0.5  # the artifact keeps the configured rate; the last epoch ran unmasked


@pytest.mark.slow
def test_stop_and_resume_from_s3_equals_uninterrupted(uninterrupted, corpus, tmp_path, s3_server, monkeypatch):
    """Every output on S3 (run.output_dir=s3://..., checkpoints under it). The run is stopped, every local directory
    of its node is deleted (a fresh cluster) and its S3 tokenizer/ too (as when output_dir was a lost node's disk):
    the same command resumes with the checkpoint's tokenizer, from the checkpoint's step, and ends where an
    uninterrupted run ends. Nothing lands in a local folder named `s3:`."""
    data, tokenizer = corpus
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="ckpt")
    output = "s3://ckpt/resumed"
    upload_dir(tokenizer, f"{output}/tokenizer", s3_server)  # as the first start saves it (the corpus's tokenizer)
    node = tmp_path / "node"
    node.mkdir()
    monkeypatch.chdir(node)  # a relative folder made from the URI would appear here
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(node / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # the only endpoint setting; Ray's workers started without it
    args = overrides(data, None, output, "run.name=resumed")
    stopped = PRETRAIN.JOB(["--config", str(REPO / "jobs/configs/tiny.yaml"), *args, "--set", "run.stop_at_step=5"])
    assert stopped.result.metrics["global_step"] == 5  # mid-epoch 1: one of its two k=2 steps done
    stored = listing(output, s3_server)
    assert "checkpoints/resumed/checkpoint_step00000005/tokenizer/tokenizer.json" in stored
    assert [name for name in stored if name.startswith("tensorboard/events.out.tfevents.")]  # uploaded at checkpoints
    for name in [*stored]:
        if name.startswith("tokenizer/"):
            s3.delete_object(Bucket="ckpt", Key=f"resumed/{name}")
    for path in node.iterdir():  # the working directory itself stays: a process needs one
        shutil.rmtree(path)

    resumed = PRETRAIN.JOB(["--config", str(REPO / "jobs/configs/tiny.yaml"), *args])
    assert resumed.result.metrics["global_step"] == 6
    with resumed.result.checkpoint.as_directory() as directory:
        after_resume = read_state_dict(Path(directory) / "model.safetensors")
        assert torch.load(Path(directory) / TRAIN_STATE, weights_only=True)["progress"]["resumes"] == [5]
    reference = read_state_dict(Path(uninterrupted[0].result.checkpoint.path) / "model.safetensors")
    diff = max((after_resume[name] - tensor).abs().max().item() for name, tensor in reference.items())
    print(f"max |param diff| after resume = {diff:.2e}")
    assert diff <= 1e-6
    assert stopped.artifact_dir is None and resumed.artifact_dir == f"{output}/final"  # only a finished run exports

    stored = listing(output, s3_server)
    for name in ("final/model.safetensors", "final/tokenizer/tokenizer.json", "open_clip/open_clip_config.json",
                 "tokenizer/tokenizer.json", "curves.png"):
        assert stored.get(name, 0) > 0, name
    assert len([name for name in stored if name.startswith("tensorboard/events.out.tfevents.")]) >= 2  # both starts
    run_tokenizer = local_copy(f"{output}/tokenizer", s3_server)
    assert (run_tokenizer / "tokenizer.json").read_bytes() == (tokenizer / "tokenizer.json").read_bytes()
    model, _ = load_artifact(local_copy(resumed.artifact_dir, s3_server))
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in after_resume.items())
    assert sorted(p.name for p in node.iterdir()) == ["cache"] and not (REPO / "s3:").exists()


def test_impossible_curriculum_is_refused_before_training(ray_session, corpus, tmp_path):
    data, tokenizer = corpus
    cfg_args = overrides(data, tokenizer, tmp_path,
                         "train.curriculum=[{until_epoch: 1, global_batch: 8}, {global_batch: 12}]")
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml", cfg_args[1::2])
    with pytest.raises(CurriculumError, match=r"train\.curriculum\[1\]: global_batch 12 is not a positive multiple"):
        run_pretraining(cfg)
    too_big = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml",
                          cfg_args[1::2] + ["train.curriculum=[{global_batch: 64}]"])
    with pytest.raises(CurriculumError, match=r"train\.curriculum\[0\]: global_batch 64 exceeds the 32 training"):
        run_pretraining(too_big)
    assert not (tmp_path / "checkpoints").exists()


def test_curriculum_plan_and_config_checks():
    stages = [Stage(8, until_epoch=2), Stage(32)]
    plans = plan(stages, epochs=3, micro_batch=4, world_size=2, train_rows=64)
    assert [(p.global_batch, p.accumulation, p.steps) for p in plans] == [(8, 1, 8), (8, 1, 8), (32, 4, 2)]
    with pytest.raises(CurriculumError, match=r"curriculum\[0\]: global_batch 6"):
        plan([Stage(6)], 1, micro_batch=4, world_size=2, train_rows=64)
    with pytest.raises(CurriculumError, match=r"curriculum\[1\]: until_epoch 1 must be greater than 2"):
        plan([Stage(8, 2), Stage(8, 1), Stage(8)], 3, 4, 2, 64)
    with pytest.raises(CurriculumError, match="no stage covers epoch 2"):
        plan([Stage(8, 2)], 3, 4, 2, 64)
    with pytest.raises(ConfigError, match="only the last stage may omit until_epoch"):
        from_dict(PretrainConfig, {"train": {"curriculum": [{"global_batch": 8}, {"global_batch": 16}]}})
