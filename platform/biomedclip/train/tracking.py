"""Metric logging from rank 0: TensorBoard always, MLflow when a tracking URI is configured, and a PNG of the curves.

All of it lands in the run's output location (a local folder or any URI): TensorBoard writes event files to a local
folder that is uploaded at each checkpoint and at the end, so a lost node loses at most the events since its last
checkpoint.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from biomedclip.io.filesystems import is_local  # noqa: E402
from biomedclip.io.transfer import join, staged_dir, upload_dir  # noqa: E402

CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"
CURVES = ("train/loss", "train/logit_scale", "train/lr", "train/global_batch", "val/loss", "val/i2t_R@1", "val/t2i_R@1")


def require_mlflow():
    try:
        import mlflow
    except ImportError as err:
        raise ImportError("run.mlflow_tracking_uri is set but the mlflow package is not installed (pip install "
                          "mlflow, or leave mlflow_tracking_uri unset to log to TensorBoard only)") from err
    return mlflow


class Tracker:
    def __init__(self, output_dir: str, run_name: str, params: dict, mlflow_uri: str | None = None,
                 s3_endpoint: str | None = None):
        """`output_dir`: the run's output location, local (absolute) or a URI."""
        self.output_dir, self.s3_endpoint = output_dir, s3_endpoint
        self.events_uri = join(output_dir, TENSORBOARD_DIR)
        self.staged = not is_local(self.events_uri)
        self.events_dir = Path(tempfile.mkdtemp(prefix="biomedclip-tensorboard-") if self.staged else self.events_uri)
        self.writer = SummaryWriter(str(self.events_dir))
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

    def publish(self, history: dict[str, list]) -> None:
        """Uploads the TensorBoard events so far and the curves of `history` (also an MLflow artifact)."""
        self.writer.flush()
        self._upload_events()
        with staged_dir(self.output_dir, self.s3_endpoint) as out:
            curves = plot_curves(history, out / CURVES_PNG)
            if self.mlflow:
                self.mlflow.log_artifact(str(curves))

    def _upload_events(self) -> None:
        if self.staged:
            upload_dir(self.events_dir, self.events_uri, self.s3_endpoint)

    def close(self) -> None:
        self.writer.close()
        self._upload_events()
        if self.staged:
            shutil.rmtree(self.events_dir, ignore_errors=True)
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
