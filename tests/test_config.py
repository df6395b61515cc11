import dataclasses
import typing

import pytest
import yaml

from biomedclip.config import ConfigError, from_dict, load_config
from biomedclip.model import ModelConfig
from tests.conftest import REPO


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("embed_dim: 64\nvision: {preset: vit-tiny, image_size: 336}\n")
    cfg = load_config(ModelConfig, path, ["text.context_length=77", "vision.patch_dropout=0.5"])
    assert (cfg.embed_dim, cfg.vision.preset, cfg.vision.image_size) == (64, "vit-tiny", 336)
    assert cfg.text.context_length == 77 and cfg.vision.patch_dropout == 0.5
    assert isinstance(cfg.vision.patch_dropout, float)


@pytest.mark.parametrize("override, key", [
    ("vision.presett=vit-base", "vision.presett"),
    ("embed_dim=big", "embed_dim"),
    ("grad_checkpointing=1", "grad_checkpointing"),
    ("vision.image_size=300", "vision.image_size"),
    ("text.preset=gpt", "text.preset"),
    ("vision=3", "vision"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}\b"):
        load_config(ModelConfig, None, [override])


@pytest.mark.parametrize("name, preset", [("tiny", "vit-tiny"), ("paper", "vit-base")])
def test_repo_model_configs_load(name, preset):
    cfg = from_dict(ModelConfig, yaml.safe_load((REPO / "jobs" / "configs" / f"{name}.yaml").read_text())["model"])
    assert cfg.vision.preset == preset


def test_defaults_are_the_papers_model():
    cfg = ModelConfig()
    assert (cfg.embed_dim, cfg.vision.preset, cfg.vision.image_size, cfg.text.preset, cfg.text.context_length) == (
        512, "vit-base", 224, "pubmedbert-base", 256)


def test_accelerator_type_pins_gpu_workers_only():
    from biomedclip.train.config import RunSection

    assert from_dict(RunSection, {"use_gpu": True, "accelerator_type": "A100"}).accelerator_type == "A100"
    with pytest.raises(ConfigError, match="run.accelerator_type: set run.use_gpu=true"):
        from_dict(RunSection, {"accelerator_type": "A100"})


def _config_classes(cls: type, seen: set[type]) -> set[type]:
    """`cls` and every dataclass nested in its fields."""
    seen.add(cls)
    for hint in typing.get_type_hints(cls).values():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate) and candidate not in seen:
                _config_classes(candidate, seen)
    return seen


def test_job_configs_are_frozen_after_loading():
    from biomedclip.data.extract import ExtractConfig
    from biomedclip.evaluate import EvaluateConfig
    from biomedclip.search.build import IndexConfig
    from biomedclip.train.config import PretrainConfig
    from biomedclip.tune.config import SweepConfig
    from biomedclip.vqa.train import FinetuneConfig

    classes = set()
    for job_config in (ExtractConfig, EvaluateConfig, PretrainConfig, SweepConfig, FinetuneConfig, IndexConfig):
        _config_classes(job_config, classes)
    mutable = sorted(c.__name__ for c in classes if not c.__dataclass_params__.frozen)
    assert not mutable, f"config classes a job could edit after loading: {mutable}"
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3
