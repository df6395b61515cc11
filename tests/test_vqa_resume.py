"""VQA fine-tuning stopped after an epoch and resumed from checkpoints on S3 equals an uninterrupted run; the model
and metrics go to an s3:// output and load back from there."""
import json

import boto3
import pytest
import torch

from biomedclip.model import build_model
from biomedclip.model.artifact import save_artifact
from biomedclip.vqa import load_vqa_artifact
from tests.helpers import load_job, tiny_config, train_tokenizer
from tests.test_vqa_finetune import TINY_CONFIG
from tests.vqa_helpers import write_colour_slake

FINETUNE_VQA = load_job("finetune_vqa")
EPOCHS = 2


@pytest.mark.slow
def test_stopped_and_resumed_from_s3_equals_uninterrupted(ray_session, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(tmp_path / "cache"))
    data = write_colour_slake(tmp_path / "slake", {"train": 8, "test": 4})
    tokenizer = train_tokenizer([f"is the marker {c}?" for c in ("red", "green", "blue")])
    torch.manual_seed(0)
    encoder = save_artifact(build_model(tiny_config(tokenizer)), tokenizer, tmp_path / "encoder")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="vqa")

    def job(output: str, *overrides: str) -> dict:
        # Random crops and dropout on, one worker: the resumed epoch must replay the crops, the shuffle (drawn from
        # the restored RNG) and the dropout masks.
        sets = ["run.num_workers=1", f"train.epochs={EPOCHS}", "train.batch_size=4", "train.augment=true",
                "fusion.dropout=0.1", "train.precision=fp32", f"run.s3_endpoint={s3_server}", *overrides]
        return FINETUNE_VQA.JOB(["--checkpoint", str(encoder), "--dataset", "slake", "--data", str(data),
                                 "--config", str(TINY_CONFIG), *(arg for s in sets for arg in ("--set", s)),
                                 "--output", output])

    reference = job(str(tmp_path / "uninterrupted"), "run.name=uninterrupted")
    stopped = job("s3://vqa/resumed", "run.name=resumed", "run.stop_at_epoch=1")
    assert stopped["stopped_at_epoch"] == 1 and len(stopped["history"]) == 1
    objects = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket="vqa")["Contents"]}
    assert "resumed/checkpoints/resumed/checkpoint_epoch0001/train_state.pt" in objects
    assert not any(key.startswith("resumed/model/") for key in objects)  # only a finished run exports
    resumed = job("s3://vqa/resumed", "run.name=resumed")

    assert len(resumed["history"]) == EPOCHS
    for before, after in zip(reference["history"], resumed["history"]):
        assert after.keys() == before.keys()
        for key, value in before.items():
            assert after[key] == pytest.approx(value, abs=1e-6), key
    assert resumed["test"] == reference["test"]
    expected, _, _ = load_vqa_artifact(tmp_path / "uninterrupted" / "model")
    model, _, vocab = load_vqa_artifact("s3://vqa/resumed/model", s3_server)
    assert vocab.answers == ["no", "yes"]
    diff = max((model.state_dict()[k] - v).abs().max().item() for k, v in expected.state_dict().items())
    print(f"max |weight difference| resumed vs uninterrupted: {diff:.2e}")
    assert diff < 1e-5
    stored = boto3.client("s3", endpoint_url=s3_server).get_object(Bucket="vqa", Key="resumed/metrics.json")
    assert json.loads(stored["Body"].read())["history"] == json.loads(json.dumps(resumed["history"]))
