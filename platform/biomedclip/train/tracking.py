"""Metric logging from rank 0: TensorBoard always, MLflow when a tracking URI is configured, and a PNG of the curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

CURVES = ("train/loss", "train/logit_scale", "train/lr", "train/global_batch", "val/loss", "val/i2t_R@1", "val/t2i_R@1")


def require_mlflow():
    try:
        import mlflow
    except ImportError as err:
        raise ImportError("run.mlflow_tracking_uri is set but the mlflow package is not installed (pip install "
                          "mlflow, or leave mlflow_tracking_uri unset to log to TensorBoard only)") from err
    return mlflow


class Tracker:
    def __init__(self, log_dir: Path, run_name: str, params: dict, mlflow_uri: str | None = None):
        self.writer = SummaryWriter(str(log_dir))
        self.mlflow = None
        if mlflow_uri:
            self.mlflow = require_mlflow()
            self.mlflow.set_tracking_uri(mlflow_uri)
            self.mlflow.set_experiment(run_name)
            self.mlflow.start_run()
            self.mlflow.log_params(params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        if self.mlflow:
            self.mlflow.log_metrics({name.replace("@", "_at_"): value for name, value in metrics.items()}, step=step)

    def close(self) -> None:
        self.writer.close()
        if self.mlflow:
            self.mlflow.end_run()


def plot_curves(history: dict[str, list], path: Path) -> Path:
    names = [name for name in CURVES if history.get(name)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        steps, values = zip(*history[name])
        ax.plot(steps, values, marker="o" if name.startswith("val/") else None, markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
