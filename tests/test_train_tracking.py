"""Rank 0's metric log with the run's output on S3 (no Ray): TensorBoard events written locally reach the store at
each checkpoint (`publish`) and at the end (`close`), the curves PNG lands beside them, and MLflow (a file tracking
URI) gets the metrics and the curves as an artifact."""
from __future__ import annotations

import boto3
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from biomedclip.io.transfer import download_dir, listing
from biomedclip.train.tracking import Tracker


def stored_steps(uri: str, s3_server: str, local) -> list[int]:
    """The steps of train/loss in the event files stored at `uri`, read back as TensorBoard reads them."""
    events = EventAccumulator(str(download_dir(uri, local, s3_server)))
    events.Reload()
    return [event.step for event in events.Scalars("train/loss")]


def test_tensorboard_events_reach_s3_at_each_checkpoint_and_at_the_end(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database for tracking, except so
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="tracking")
    output, mlruns = "s3://tracking/run", f"file:{tmp_path / 'mlruns'}"
    tracker = Tracker(output, "tiny", {"train.optim.lr": "0.001"}, mlruns, s3_server)
    tracker.log({"train/loss": 2.0}, 1)
    tracker.log({"train/loss": 1.8}, 2)
    tracker.publish({"train/loss": [(1, 2.0), (2, 1.8)]})  # a checkpoint
    tracker.log({"train/loss": 1.5}, 3)
    assert stored_steps(f"{output}/tensorboard", s3_server, tmp_path / "at_checkpoint") == [1, 2]
    assert listing(output, s3_server)["curves.png"] > 1000

    tracker.close()
    assert stored_steps(f"{output}/tensorboard", s3_server, tmp_path / "at_end") == [1, 2, 3]
    assert not tracker.events_dir.exists()  # the local staging folder is gone

    client = MlflowClient(mlruns)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2.0, 1.8, 1.5]
    assert [artifact.path for artifact in client.list_artifacts(run.info.run_id)] == ["curves.png"]


def test_a_local_output_is_written_in_place(tmp_path):
    tracker = Tracker(str(tmp_path / "run"), "tiny", {})
    tracker.log({"train/loss": 2.0}, 1)
    tracker.publish({"train/loss": [(1, 2.0)]})
    tracker.close()
    assert tracker.events_dir == tmp_path / "run" / "tensorboard"
    assert stored_steps(str(tmp_path / "run" / "tensorboard"), None, tmp_path / "copy") == [1]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
