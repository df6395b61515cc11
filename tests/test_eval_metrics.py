"""Our metrics against scikit-learn's on the same predictions, and the plots they feed."""
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from biomedclip.evaluate.metrics import (
    accuracy,
    binary_auroc,
    classification_metrics,
    confusion_matrix,
    macro_f1,
    per_class_recall,
)
from biomedclip.evaluate.report import plot_confusion_matrix, plot_linear_probe, plot_recall_at_k


@pytest.mark.parametrize("seed", range(5))
def test_multiclass_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, size=200))
    matrix = confusion_matrix(y_true, y_pred, 4)
    np.testing.assert_array_equal(matrix, sk.confusion_matrix(y_true, y_pred, labels=range(4)))
    assert accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred), abs=1e-12)
    assert macro_f1(matrix) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    recall = sk.recall_score(y_true, y_pred, average=None, labels=range(4))
    assert per_class_recall(matrix) == pytest.approx(list(recall), abs=1e-12)


def test_classes_never_predicted_or_absent_follow_sklearn():
    y_true = np.array([0, 0, 1, 1, 1, 2, 2])  # class 3 occurs nowhere; class 2 is never predicted
    y_pred = np.array([0, 1, 1, 1, 0, 0, 1])
    matrix = confusion_matrix(y_true, y_pred, 4)
    expected = sk.f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert macro_f1(matrix) == pytest.approx(expected, abs=1e-12)
    assert per_class_recall(matrix)[2] == 0.0
    assert per_class_recall(matrix)[3] is None


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_including_tied_scores(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, size=150)
    scores = np.round(rng.random(150) * 0.5 + 0.3 * y_true, 1)  # rounding makes many ties
    assert len(np.unique(scores)) < 20
    assert binary_auroc(y_true, scores) == pytest.approx(sk.roc_auc_score(y_true, scores), abs=1e-12)


def test_auroc_is_undefined_for_a_single_class():
    assert binary_auroc(np.ones(5), np.random.default_rng(0).random(5)) is None


def test_classification_metrics_report_and_plot(tmp_path):
    names = ["normal lung", "pneumonia"]
    y_true = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.7, 0.8, 0.3, 0.9, 0.6])
    y_pred = (scores > 0.5).astype(int)
    report = classification_metrics(y_true, y_pred, names, positive_scores=scores)
    assert report["n"] == 7
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))
    assert report["auroc"] == pytest.approx(sk.roc_auc_score(y_true, scores))
    assert report["per_class_recall"] == {"normal lung": pytest.approx(2 / 3), "pneumonia": 0.75}
    assert report["confusion_matrix"] == [[2, 1], [1, 3]]
    png = plot_confusion_matrix(report["confusion_matrix"], names, tmp_path / "cm.png", "rsna")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 100
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics(np.array([], dtype=int), np.array([], dtype=int), names)


def test_retrieval_and_probe_plots_are_pngs(tmp_path):
    recall = {"n": 10, "image_to_text": {"R@1": 0.2, "R@5": 0.6, "median_rank": 4.0},
              "text_to_image": {"R@1": 0.3, "R@5": 0.7, "median_rank": 3.0}}
    probe = {"0.01": {"accuracy": 0.5, "macro_f1": 0.4}, "1": {"accuracy": 0.9, "macro_f1": 0.85}}
    for png in (plot_recall_at_k(recall, tmp_path / "r.png"), plot_linear_probe(probe, tmp_path / "p.png")):
        with Image.open(png) as image:
            assert image.format == "PNG"
