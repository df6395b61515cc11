"""A sweep's results: a table of every trial (CSV and markdown), the metric against each axis (PNG), and the best
trial's values applied to the base config as a pretraining config that jobs/pretrain.py runs as it is."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.experiment import Trial  # noqa: E402

from biomedclip.config import from_dict  # noqa: E402
from biomedclip.train.config import PretrainConfig  # noqa: E402
from biomedclip.tune.driver import EPOCHS, SAMPLES_PER_S  # noqa: E402
from biomedclip.tune.space import with_values  # noqa: E402

TABLE_CSV, TABLE_MD, PLOT_PNG, BEST_YAML = "results.csv", "results.md", "metric_by_axis.png", "best_config.yaml"


@dataclass
class TrialRecord:
    trial_id: str
    values: dict[str, Any]  # the trial's value on each axis
    outcome: str  # completed | stopped early | error | unfinished
    epochs: int  # finished epochs
    best: float | None  # best value of the metric over its epochs
    samples_per_s: float | None  # mean over the epochs whose throughput is known
    path: str


def _outcome(trial: Trial, epochs: int, max_t: int) -> str:
    if trial.status == Trial.ERROR:
        return "error"
    if trial.status != Trial.TERMINATED:
        return "unfinished"
    return "completed" if epochs >= max_t else "stopped early"


def _mean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def collect_trials(experiment_path: str, storage_filesystem, axes: list[str], metric: str, mode: str,
                   max_t: int) -> list[TrialRecord]:
    """Every trial of the experiment folder, best first (trials without a metric last)."""
    analysis = tune.ExperimentAnalysis(experiment_path, storage_filesystem=storage_filesystem)
    records = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        rows = frame[frame[metric].notna()] if frame is not None and metric in frame else None
        has_rows = rows is not None and len(rows) > 0
        epochs = int(rows[EPOCHS].max()) if has_rows else 0
        best = float(rows[metric].max() if mode == "max" else rows[metric].min()) if has_rows else None
        speed = _mean(rows[SAMPLES_PER_S]) if has_rows and SAMPLES_PER_S in rows else None
        records.append(TrialRecord(trial.trial_id, {key: trial.config.get(key) for key in axes},
                                   _outcome(trial, epochs, max_t), epochs, best, speed, trial.path))
    sign = -1 if mode == "max" else 1
    return sorted(records, key=lambda r: (r.best is None, sign * (r.best or 0.0), r.trial_id))


def _columns(axes: list[str], metric: str) -> list[str]:
    return ["trial", *axes, "outcome", "epochs", f"best {metric}", "samples/s"]


def _row(record: TrialRecord, axes: list[str]) -> list[Any]:
    return [record.trial_id, *(record.values[key] for key in axes), record.outcome, record.epochs,
            "" if record.best is None else f"{record.best:.4f}",
            "" if record.samples_per_s is None else f"{record.samples_per_s:.1f}"]


def write_table(records: list[TrialRecord], axes: list[str], metric: str, out_dir: Path) -> tuple[Path, Path]:
    columns = _columns(axes, metric)
    with open(out_dir / TABLE_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(_row(record, axes) for record in records)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in _row(record, axes)) + " |" for record in records]
    (out_dir / TABLE_MD).write_text("\n".join(lines) + "\n")
    return out_dir / TABLE_CSV, out_dir / TABLE_MD


def _numeric_log_axis(values: list[Any]) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) and min(numbers) > 0 and max(numbers) / min(numbers) >= 20


def plot_by_axis(records: list[TrialRecord], axes: list[str], metric: str, path: Path) -> Path:
    """One panel per axis: each trial's best metric at its value; hollow markers for trials ASHA stopped early."""
    scored = [r for r in records if r.best is not None]
    fig, panels = plt.subplots(1, len(axes), figsize=(3.6 * len(axes), 3.2), squeeze=False)
    for panel, key in zip(panels[0], axes):
        values = [r.values[key] for r in scored]
        log = _numeric_log_axis(values) if values else False
        categories = sorted({str(v) for v in values}, key=lambda s: (len(s), s))
        for record in scored:
            x = record.values[key] if log else categories.index(str(record.values[key]))
            stopped = record.outcome == "stopped early"
            panel.scatter([x], [record.best], s=36, edgecolors="C0", facecolors="none" if stopped else "C0")
        if log:
            panel.set_xscale("log")
        else:
            panel.set_xticks(range(len(categories)), categories, fontsize=8)
        panel.set_xlabel(key, fontsize=8)
        panel.set_ylabel(f"best {metric}", fontsize=8)
    fig.suptitle("filled: ran every epoch, hollow: stopped early by ASHA", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_best_config(best: TrialRecord, base: dict[str, Any], metric: str, source: str, path: Path) -> Path:
    """The base config (as given, with its overrides) plus the best trial's values; checked to load."""
    data = with_values(base, best.values)
    from_dict(PretrainConfig, data)
    header = (f"# Best trial {best.trial_id} of sweep {source}: best {metric} = {best.best:.4f} "
              f"over {best.epochs} epochs.\n# Values: {best.values}\n"
              f"# Run it: python jobs/pretrain.py --config {path}\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path
