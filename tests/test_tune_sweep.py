"""jobs/sweep.py on a real local Ray: a 4-trial sweep of tiny pretraining runs (learning rate x context length)
where ASHA stops the trials that do not learn after one epoch, interrupted with Ctrl+C and resumed by the same
command without rerunning finished trials; its table, plot and best config. Input checks (unsupported axis values,
trials too big for the cluster) are refused before anything starts."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from biomedclip.config import ConfigError, load_config
from biomedclip.samples.shapes import write_shapes_corpus
from biomedclip.text import Tokenizer
from biomedclip.train.config import PretrainConfig
from biomedclip.tune.config import SweepConfig
from biomedclip.tune.resources import cluster_capacity, local_cpus, plan_concurrency
from biomedclip.tune.space import load_base
from tests.helpers import load_job

REPO = Path(__file__).resolve().parent.parent
SWEEP_JOB = load_job("sweep")
SWEEP_TINY = REPO / "jobs/configs/sweep_tiny.yaml"
SWEEP_PAPER = REPO / "jobs/configs/sweep_paper.yaml"
TRAIN_ROWS, VAL_ROWS = 64, 16
STEPS_PER_EPOCH = TRAIN_ROWS // 8  # global batch of sweep_tiny


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Shape/colour pairs and one tokenizer shared by every trial (saves each trial training its own)."""
    root = tmp_path_factory.mktemp("sweep")
    data = write_shapes_corpus(root / "data", train=TRAIN_ROWS, val=VAL_ROWS, rows_per_file=32)
    captions = [f"Figure {i}. A {size} {colour} {shape} on a light background." for i in range(1, TRAIN_ROWS + 1)
                for size in ("small", "large") for colour in ("red", "green", "blue", "yellow", "purple", "black")
                for shape in ("circle", "square", "triangle")]
    Tokenizer.train(captions, 512, 256).save(root / "tokenizer")
    return data, root / "tokenizer"


def sweep_args(corpus: tuple[Path, Path], storage: Path, *extra: str) -> list[str]:
    data, tokenizer = corpus
    sets = [f"data.path={data}", f"data.tokenizer_dir={tokenizer}", f"storage_path={storage}", *extra]
    return ["--config", str(SWEEP_TINY), *(arg for item in sets for arg in ("--set", item))]


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def finished_trials(experiment: Path) -> dict[Path, str]:
    """Trial folders whose Tune results end with the trial's final (done) result -> their result.json."""
    finished = {}
    for results in experiment.glob("trial_*/result.json"):
        text = results.read_text()
        lines = text.splitlines()
        if lines and text.endswith("\n") and json.loads(lines[-1]).get("done"):
            finished[results.parent] = text
    return finished


class Job:
    """jobs/sweep.py in its own session (it starts its own local Ray), as a person runs it in a terminal."""

    def __init__(self, args: list[str], log: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600"}
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, str(REPO / "jobs/sweep.py"), *args], cwd=REPO, env=env,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_group_gone(self, timeout: float) -> bool:
        """Whether every process the job started (its Ray included) ended within `timeout` after the job."""
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the process table, with a deadline
        return not self.group_alive()

    def kill(self) -> None:
        if self.group_alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.mark.slow
def test_sweep_stops_weak_trials_resumes_after_ctrl_c_and_writes_results(corpus, tmp_path):
    storage = tmp_path / "sweeps"
    experiment = storage / "tiny-sweep"
    args = sweep_args(corpus, storage)

    first = Job(args, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 480
        while not finished_trials(experiment) and first.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # polling the experiment folder, with a deadline
        assert first.process.poll() is None, first.output()[-4000:]
        finished = finished_trials(experiment)
        assert finished, "no trial finished in time:\n" + first.output()[-4000:]
        os.killpg(first.process.pid, signal.SIGINT)  # Ctrl+C in the terminal: Tune saves the experiment and stops
        assert first.process.wait(timeout=120) != 0
        assert first.wait_group_gone(60), "the interrupted job left processes behind"
    finally:
        first.kill()
    assert "rerun the same command" in first.output()

    second = Job(args, tmp_path / "second.log")
    try:
        assert second.process.wait(timeout=600) == 0, second.output()[-4000:]
        assert second.wait_group_gone(60), "the job left processes behind"
    finally:
        second.kill()
    output = second.output()
    print(output[-3000:])
    assert "resuming the sweep" in output
    for trial_dir, results in finished.items():  # finished trials were kept as they were, not run again
        assert (trial_dir / "result.json").read_text() == results
        assert f"trial {trial_dir.name.removeprefix('trial_')} started" not in output

    rows = read_table(experiment / "results.csv")
    assert sorted((float(r["train.optim.lr"]), int(r["model.text.context_length"])) for r in rows) == [
        (1e-7, 77), (1e-7, 256), (3e-3, 77), (3e-3, 256)]
    assert {r["trial"] for r in rows} == {p.name.removeprefix("trial_") for p in experiment.glob("trial_*")}
    # ASHA (grace 1 epoch, reduction factor 2, 2 epochs at most), two trials at a time in grid order: the 3e-3
    # trials run first and the first of them to reach epoch 1 goes on; a trial whose learning rate (1e-7) leaves
    # the model as initialised has a val loss well above theirs at epoch 1 and is stopped there, also when that
    # comparison spans the resume (the rungs are rebuilt from the stored results).
    outcome = {(float(r["train.optim.lr"]), int(r["model.text.context_length"])): r["outcome"] for r in rows}
    assert "completed" in (outcome[(3e-3, 77)], outcome[(3e-3, 256)])
    assert outcome[(1e-7, 77)] == outcome[(1e-7, 256)] == "stopped early"
    assert all(r["epochs"] == {"completed": "2", "stopped early": "1"}[r["outcome"]] for r in rows)
    assert "stopped early by ASHA" in first.output() + output
    assert all(float(r["samples/s"]) > 0 for r in rows if r["samples/s"])
    for row in rows:  # each trial trained in its own folder, with its own checkpoints
        trial_dir = experiment / f"trial_{row['trial']}"
        steps = sorted(p.name for p in (trial_dir / "checkpoints").glob("checkpoint_step*"))
        assert steps and int(steps[-1].removeprefix("checkpoint_step")) == int(row["epochs"]) * STEPS_PER_EPOCH

    # The table is sorted best first; the best config is that trial's values on the base config, and loads.
    losses = [float(r["best val/loss"]) for r in rows]
    assert losses == sorted(losses)
    best = rows[0]
    assert float(best["train.optim.lr"]) == 3e-3
    best_config = experiment / "best_config.yaml"
    cfg = load_config(PretrainConfig, best_config)
    assert cfg.train.optim.lr == pytest.approx(float(best["train.optim.lr"]))
    assert cfg.model.text.context_length == int(best["model.text.context_length"])
    assert cfg.run.num_workers == 1 and cfg.train.epochs == 2 and cfg.data.path == str(corpus[0])
    assert best["trial"] in best_config.read_text().splitlines()[0]
    table_md = (experiment / "results.md").read_text()
    assert all(f"| {r['trial']} |" in table_md for r in rows) and "| outcome | epochs | best val/loss |" in table_md
    assert f"best config: {best_config}" in output

    with Image.open(experiment / "metric_by_axis.png") as plot:  # one panel per axis, side by side
        assert plot.width > 1.5 * plot.height and plot.getextrema() != ((255, 255),) * 3


def test_unsupported_axis_values_are_refused_before_ray_starts(corpus, tmp_path, capsys):
    job = SWEEP_JOB
    cases = {"space={model.vision.image_size: {grid: [224, 300]}}": "space.model.vision.image_size: value 300",
             "space={model.vision.preset: {grid: [vit-small, vit-huge]}}":
                 "space.model.vision.preset: value 'vit-huge'",
             "space={model.text.context_length: {choice: [77, 128]}}": "space.model.text.context_length: value 128",
             "space={model.vision.imgsize: {grid: [224]}}": "model.vision.imgsize: unknown key",
             "space={train.optim.lr: {loguniform: [0, 1.0e-3]}}": "space.train.optim.lr: loguniform"}
    for override, message in cases.items():
        assert job.JOB.main(sweep_args(corpus, tmp_path / "sweeps", override)) == 2, override
        assert message in capsys.readouterr().err, override
    assert not (tmp_path / "sweeps").exists()


def test_trial_too_big_for_the_cluster_is_refused():
    job = SWEEP_JOB
    sweep = job.load_sweep(str(SWEEP_TINY), ["run.num_workers=4"])
    with pytest.raises(ConfigError, match=r"base config: one trial needs run\.num_workers=4 x run\.cpus_per_worker"
                                          r"=1\.0 \+ data_cpus_per_trial=1\.0 CPUs but the cluster has 4 CPUs"):
        plan_concurrency(sweep, load_base(sweep), {"CPU": 4.0})  # 4 workers + 1 data CPU + the driver's sliver
    sweep = job.load_sweep(str(SWEEP_TINY), ["space={run.num_workers: {grid: [1, 8]}}"])
    with pytest.raises(ConfigError, match=r"space\.run\.num_workers=8: one trial needs"):
        plan_concurrency(sweep, load_base(sweep), {"CPU": 4.0})
    sweep = job.load_sweep(str(SWEEP_TINY), ["run.use_gpu=true"])
    with pytest.raises(ConfigError, match=r"1 GPUs \(run\.use_gpu\) but the cluster has 16 CPUs, 0 GPUs"):
        plan_concurrency(sweep, load_base(sweep), {"CPU": 16.0})


def test_tiny_sweep_runs_two_trials_at_once_on_a_two_core_machine():
    sweep = SWEEP_JOB.load_sweep(str(SWEEP_TINY), [])
    base = load_base(sweep)
    assert local_cpus(sweep, base, machine_cpus=2) == 5  # 2 x (1 worker + 1 data CPU + the driver's sliver)
    assert plan_concurrency(sweep, base, {"CPU": 5.0}) == 2
    assert plan_concurrency(sweep, base, {"CPU": 3.0}) == 1
    with pytest.raises(ConfigError, match="but the cluster has 2 CPUs"):
        plan_concurrency(sweep, base, {"CPU": 2.0})
    assert local_cpus(sweep, base, machine_cpus=16) == 16


def launcher_group_max(name: str) -> dict[str, float]:
    """What one node type of ray-cluster.yaml adds at most: its resources x max_workers, as the autoscaler reports."""
    group = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())["available_node_types"][name]
    return {kind: float(value) * group["max_workers"] for kind, value in group["resources"].items()}


def test_paper_sweep_fits_the_a100_group_of_an_autoscaling_cluster():
    sweep = load_config(SweepConfig, SWEEP_PAPER)
    axes = sweep.axes()
    assert axes["model.vision.preset"].grid == ["vit-small", "vit-medium", "vit-base"]
    assert axes["model.vision.image_size"].grid == [224, 336, 448]
    assert axes["model.text.context_length"].grid == [77, 256]
    base = load_base(sweep)
    scaled_to_zero = {"CPU": 0.0}  # the head advertises no CPUs and no worker node runs yet
    a100 = launcher_group_max("gpu_a100")  # 2 nodes x (96 CPUs, 8 GPUs)
    assert plan_concurrency(sweep, base, cluster_capacity(scaled_to_zero, a100)) == sweep.max_concurrent == 4
    one_node = {kind: value / 2 for kind, value in a100.items()}
    assert plan_concurrency(sweep, base, cluster_capacity(scaled_to_zero, one_node)) == 2
    with pytest.raises(ConfigError, match="needs .*4 GPUs .* the cluster has 0 CPUs, 0 GPUs.*max_gpus"):
        plan_concurrency(sweep, base, cluster_capacity(scaled_to_zero, None))
    # A cluster that does not tell Ray its limits: the operator's max_gpus decides, CPUs bound nothing.
    assert plan_concurrency(sweep, base, cluster_capacity(scaled_to_zero, None, max_gpus=8)) == 2


def test_capacity_is_the_larger_of_now_and_the_autoscalers_limit():
    assert cluster_capacity({"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 16.0}) == {"CPU": 8.0, "GPU": 16.0}
    assert cluster_capacity({"CPU": 8.0}, None) == {"CPU": 8.0}
    assert cluster_capacity({"CPU": 8.0}, {"GPU": 16.0}, max_gpus=4) == {"CPU": 8.0, "GPU": 4.0}
