"""Training checkpoints hold only tensors and plain types, are read with torch's weights-only unpickler, and are
refused under a tokenizer of another vocabulary size."""

import pathlib
import pickle

import pytest
import torch

from biomedclip.config import ConfigError
from biomedclip.model import build_model
from biomedclip.model.artifact import WEIGHTS
from biomedclip.model.checkpoint import check_vocabulary, read_state_dict
from biomedclip.train.checkpointing import TRAIN_STATE, Progress, read_checkpoint, rng_state, write_checkpoint
from biomedclip.train.optim import OptimConfig, build_optimizer, build_scheduler
from tests.helpers import tiny_config, train_tokenizer


def _state(tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_config(tokenizer))
    optimizer = build_optimizer(model, OptimConfig())
    return model, optimizer, build_scheduler(optimizer, warmup_steps=2, total_steps=10)


def test_training_state_round_trips_through_the_weights_only_loader(tmp_path):
    tokenizer = train_tokenizer(["axial ct of the chest", "a bar chart"] * 5)
    model, optimizer, scheduler = _state(tokenizer)
    model(torch.randn(2, 3, 224, 224), tokenizer(["ct", "chart"]))["image_features"].sum().backward()
    optimizer.step()
    scheduler.step()
    progress = Progress(epoch=1, step_in_epoch=3, global_step=7, samples_seen=56, global_batch=8,
                        history={"train/loss": [(6, 2.5), (7, 2.25)]}, resumes=[4])
    rngs = [rng_state(torch.device("cpu"))]
    write_checkpoint(tmp_path, model, tokenizer, optimizer, scheduler, progress, rngs)

    torch.load(tmp_path / TRAIN_STATE, weights_only=True)  # no pickled objects beyond tensors and plain types
    restored_model, restored_optimizer, restored_scheduler = _state(tokenizer)
    restored, restored_rngs = read_checkpoint(tmp_path, restored_model, restored_optimizer, restored_scheduler,
                                              tokenizer.vocab_size, "ckpt")
    assert restored.global_step == 7 and restored.history["train/loss"][-1][1] == 2.25 and restored.resumes == [4]
    assert torch.equal(restored_rngs[0]["cpu"], rngs[0]["cpu"])
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()
    moments = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(restored_optimizer.state_dict()["state"][0]["exp_avg"], moments)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_training_state_that_runs_code_is_refused(tmp_path):
    tokenizer = train_tokenizer(["axial ct of the chest", "a bar chart"] * 5)
    model, optimizer, scheduler = _state(tokenizer)
    write_checkpoint(tmp_path, model, tokenizer, optimizer, scheduler, Progress(), [rng_state(torch.device("cpu"))])
    marker = tmp_path / "code_ran"
    torch.save({"optimizer": _RunsCodeWhenUnpickled(marker)}, tmp_path / TRAIN_STATE)
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(tmp_path, model, optimizer, scheduler, tokenizer.vocab_size, "ckpt")
    assert not marker.exists()


def test_a_checkpoint_of_another_vocabulary_is_refused_naming_both_sizes(tmp_path):
    """The resume path (a fresh cluster that trained a new vocabulary) and init_from share one check."""
    tokenizer = train_tokenizer(["axial ct of the chest", "a bar chart"] * 5)
    other = train_tokenizer(["sagittal mri of the knee with effusion", "a histology slide, h&e stain"] * 5)
    assert other.vocab_size != tokenizer.vocab_size
    model, optimizer, scheduler = _state(tokenizer)
    write_checkpoint(tmp_path, model, tokenizer, optimizer, scheduler, Progress(), [rng_state(torch.device("cpu"))])
    rows, tokens = tokenizer.vocab_size, other.vocab_size
    with pytest.raises(ConfigError, match=rf"checkpoint s3://b/run/checkpoint_step00000004: its text embeddings have "
                                          rf"{rows} rows but the run's tokenizer has {tokens} tokens"):
        read_checkpoint(tmp_path, *_state(other), tokens, "s3://b/run/checkpoint_step00000004")
    with pytest.raises(ConfigError, match=rf"init_from x: .* {rows} rows .* {tokens} tokens"):
        check_vocabulary(read_state_dict(tmp_path / WEIGHTS), tokens, "init_from x")
