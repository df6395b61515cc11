"""Linear probe: stratified seeded subsets, and the probe's numbers against scikit-learn run by hand."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from biomedclip.evaluate.linear_probe import LinearProbeConfig, linear_probe, stratified_split, stratified_subset


def blobs(n_per_class: list[int], dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around fixed centres; `seed` draws the noise."""
    centres = np.random.default_rng(100).normal(scale=1.0, size=(len(n_per_class), dim))
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_subsets_are_stratified_seeded_and_keep_every_class(fraction):
    labels = np.repeat([0, 1, 2], [300, 50, 7])
    subset = stratified_subset(labels, fraction, seed=3)
    counts = np.bincount(labels[subset], minlength=3)
    assert list(counts) == [max(1, round(fraction * n)) for n in (300, 50, 7)]
    assert len(np.unique(subset)) == len(subset)
    np.testing.assert_array_equal(subset, stratified_subset(labels, fraction, seed=3))
    if fraction < 1:
        assert not np.array_equal(subset, stratified_subset(labels, fraction, seed=4))


def test_split_is_disjoint_and_keeps_a_training_example_per_class():
    labels = np.repeat([0, 1, 2], [10, 4, 1])
    train, test = stratified_split(labels, 0.3, seed=0)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(labels)
    assert list(np.bincount(labels[test], minlength=3)) == [3, 1, 0]
    assert set(labels[train]) == {0, 1, 2}


def test_probe_equals_sklearn_on_the_same_subset():
    x, y = blobs([200, 120, 80])
    test_x, test_y = blobs([50, 50, 50], seed=1)
    config = LinearProbeConfig(fractions=[0.05, 1.0], seed=7)
    results = linear_probe(x, y, test_x, test_y, ["a", "b", "c"], config)
    for fraction in ("0.05", "1"):
        subset = stratified_subset(y, float(fraction), seed=7)
        predictions = LogisticRegression(max_iter=1000).fit(x[subset], y[subset]).predict(test_x)
        assert results[fraction]["n_train"] == len(subset)
        assert results[fraction]["accuracy"] == pytest.approx(accuracy_score(test_y, predictions))
        assert results[fraction]["macro_f1"] == pytest.approx(f1_score(test_y, predictions, average="macro"))
    assert results["1"]["n_train"] == 400 and results["0.05"]["n_train"] == 20
    assert results["1"]["accuracy"] > max(0.6, results["0.05"]["accuracy"])


def test_binary_probe_reports_auroc():
    x, y = blobs([60, 40], seed=2)
    results = linear_probe(x, y, x, y, ["neg", "pos"], LinearProbeConfig(fractions=[1.0]))
    assert 0.5 < results["1"]["auroc"] <= 1.0


@pytest.mark.parametrize("kwargs", [{"fractions": [0.0]}, {"fractions": [1.5]}, {"test_fraction": 1.0}])
def test_bad_probe_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        LinearProbeConfig(**kwargs)
