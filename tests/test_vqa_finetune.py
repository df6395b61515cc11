"""Fine-tuning end to end through the job on Ray Train (2 workers) on the real VQA-RAD sample; the synthetic input."""
import json
from pathlib import Path

import boto3
import pytest
import torch
from PIL import Image

from biomedclip.config import load_config
from biomedclip.io import staged_dir, upload_dir
from biomedclip.model.artifact import save_artifact
from biomedclip.samples.vqa import derive_questions
from biomedclip.vqa import load_vqa_predictor, load_vqa_rad, save_vqa_artifact
from biomedclip.vqa.train import FinetuneConfig
from tests.helpers import load_job
from tests.vqa_helpers import (
    linked_dataset,
    synthetic_rows,
    tiny_encoder,
    vqa_rad_dir,
    vqa_rad_public,
    write_corpus_parquet,
)

REPO = Path(__file__).resolve().parent.parent
FINETUNE_VQA = load_job("finetune_vqa")
TINY_CONFIG = REPO / "jobs" / "configs" / "finetune_vqa_tiny.yaml"
MISSING_IMAGE = "synpic54610.jpg"
EPOCHS = 6
WORKERS = 2  # DDP and the sharded test scoring run for real


@pytest.fixture(scope="module")
def checkpoint(realdata, tmp_path_factory):
    model, tokenizer = tiny_encoder(realdata)
    return save_artifact(model, tokenizer, tmp_path_factory.mktemp("biomedclip"))


@pytest.fixture(scope="module")
def finetuned(ray_session, realdata, checkpoint, tmp_path_factory):
    """The job run once, on 2 workers, on the real sample with one image left out of the dataset folder."""
    root = tmp_path_factory.mktemp("vqa_rad")
    data = linked_dataset(vqa_rad_dir(realdata), root / "data", "images", leave_out=(MISSING_IMAGE,))
    metrics = FINETUNE_VQA.JOB(["--checkpoint", str(checkpoint), "--dataset", "vqa-rad", "--data", str(data),
                                 "--config", str(TINY_CONFIG), "--set", f"train.epochs={EPOCHS}",
                                 "--set", f"run.num_workers={WORKERS}", "--set", "train.batch_size=8",
                                 "--output", str(root / "out")])
    return metrics, root / "out", data


def _expected(realdata, phrases):
    return [r for r in vqa_rad_public(realdata) if r["phrase_type"] in phrases and r["image_name"] != MISSING_IMAGE]


@pytest.mark.slow
def test_finetune_real_vqa_rad_loss_falls_and_accuracy_is_on_the_test_records(finetuned, realdata):
    metrics, out, _ = finetuned
    train, test = _expected(realdata, {"freeform", "para"}), _expected(realdata, {"test_freeform", "test_para"})
    assert (metrics["train_questions"], metrics["test_questions"]) == (len(train), len(test))
    skipped = {str(r["qid"]) for r in vqa_rad_public(realdata) if r["image_name"] == MISSING_IMAGE}
    assert {s.split("record qid ")[1].split(":")[0] for s in metrics["skipped"]} == skipped
    assert all(MISSING_IMAGE in s for s in metrics["skipped"])

    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < 0.9 * losses[0] and min(losses[-2:]) < min(losses[:2])
    closed = sum(r["answer_type"].strip() == "CLOSED" for r in test)
    final = history[-1]
    assert (final["test_n"], final["test_n_closed"], final["test_n_open"]) == (len(test), closed, len(test) - closed)
    # Each worker scores a disjoint slice: the all-reduced counts cover every test question exactly once, and equal
    # those of the saved model scored through the serving predictor (answer strings, one process).
    assert metrics["test"] == {k.removeprefix("test_"): v for k, v in final.items() if k.startswith("test_")}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))


@pytest.mark.slow
def test_unseen_test_answers_count_as_wrong(finetuned, realdata):
    metrics, out, _ = finetuned
    train_answers = {str(r["answer"]).strip().lower() for r in _expected(realdata, {"freeform", "para"})}
    rows = json.loads((out / "predictions.json").read_text())
    unseen = [row for row in rows if row["answer"] not in train_answers]
    assert metrics["test_unseen_answers"] == len(unseen) > 0
    assert all(row["predicted"] != row["answer"] for row in unseen)
    correct = sum(row["predicted"] == row["answer"] for row in rows)
    assert metrics["test"]["accuracy"] == pytest.approx(correct / len(rows))
    closed = [row for row in rows if row["answer_type"] == "closed"]
    assert metrics["test"]["closed_accuracy"] == pytest.approx(
        sum(row["predicted"] == row["answer"] for row in closed) / len(closed))


@pytest.mark.slow
def test_trained_model_save_load_round_trip_predicts_identically(finetuned, tmp_path):
    _, out, data = finetuned
    first = load_vqa_predictor(out / "model")
    second = load_vqa_predictor(save_vqa_artifact(first.model, first.tokenizer, first.vocab, tmp_path / "copy"))
    records = load_vqa_rad(data, "test").records[:8]
    images = [Image.open(r.image).convert("RGB") for r in records]
    questions = [r.question for r in records]
    assert torch.equal(first.logits(images, questions), second.logits(images, questions))
    assert first.predict(images, questions) == second.predict(images, questions)
    stored = json.loads((out / "predictions.json").read_text())
    assert [p["answer"] for p in second.predict(images, questions)] == [row["predicted"] for row in stored[:8]]


def test_job_derives_the_synthetic_set_and_reads_it_as_vqa_rad(tmp_path):
    rows = synthetic_rows(6)
    write_corpus_parquet(tmp_path / "corpus", "train", rows[:4])
    write_corpus_parquet(tmp_path / "corpus", "test", rows[4:])
    job = FINETUNE_VQA
    args = job.JOB.parse(["--checkpoint", "unused", "--dataset", "synthetic", "--data", str(tmp_path / "corpus"),
                          "--output", str(tmp_path / "out")])
    loaded = load_config(FinetuneConfig, args.config)
    output = str(tmp_path / "out")
    name, folder, image_root, cfg = job.prepare_dataset(args.dataset, args.data, output, Path(output), loaded)
    assert (name, folder) == ("vqa-rad", tmp_path / "out" / "vqa_set")
    assert image_root.uri == image_root.driver_path == str(folder)  # a local output: every path stays as it is
    assert cfg.data.vqa_rad_format == "splits" and loaded.data.vqa_rad_format == "auto"  # a new config, not edited
    held_out = load_vqa_rad(tmp_path / "out" / "vqa_set", "test", cfg.data.vqa_rad_format).records
    assert len(held_out) == sum(len(derive_questions(caption)) for caption, _ in rows[4:])
    assert image_root.on_this_node(held_out, None) == held_out


def test_a_corpus_on_s3_reaches_workers_on_other_nodes_through_the_output(s3_server, tmp_path, monkeypatch):
    """--data and --output on S3: the driver copies the corpus into its node cache, derives the set there and stores
    it with the output; a worker on another node (another cache) finds every image through `ImageRoot`."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="vqa-data")
    rows = synthetic_rows(6)
    write_corpus_parquet(tmp_path / "corpus", "train", rows[:4])
    write_corpus_parquet(tmp_path / "corpus", "test", rows[4:])
    upload_dir(tmp_path / "corpus", "s3://vqa-data/corpus")
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(tmp_path / "driver-cache"))
    loaded = load_config(FinetuneConfig, FINETUNE_VQA.DEFAULT_CONFIG)
    with staged_dir("s3://vqa-data/out") as local_output:
        name, folder, image_root, cfg = FINETUNE_VQA.prepare_dataset(
            "synthetic", "s3://vqa-data/corpus", "s3://vqa-data/out", local_output, loaded)
        records = load_vqa_rad(folder, "train", cfg.data.vqa_rad_format).records
        assert image_root.uri == "s3://vqa-data/out/vqa_set" and records
        monkeypatch.setenv("BIOMEDCLIP_CACHE", str(tmp_path / "worker-cache"))
        on_worker = image_root.on_this_node(records, None)
        assert [r.question for r in on_worker] == [r.question for r in records]
        for record, theirs in zip(records, on_worker):
            assert theirs.image.is_relative_to(tmp_path / "worker-cache")
            assert theirs.image.read_bytes() == record.image.read_bytes()


@pytest.mark.slow
def test_job_on_the_synthetic_corpus_in_local_mode(checkpoint, tmp_path):
    rows = synthetic_rows(12)
    write_corpus_parquet(tmp_path / "corpus", "train", rows[:8])
    write_corpus_parquet(tmp_path / "corpus", "test", rows[8:])
    metrics = FINETUNE_VQA.JOB(["--checkpoint", str(checkpoint), "--dataset", "synthetic", "--data",
                                 str(tmp_path / "corpus"), "--config", str(TINY_CONFIG), "--set", "train.epochs=2",
                                 "--set", "run.num_workers=0", "--output", str(tmp_path / "out")])
    held_out = json.loads((tmp_path / "out" / "vqa_set" / "testset.json").read_text())
    assert metrics["test"]["n"] == metrics["history"][-1]["test_n"] == len(held_out)
    assert metrics["test"]["accuracy"] == metrics["history"][-1]["test_accuracy"]
    assert load_vqa_predictor(tmp_path / "out" / "model").vocab.answers == \
        json.loads((tmp_path / "out" / "model" / "answers.json").read_text())["answers"]
