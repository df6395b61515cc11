"""Classification metrics on integer labels 0..C-1 (tests hold them equal to scikit-learn's).

- accuracy: fraction of exact predictions.
- per-class recall: correct / support for each class; None for a class absent from the ground truth.
- macro-F1: mean F1 over the classes that occur in the ground truth or the predictions (scikit-learn's default set);
  F1 = 2TP / (2TP + FP + FN), which is 0 for a class that is never predicted correctly.
- AUROC (binary tasks only): the Mann-Whitney statistic with average ranks for tied scores; None when the ground
  truth holds a single class.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are true classes, columns predictions."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def per_class_recall(matrix: np.ndarray) -> list[float | None]:
    support = matrix.sum(axis=1)
    return [float(matrix[c, c] / support[c]) if support[c] else None for c in range(len(matrix))]


def macro_f1(matrix: np.ndarray) -> float:
    true_positive = np.diag(matrix).astype(np.float64)
    false_positive = matrix.sum(axis=0) - true_positive
    false_negative = matrix.sum(axis=1) - true_positive
    denominator = 2 * true_positive + false_positive + false_negative
    present = denominator > 0
    return float(np.mean(2 * true_positive[present] / denominator[present]))


def binary_auroc(y_true, positive_scores) -> float | None:
    y_true = np.asarray(y_true).astype(bool)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(positive_scores, dtype=np.float64))
    return float((ranks[y_true].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def classification_metrics(y_true, y_pred, class_names: list[str], positive_scores=None) -> dict:
    """All metrics as a JSON-ready dict; `positive_scores` (class 1's score) adds AUROC for a binary task."""
    if len(y_true) == 0:
        raise ValueError("no examples to score: every example was skipped")
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    metrics = {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(matrix),
        "per_class_recall": dict(zip(class_names, per_class_recall(matrix))),
        "confusion_matrix": matrix.tolist(),
    }
    if len(class_names) == 2 and positive_scores is not None:
        metrics["auroc"] = binary_auroc(y_true, positive_scores)
    return metrics
