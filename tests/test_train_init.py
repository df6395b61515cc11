"""Starting a run from trained weights (no Ray): where init_from's weights and tokenizer come from and the errors when
they do not fit, a 224 model continued at 336, frozen towers, the learning-rate schedule over steps or samples, and
the converter of a user's image-caption pairs into pair shards."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from timm.layers import resample_abs_pos_embed
from transformers import BertModel

from biomedclip.config import ConfigError, load_config
from biomedclip.data.user_pairs import PairsInputError, convert_pairs
from biomedclip.io.transfer import COMPLETE_MARKER, is_dir, listing, staged_dir
from biomedclip.model import TextConfig
from biomedclip.model.artifact import save_artifact, tokenizer_dir_of, weights_of
from biomedclip.model.checkpoint import POS_EMBED_KEY, check_vocabulary, read_state_dict
from biomedclip.model.export import export_open_clip, model_card
from biomedclip.model.pretrained import initial_model
from biomedclip.model.text_tower import bert_config
from biomedclip.pmc.schema import PAIR_SCHEMA
from biomedclip.samples.figures import render_figure
from biomedclip.train.config import PretrainConfig
from biomedclip.train.optim import OptimConfig, cosine_with_warmup, lr_multipliers
from biomedclip.train.step import accumulate_gradients
from biomedclip.train.trainer import (
    card_facts,
    check_resume_tokenizer,
    initial_state,
    localize_sources,
    output_location,
    prepare_tokenizer,
)
from tests.helpers import load_job, tiny_config, train_tokenizer

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = [f"A {size} {colour} {shape}." for size in ("small", "large") for colour in ("red", "blue", "green")
            for shape in ("circle", "square")]


@pytest.fixture(scope="module")
def trained_224(tmp_path_factory):
    """A tiny model at 224 saved as an artifact (our layout) and exported (open_clip's)."""
    root = tmp_path_factory.mktemp("init")
    tokenizer = train_tokenizer(CAPTIONS * 3)
    torch.manual_seed(3)
    model = initial_model(tiny_config(tokenizer))
    save_artifact(model, tokenizer, root / "artifact")
    export_open_clip(model, tokenizer, root / "open_clip")
    return model, tokenizer, root


def tiny_run(init_from: Path | None, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml", [
        "model.embed_dim=32", f"train.init_from={init_from}" if init_from else "train.init_from=null", *extra])


def with_vocabulary(cfg: PretrainConfig, vocab_size: int) -> PretrainConfig:
    text = dataclasses.replace(cfg.model.text, vocab_size=vocab_size)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text=text))


def test_init_from_a_224_model_into_336_keeps_every_weight_and_resamples_the_grid(trained_224, tmp_path):
    model, tokenizer, root = trained_224
    cfg = tiny_run(root / "artifact", "model.vision.image_size=336", f"run.output_dir={tmp_path}")
    assert prepare_tokenizer(cfg, print).backend.to_str() == tokenizer.backend.to_str()
    cfg = with_vocabulary(cfg, tokenizer.vocab_size)
    for source in ("artifact", "open_clip"):
        train = dataclasses.replace(cfg.train, init_from=str(root / source))
        state = initial_state(dataclasses.replace(cfg, train=train), print)
        assert state[POS_EMBED_KEY].shape == (1, 1 + 21 * 21, 64)
        expected = resample_abs_pos_embed(model.visual.trunk.pos_embed.detach(), new_size=(21, 21), num_prefix_tokens=1)
        assert torch.allclose(state[POS_EMBED_KEY], expected)
        for name, tensor in model.state_dict().items():
            if name != POS_EMBED_KEY:
                assert torch.equal(state[name], tensor), (source, name)


def test_init_from_needs_a_tokenizer_and_the_same_vocabulary(trained_224, tmp_path, capsys):
    _, tokenizer, root = trained_224
    bare = tmp_path / "snapshot"  # a hub snapshot without its tokenizer files
    bare.mkdir()
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        (bare / name).write_bytes((root / "open_clip" / name).read_bytes())
    assert tokenizer_dir_of(bare) is None and weights_of(bare).name == "open_clip_model.safetensors"
    with pytest.raises(ConfigError, match=r"snapshot carries no tokenizer \(none of tokenizer/tokenizer.json.*"
                                          r"set data.tokenizer_dir"):
        prepare_tokenizer(tiny_run(bare, f"run.output_dir={tmp_path / 'run'}"), print)
    cfg = tiny_run(bare, f"data.tokenizer_dir={root / 'artifact' / 'tokenizer'}", f"run.output_dir={tmp_path / 'run'}")
    assert prepare_tokenizer(cfg, print).vocab_size == tokenizer.vocab_size
    state = read_state_dict(weights_of(bare))
    with pytest.raises(ConfigError, match=rf"text embeddings have {tokenizer.vocab_size} rows but the run's "
                                          r"tokenizer has 30522 tokens"):
        check_vocabulary(state, 30522, f"train.init_from {bare}")
    assert load_job("pretrain").JOB.main(["--config", str(REPO / "jobs/configs/finetune.yaml"),
                                          "--set", "data.path=x"]) == 2
    assert re.search(r"train.init_from: .*fine-tunes a trained model", capsys.readouterr().err)


def test_frozen_tower_gets_no_gradient_and_the_other_one_does(trained_224):
    model, tokenizer, _ = trained_224
    model = initial_model(model.config).train(False)
    model.freeze(["text"])
    pixels = torch.randn(4, 3, 224, 224)
    accumulate_gradients(model, [(pixels[:2], tokenizer(CAPTIONS[:2])), (pixels[2:], tokenizer(CAPTIONS[2:4]))])
    assert all(p.grad is None for p in model.text.parameters())
    assert all(p.grad is not None for p in model.visual.parameters())
    assert model.logit_scale.grad is not None
    with pytest.raises(ConfigError, match="frozen_towers: \\['vision'\\]"):
        tiny_run(None, "train.frozen_towers=[vision]")


def test_schedule_over_samples_and_lr_scaling_per_stage():
    batches = [4] * 30 + [64] * 10  # a 16x batch stage: 16x fewer steps for the same data
    steps = lr_multipliers(OptimConfig(warmup_steps=5), batches)
    assert steps == [cosine_with_warmup(step, 5, 40) for step in range(40)]
    samples = lr_multipliers(OptimConfig(warmup_steps=5, schedule_unit="samples"), batches)
    assert samples[:5] == steps[:5]
    seen_at_boundary = (30 * 4 - 5 * 4) / (30 * 4 + 10 * 64 - 5 * 4)  # of the samples after warm-up
    assert samples[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * seen_at_boundary)))
    assert samples[30] > 0.9 > steps[30]  # the small-batch epochs do not use up the decay
    linear = lr_multipliers(OptimConfig(warmup_steps=5, schedule_unit="samples", lr_scaling="linear"), batches)
    root = lr_multipliers(OptimConfig(warmup_steps=5, schedule_unit="samples", lr_scaling="sqrt"), batches)
    assert linear[:30] == samples[:30] == root[:30]
    assert linear[35] == pytest.approx(16 * samples[35]) and root[35] == pytest.approx(4 * samples[35])
    with pytest.raises(ConfigError, match="schedule_unit"):
        load_config(PretrainConfig, None, ["train.optim.schedule_unit=epochs"])


def test_paper_recipe_numbers():
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/paper.yaml", ["model.text.pretrained=/models/BiomedBERT"])
    optim = cfg.train.optim
    assert (optim.betas, optim.eps, optim.lr, optim.weight_decay, optim.warmup_steps) == ((0.9, 0.98), 1e-6, 5e-4,
                                                                                          0.2, 2000)
    assert [(s.until_epoch, s.global_batch) for s in cfg.train.curriculum] == [(8, 4096), (None, 65536)]
    assert cfg.train.epochs == 40 and cfg.train.precision == "auto" and cfg.model.grad_checkpointing
    stage2 = load_config(PretrainConfig, REPO / "jobs/configs/paper_stage2.yaml")
    assert stage2.train.init_from and stage2.model.vision.image_size == 336 and stage2.train.unmasked_epochs >= 1


def write_user_pairs(directory: Path, count: int, seed: int = 0) -> list[dict]:
    """Sample-corpus figures as PNG files under images/, with their captions."""
    rng = np.random.default_rng(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        figure = render_figure(rng, (96, 128))
        figure.image.save(directory / "images" / f"fig{index}.png")
        records.append({"image_path": f"images/fig{index}.png", "caption": figure.caption, "group": f"case{index}"})
    return records


def test_converter_writes_the_pair_schema_and_reports_bad_rows(tmp_path):
    records = write_user_pairs(tmp_path, 12)
    with (tmp_path / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image_path", "caption", "group"])
        writer.writeheader()
        writer.writerows(records + [{"image_path": "images/missing.png", "caption": "x", "group": "g"},
                                    {"image_path": "images/fig0.png", "caption": " ", "group": "g"}])
    report = convert_pairs(tmp_path / "pairs.csv", tmp_path / "out")
    assert sum(report.written.values()) == 12 and report.written["train"] > 0
    assert [(line, reason) for line, reason, _ in report.skipped] == [(14, "missing_image"), (15, "caption_too_short")]
    table = pq.read_table(tmp_path / "out" / "train")
    assert table.schema.equals(PAIR_SCHEMA, check_metadata=False)
    row = table.slice(0, 1).to_pylist()[0]
    source = next(r for r in records if r["image_path"] == row["fig_id"])
    assert row["caption"] == source["caption"] and row["pmcid"] == source["group"] and row["split"] == "train"
    assert Image.open(io.BytesIO(row["image"])).size == (row["width"], row["height"])

    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    assert sum(convert_pairs(tmp_path / "pairs.jsonl", tmp_path / "out_jsonl").written.values()) == 3
    (tmp_path / "bad.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(PairsInputError, match=r"bad.csv: the header lacks image_path, caption"):
        convert_pairs(tmp_path / "bad.csv", tmp_path / "out_bad")
    assert load_job("make_pairs").JOB.main(["--input", str(tmp_path / "bad.csv"), "--output", str(tmp_path / "o")]) == 2



def test_starting_weights_on_s3_are_copied_to_the_node_cache_once(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(tmp_path / "cache"))
    tokenizer = train_tokenizer(CAPTIONS * 3)
    bert = tmp_path / "bert"
    BertModel(bert_config(TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size))).save_pretrained(bert)
    tokenizer.save(bert)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="models")
    for path in bert.iterdir():
        s3.upload_file(str(path), "models", f"pubmedbert/{path.name}")
    cfg = tiny_run(None, "model.text.pretrained=s3://models/pubmedbert", f"data.s3_endpoint={s3_server}",
                   f"run.output_dir={tmp_path / 'run'}")
    local = localize_sources(cfg, print)
    copy = Path(local.model.text.pretrained)
    assert copy.parent == tmp_path / "cache" and not (tmp_path / "run").exists()  # nothing under the run's output
    assert sorted(p.name for p in copy.iterdir() if p.name != COMPLETE_MARKER) == sorted(p.name for p in bert.iterdir())
    assert prepare_tokenizer(local, print).backend.to_str() == tokenizer.backend.to_str()
    local = with_vocabulary(local, tokenizer.vocab_size)
    assert torch.equal(initial_model(local.model).text.transformer.embeddings.word_embeddings.weight,
                       BertModel.from_pretrained(bert).embeddings.word_embeddings.weight)
    weights = tiny_run(None, "model.vision.pretrained=s3://models/pubmedbert/model.safetensors",
                       f"data.s3_endpoint={s3_server}")
    weights_copy = Path(localize_sources(weights, print).model.vision.pretrained)  # one file, not its folder
    assert weights_copy.is_relative_to(tmp_path / "cache") and list(weights_copy.parent.iterdir()) == [weights_copy]
    assert weights_copy.read_bytes() == (bert / "model.safetensors").read_bytes()
    s3.delete_object(Bucket="models", Key="pubmedbert/config.json")
    assert localize_sources(cfg, print).model.text.pretrained == str(copy)  # not fetched again
    with pytest.raises(ConfigError, match="s3://models/nothing: not found"):
        localize_sources(tiny_run(None, "model.text.pretrained=s3://models/nothing",
                                  f"data.s3_endpoint={s3_server}"), print)


def test_a_run_without_a_configured_tokenizer_takes_its_own_from_s3_before_training_one(s3_server, tmp_path,
                                                                                         monkeypatch):
    """A resume on a fresh cluster: the run's tokenizer from <output_dir>/tokenizer, else from its newest
    checkpoint (by step, not by listing order), written back to <output_dir>/tokenizer."""
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # the standard variable alone reaches the store
    boto3.client("s3").create_bucket(Bucket="tokenizer-lookup")
    root = "s3://tokenizer-lookup"
    older, newer = train_tokenizer(CAPTIONS[:4] * 3), train_tokenizer(CAPTIONS * 3)
    for step, tokenizer in ((2, newer), (10, newer), (9, older)):
        with staged_dir(f"{root}/ckpt/tiny/checkpoint_step{step:08d}/tokenizer") as directory:
            tokenizer.save(directory)
    cfg = tiny_run(None, f"run.output_dir={root}/out", f"run.storage_path={root}/ckpt", "run.name=tiny",
                   f"data.path={root}/no-data")  # training a vocabulary would fail reading it
    assert prepare_tokenizer(cfg, print).backend.to_str() == newer.backend.to_str()
    assert is_dir(f"{root}/out/tokenizer") and "tokenizer.json" in listing(f"{root}/out/tokenizer")
    with staged_dir(f"{root}/out/tokenizer") as directory:  # the output's own copy comes first
        older.save(directory)
    assert prepare_tokenizer(cfg, print).backend.to_str() == older.backend.to_str()
    check_resume_tokenizer(cfg, newer)  # the newest checkpoint's vocabulary
    with pytest.raises(ConfigError, match=rf"ckpt/tiny/checkpoint_step00000010: the run resumes from this checkpoint, "
                                          rf"trained with a {newer.vocab_size}-token vocabulary, but the run's "
                                          rf"tokenizer has {older.vocab_size} tokens"):
        check_resume_tokenizer(cfg, older)


def test_an_output_location_pyarrow_cannot_open_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output_location(tiny_run(None, "run.output_dir=runs/x")) == str(tmp_path / "runs" / "x")  # absolute
    assert output_location(tiny_run(None, "run.output_dir=s3://bucket/runs/x/")) == "s3://bucket/runs/x"  # as given
    with pytest.raises(ConfigError, match=r"run.output_dir: nosuchscheme://b/x: pyarrow cannot open nosuchscheme://"):
        output_location(tiny_run(None, "run.output_dir=nosuchscheme://b/x"))
    assert load_job("pretrain").JOB.main(["--config", str(REPO / "jobs/configs/tiny.yaml"), "--set", "data.path=.",
                                          "--set", "run.output_dir=nosuchscheme://b/x"]) == 2
    assert "pyarrow cannot open nosuchscheme:// URIs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no folder made from the URI


def test_model_card_names_the_recipe_and_figures_but_no_paths(trained_224):
    model, _, root = trained_224
    cfg = tiny_run(root / "artifact", f"data.path={root / 'my_pairs'}")
    card = model_card(model, card_facts(cfg, 560, {"val/i2t_R@1": 0.5, "epoch": 3, "train/loss": 1.0}))
    header, _, body = card.removeprefix("---\n").partition("---\n")
    assert "library_name: open_clip" in header and "pipeline_tag: zero-shot-image-classification" in header
    for expected in ("560 training image-caption pairs (my_pairs)", "started from (train.init_from): artifact",
                     "| val/i2t_R@1 | 0.5000 |", "global batch: 32 until epoch 12, 64", "## Intended use"):
        assert expected in body, expected
    assert str(root) not in card and "train/loss" not in card
