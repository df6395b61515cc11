"""The search space: the base pretraining config as a dict, trial values applied to it by dotted key, Tune's
param space, and the check of every axis value against the pretraining config (model presets, sizes) before Ray starts.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from biomedclip.config import ConfigError, apply_override, from_dict
from biomedclip.train.config import PretrainConfig
from biomedclip.tune.config import AxisSpec, SweepConfig

LOCAL_PATH_KEYS = ("data.path", "data.tokenizer_dir")  # relative to where the sweep starts; trials run elsewhere


def load_base(sweep: SweepConfig) -> dict[str, Any]:
    """The base config as a plain dict, with `base_overrides` applied (checked by `check_space`)."""
    path = Path(sweep.base_config)
    if not path.is_file():
        raise ConfigError(f"base_config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"base_config: {path} is not valid YAML: {err}") from err
    for override in sweep.base_overrides:
        apply_override(data, override)
    return data


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with each dotted key set to its value (JSON is YAML, so any value type survives)."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        apply_override(data, f"{key}={json.dumps(value)}")
    return data


def pretrain_config(base: dict[str, Any], values: dict[str, Any]) -> PretrainConfig:
    return from_dict(PretrainConfig, with_values(base, values))


def check_space(sweep: SweepConfig, base: dict[str, Any]) -> PretrainConfig:
    """The base config, once every axis value has been shown to make a valid pretraining config; else a
    ConfigError naming the axis and the value (e.g. an image size or a vision preset that no preset supports)."""
    try:
        base_cfg = from_dict(PretrainConfig, base)
    except ConfigError as err:
        raise ConfigError(f"base_config {sweep.base_config} (with base_overrides): {err}") from err
    for key, axis in sweep.axes().items():
        for value in axis.values:
            try:
                pretrain_config(base, {key: value})
            except ConfigError as err:
                raise ConfigError(f"space.{key}: value {value!r} is refused: {err}") from err
    max_t = sweep.scheduler.max_t or base_cfg.train.epochs
    if sweep.scheduler.grace_period > max_t:
        raise ConfigError(f"scheduler.grace_period: {sweep.scheduler.grace_period} exceeds max_t = {max_t} epochs")
    return base_cfg


def _tune_domain(axis: AxisSpec):
    if axis.kind == "grid":
        return tune.grid_search(axis.grid)
    if axis.kind == "choice":
        return tune.choice(axis.choice)
    if axis.kind == "loguniform":
        return tune.loguniform(*axis.loguniform)
    return tune.uniform(*axis.uniform)


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Flat dotted keys -> Tune domains; a trial's config is then {dotted key: value}."""
    return {key: _tune_domain(axis) for key, axis in sweep.axes().items()}


def absolute_local_paths(base: dict[str, Any]) -> dict[str, Any]:
    """Trials run in their own working folders: local data paths become absolute (S3 URIs stay as they are)."""
    values = {}
    for key in LOCAL_PATH_KEYS:
        section, name = key.split(".")
        value = base.get(section, {}).get(name)
        if value and "://" not in str(value):
            values[key] = str(Path(value).resolve())
    return with_values(base, values)
