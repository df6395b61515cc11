"""Evaluation: cross-modal retrieval, zero-shot classification, linear probe, and the dataset loaders they read.

The run_* entry points pull in Ray Data, scikit-learn and the model; they load on first use, so that importing a
light submodule (e.g. `biomedclip.evaluate.retrieval` or `.tasks`) stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EvaluateConfig": "runs", "RetrievalConfig": "runs", "ZeroShotConfig": "runs", "run_linear_probe": "runs",
    "run_retrieval": "runs", "run_zeroshot": "runs", "ZeroShotTask": "tasks", "load_task": "tasks",
    "load_tasks": "tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
