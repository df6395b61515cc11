"""Evaluation outputs: a JSON report per run, a list of skipped examples, and PNG plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from biomedclip.evaluate.datasets import Problem

SKIPPED_IN_JSON = 100  # the JSON keeps the first ones; the .txt file lists them all


def skipped_summary(problems: list[Problem]) -> dict:
    return {"skipped_count": len(problems), "skipped": [str(p) for p in problems[:SKIPPED_IN_JSON]]}


def write_report(report: dict, problems: list[Problem], output_dir: str | Path, stem: str) -> Path:
    """Writes `<stem>.json` and, when examples were skipped, `<stem>_skipped.txt`; returns the JSON path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if problems:
        (output_dir / f"{stem}_skipped.txt").write_text("".join(f"{p}\n" for p in problems))
    path = output_dir / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def write_scores(names: list[str], labels: list[str], scores: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Per example: its name, true class, predicted class and every class's probability (CSV)."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["name", "label", "predicted", *class_names])
        for name, label, row in zip(names, labels, scores):
            writer.writerow([name, label, class_names[int(row.argmax())], *(f"{p:.8g}" for p in row)])
    return path


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str) -> Path:
    matrix = np.asarray(matrix)
    size = 2.5 + 0.8 * len(class_names)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_recall_at_k(metrics: dict, path: Path) -> Path:
    """Grouped bars: Recall@k for image->text and text->image."""
    directions = ("image_to_text", "text_to_image")
    names = [name for name in metrics[directions[0]] if name.startswith("R@")]
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    width = 0.38
    for offset, direction in enumerate(directions):
        positions = np.arange(len(names)) + (offset - 0.5) * width
        axes.bar(positions, [metrics[direction][n] for n in names], width, label=direction.replace("_", " "))
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 1)
    axes.set_ylabel("recall")
    axes.set_title(f"retrieval over {metrics['n']} pairs")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_linear_probe(results: dict, path: Path) -> Path:
    """Accuracy and macro-F1 against the fraction of training labels."""
    fractions = sorted(results, key=float)
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for metric in ("accuracy", "macro_f1"):
        axes.plot([float(f) for f in fractions], [results[f][metric] for f in fractions], marker="o", label=metric)
    axes.set_xscale("log")
    axes.set_xlabel("fraction of training labels")
    axes.set_ylim(0, 1)
    axes.set_title("linear probe")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def summary(report: dict) -> str:
    """A few printable lines with the headline numbers of a report."""
    lines = [f"{report['task']} on {report['data']} ({report['skipped_count']} example(s) skipped)"]
    if report["task"] == "retrieval":
        for direction in ("image_to_text", "text_to_image"):
            values = report["metrics"][direction]
            recalls = "  ".join(f"{name} {value:.3f}" for name, value in values.items() if name.startswith("R@"))
            lines.append(f"  {direction:<14} {recalls}  median rank {values['median_rank']:g}"
                         f"  (N={report['metrics']['n']})")
    elif report["task"] == "zeroshot":
        metrics = report["metrics"]
        auroc = f"  AUROC {metrics['auroc']:.3f}" if metrics.get("auroc") is not None else ""
        lines.append(f"  {report['zeroshot_task']}: accuracy {metrics['accuracy']:.3f}  macro-F1 "
                     f"{metrics['macro_f1']:.3f}{auroc}  (N={metrics['n']})")
        lines += [f"  recall {name}: {'-' if value is None else f'{value:.3f}'}"
                  for name, value in metrics["per_class_recall"].items()]
    else:
        for fraction, values in sorted(report["results"].items(), key=lambda item: float(item[0])):
            lines.append(f"  {float(fraction):>6.0%} of labels ({values['n_train']} examples): accuracy "
                         f"{values['accuracy']:.3f}  macro-F1 {values['macro_f1']:.3f}")
    return "\n".join(lines)
