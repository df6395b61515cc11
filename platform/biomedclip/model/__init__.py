"""The BiomedCLIP model: towers, presets, preprocessing and checkpoint I/O. Knows nothing about Ray.

Exports load on first use, so that importing a light submodule (e.g. `biomedclip.model.transforms` in a Ray Data
preprocessing task) does not pull in torch, timm and transformers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": "checkpoint", "load_model": "checkpoint", "load_weights": "checkpoint",
    "read_state_dict": "checkpoint", "save_checkpoint": "checkpoint", "BiomedCLIP": "clip", "build_model": "clip",
    "count_parameters": "clip", "ModelConfig": "config", "TextConfig": "config", "VisionConfig": "config",
    "eval_transform": "transforms", "train_transform": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
