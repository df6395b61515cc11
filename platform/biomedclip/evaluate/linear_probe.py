"""Linear probe and few-shot: logistic regression on frozen image features with a fraction of the training labels.

Subsets are stratified and seeded: each class keeps round(fraction * its count) examples, at least one, drawn without
replacement by a generator seeded with `seed`, so every fraction sees every class and reruns pick the same examples.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression

from biomedclip.evaluate.metrics import classification_metrics


@dataclass(frozen=True)
class LinearProbeConfig:
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seed: int = 0
    c: float = 1.0  # inverse L2 strength (scikit-learn's C)
    max_iter: int = 1000
    test_fraction: float = 0.3  # held out (stratified) when no separate test data is given

    def __post_init__(self) -> None:
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {self.fractions}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a per-class random subset of `fraction` of the examples (at least one per class)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=max(1, round(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices; every class keeps at least one training example."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        size = min(round(test_fraction * len(members)), len(members) - 1)
        test.append(rng.choice(members, size=size, replace=False))
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, class_names: list[str], config: LinearProbeConfig) -> dict:
    """Metrics on the test set for each training fraction; labels are class indices into `class_names`."""
    results = {}
    for fraction in config.fractions:
        subset = stratified_subset(train_labels, fraction, config.seed)
        if len(np.unique(train_labels[subset])) < 2:
            raise ValueError("the training labels hold a single class; a probe needs two or more")
        classifier = LogisticRegression(C=config.c, max_iter=config.max_iter)
        classifier.fit(train_features[subset], train_labels[subset])
        predictions = classifier.predict(test_features)
        positive_scores = classifier.predict_proba(test_features)[:, -1] if len(class_names) == 2 else None
        metrics = classification_metrics(test_labels, predictions, class_names, positive_scores)
        results[f"{fraction:g}"] = {"n_train": int(len(subset)), **metrics}
    return results
