"""Evaluation: cross-modal retrieval, zero-shot classification, linear probe, and the dataset loaders they read."""
from biomedclip.evaluate.runs import (
    EvaluateConfig, RetrievalConfig, ZeroShotConfig, run_linear_probe, run_retrieval, run_zeroshot,
)
from biomedclip.evaluate.tasks import ZeroShotTask, load_task, load_tasks

__all__ = [
    "EvaluateConfig", "RetrievalConfig", "ZeroShotConfig", "ZeroShotTask", "load_task", "load_tasks",
    "run_linear_probe", "run_retrieval", "run_zeroshot",
]
