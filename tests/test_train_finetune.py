"""A run that starts from trained weights, end to end on the session's Ray: fine-tuning through
jobs/configs/finetune.yaml, from an open_clip-built BiomedCLIP-architecture checkpoint, at a higher resolution, on a
user's pairs converted from a CSV; then its export, moved, loaded by open_clip."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch

from biomedclip.config import load_config
from biomedclip.data.user_pairs import convert_pairs
from biomedclip.model import TextConfig
from biomedclip.model.artifact import load_artifact
from biomedclip.model.checkpoint import read_state_dict
from biomedclip.model.pretrained import initial_model
from biomedclip.model.text_tower import bert_config
from biomedclip.model.timm_names import timm_model_name
from biomedclip.model.transforms import decode_image, eval_transform
from biomedclip.pmc.split import SplitConfig
from biomedclip.train.checkpointing import TRAIN_STATE
from biomedclip.train.config import PretrainConfig
from biomedclip.train.metrics import contrastive_loss_chunked, retrieval_metrics
from biomedclip.train.trainer import run_pretraining
from tests.helpers import open_clip_model, train_tokenizer
from tests.test_train_init import write_user_pairs

REPO = Path(__file__).resolve().parent.parent
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"  # what the released snapshot names



def open_clip_snapshot(directory: Path, tokenizer) -> Path:
    """open_clip's own CustomTextCLIP in BiomedCLIP's architecture (tiny towers, 224 px), saved the way the released
    model lies on disk as a hub snapshot: open_clip_config.json, open_clip_pytorch_model.bin, tokenizer files."""
    bert_dir = directory / "bert"
    bert_config(TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size)).save_pretrained(bert_dir)
    model_cfg = {
        "embed_dim": 64,
        "vision_cfg": {"timm_model_name": timm_model_name("vit-tiny", 224), "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir), "hf_model_pretrained": False,
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 77},
    }
    torch.manual_seed(7)
    model = open_clip.CustomTextCLIP(**model_cfg)
    snapshot = directory / "snapshot"
    snapshot.mkdir()
    torch.save(model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    model_cfg["text_cfg"].update(hf_model_name=BIOMEDBERT, hf_tokenizer_name=BIOMEDBERT)
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    tokenizer.save(snapshot)
    return snapshot


def val_figures(model, tokenizer, pairs: Path, image_size: int) -> dict[str, float]:
    """Val recall and loss of `model` computed here, outside Ray, on every val pair."""
    rows = pq.read_table(pairs / "val", columns=["caption", "image"]).to_pylist()
    transform = eval_transform(image_size)
    pixels = torch.from_numpy(np.stack([transform(decode_image(row["image"])) for row in rows]))
    tokens = tokenizer([row["caption"] for row in rows])
    with torch.no_grad():
        out = model.eval()(pixels, tokens)
    metrics = retrieval_metrics(out["image_features"], out["text_features"], tokens)
    metrics["val/loss"] = contrastive_loss_chunked(out["image_features"], out["text_features"],
                                                   out["logit_scale"].item())
    return metrics


@pytest.mark.slow
def test_finetune_from_an_open_clip_snapshot_at_336_improves_recall_and_the_export_travels(ray_session, tmp_path):
    """One run covers: a user's CSV converted to pairs; train.init_from an open_clip-saved checkpoint at 224 into a
    336 px run (position embedding resampled) through jobs/configs/finetune.yaml; the starting model's val figures
    at step 0 equal those of the initial weights; recall improves; the export, moved, loads in open_clip."""
    records = write_user_pairs(tmp_path / "mine", 240, seed=11)
    with (tmp_path / "mine" / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image_path", "caption", "group"])
        writer.writeheader()
        writer.writerows(records)
    report = convert_pairs(tmp_path / "mine" / "pairs.csv", tmp_path / "pairs", SplitConfig(0.75, 0.25, 0.0))
    assert report.written["val"] >= 40 and not report.skipped
    tokenizer = train_tokenizer([record["caption"] for record in records])
    snapshot = open_clip_snapshot(tmp_path, tokenizer)

    cfg = load_config(PretrainConfig, REPO / "jobs/configs/finetune.yaml", [
        "model.embed_dim=64", "model.vision.preset=vit-tiny", "model.vision.image_size=336",
        "model.text.preset=bert-tiny", "model.text.context_length=77", "model.grad_checkpointing=false",
        f"data.path={tmp_path / 'pairs'}", f"train.init_from={snapshot}", f"run.output_dir={tmp_path / 'run'}",
        "data.micro_batch=16", "data.map_batch_size=32", "data.shuffle_buffer=64", "data.augment=false",
        "train.curriculum=[{global_batch: 16}]", "train.epochs=5", "train.optim.lr=3.0e-3",
        "train.optim.warmup_steps=10", "train.precision=fp32", "run.use_gpu=false", "run.cpus_per_worker=1",
        "run.keep_checkpoints=1"])
    outcome = run_pretraining(cfg)
    with outcome.result.checkpoint.as_directory() as directory:
        progress = torch.load(Path(directory) / TRAIN_STATE, weights_only=True)["progress"]
    assert progress["resumes"] == [] and progress["global_step"] == 5 * (report.written["train"] // 16)

    text_cfg = dataclasses.replace(cfg.model.text, vocab_size=tokenizer.vocab_size)
    model_cfg = dataclasses.replace(cfg.model, text=text_cfg)
    start = initial_model(model_cfg, read_state_dict(snapshot / "open_clip_pytorch_model.bin"))
    expected = val_figures(start, tokenizer, tmp_path / "pairs", 336)
    history = progress["history"]
    for name, value in expected.items():
        assert history[name][0] == (0, pytest.approx(value, abs=1e-4)), name  # logged before the first step

    def mean_recall(k: int, index: int) -> float:
        return sum(history[f"val/{direction}_R@{k}"][index][1] for direction in ("i2t", "t2i")) / 2

    print(f"\nval pairs {report.written['val']}: R@5 {mean_recall(5, 0):.3f} -> {mean_recall(5, -1):.3f}, "
          f"R@10 {mean_recall(10, 0):.3f} -> {mean_recall(10, -1):.3f}")
    assert mean_recall(5, -1) > mean_recall(5, 0) + 0.1 and mean_recall(10, -1) > mean_recall(10, 0) + 0.1

    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(outcome.open_clip_dir, moved)
    shutil.rmtree(tmp_path / "run")
    texts = [path for path in moved.iterdir() if path.suffix in (".json", ".md", ".txt")]
    assert not any(str(tmp_path) in path.read_text() for path in texts)
    card = (moved / "README.md").read_text()
    assert "library_name: open_clip" in card and "started from (train.init_from): snapshot" in card
    assert f"| val/i2t_R@5 | {history['val/i2t_R@5'][-1][1]:.4f} |" in card
    reference = open_clip_model(moved)[0].eval()
    ours, moved_tokenizer = load_artifact(moved)
    captions = [record["caption"] for record in records[:4]]
    pixels, tokens = torch.randn(2, 3, 336, 336), moved_tokenizer(captions)
    with torch.no_grad():
        assert torch.allclose(ours.encode_image(pixels), reference.encode_image(pixels, normalize=True), atol=1e-5)
        assert torch.allclose(ours.encode_text(tokens), reference.encode_text(tokens, normalize=True), atol=1e-5)
    assert torch.equal(tokens, open_clip.get_tokenizer(f"local-dir:{moved}")(captions))
