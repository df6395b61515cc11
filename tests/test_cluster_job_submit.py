"""What a user does on a multi-node cluster: start a Ray head and worker nodes with `ray start`, token auth on, then
`ray job submit --working-dir .` the extraction job and the pretraining job, and find their outputs. A submit without
the token is refused.

The pretraining job also goes through a node failure: the test kills the node that hosts a training worker right
after the first checkpoint is registered (run.max_failures=1, i.e. Ray Train's FailureConfig). Ray Train restarts the
workers on the surviving node from the last registered checkpoint, and the job finishes with every optimizer step done
exactly once after that checkpoint. The killed node takes its workers with it, so this also covers a worker's failover.

One cluster serves the whole module: the head (no CPUs: job drivers and the Train controller only) and two named
worker nodes with 3 CPUs each, so either can host both training workers plus a data task.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from biomedclip.model.artifact import load_artifact
from biomedclip.samples.corpus import write_sample_corpus
from biomedclip.train.checkpointing import TRAIN_STATE
from biomedclip.train.loop import CURVES_PNG
from tests.cluster_local import VENV_BIN, LocalCluster, local_cluster, working_dir_package
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

WORKER_NODES = ("a", "b")
RUN_NAME = "tiny-pretrain"  # run.name in jobs/configs/tiny.yaml
MICRO_BATCH, GLOBAL_BATCH, CHECKPOINT_EVERY = 4, 8, 3  # ~90 train pairs: ~11 steps, checkpoints at 3, 6, 9 and the end
# Rank 0's progress line as Ray forwards it: "(RayTrainWorker pid=N, ip=...) epoch E step S: loss ...", maybe coloured.
STEP_LINE = re.compile(r"pid=(\d+)[^)]*\)(?:\x1b\[[\d;]*m)?\s*epoch \d+ step (\d+): loss")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster("cj", tmp_path_factory.mktemp("auth")) as cluster:
        cluster.start_head(num_cpus=0)
        for name in WORKER_NODES:
            cluster.add_node(num_cpus=3, name=name)
        yield cluster


def job_statuses(cluster: LocalCluster) -> list[tuple[str, str]]:
    status, jobs = cluster.get("/api/jobs/")
    assert status == 200, jobs
    return sorted((job["entrypoint"], job["status"]) for job in jobs)


def submitted(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    return output


def test_submit_without_the_token_is_refused(cluster):
    refusals = ((None, 401, "Unauthorized: Missing authentication token"),
                ("not-the-token", 403, "Forbidden: Invalid authentication token"))
    for token, status, message in refusals:
        result = cluster.submit(["python", "-c", "print('refused')"], token=token)
        assert result.returncode != 0
        assert message in result.stdout + result.stderr, result.stdout + result.stderr
        assert cluster.get("/api/jobs/", token=token)[0] == status
    assert not any("refused" in entrypoint for entrypoint, _ in job_statuses(cluster))  # nothing was queued


def test_job_without_working_dir_runs_where_the_node_started(cluster):
    """What cluster/rayjob-pretrain.yaml relies on: with no working_dir, the entrypoint's relative paths are taken
    from the directory the head's `ray start` ran in (the image's working directory on Kubernetes)."""
    command = [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--",
               "python", "-c", "import os; print('cwd=' + os.getcwd())"]
    result = subprocess.run(command, env=cluster.client_env(), cwd="/", capture_output=True, text=True, timeout=300)
    assert f"cwd={REPO}" in submitted(result)


def test_working_dir_upload_leaves_out_ignored_paths(tmp_path):
    package = working_dir_package(REPO, tmp_path)
    names = zipfile.ZipFile(package).namelist()
    assert "jobs/pretrain.py" in names and "jobs/extract.py" in names
    for ignored in (".venv/", ".ray_tmp/", "demo_out/", "runs/", ".git/"):
        assert not any(name.startswith(ignored) for name in names), ignored
    assert package.stat().st_size < 10 * 2**20


def registered_step(snapshot: Path) -> int:
    """The global step of the latest checkpoint the Train controller has registered (0 before the first)."""
    try:
        state = json.loads(snapshot.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return 0
    latest = state.get("latest_checkpoint_result") or {}
    match = re.search(r"checkpoint_step(\d+)", json.dumps(latest))
    return int(match.group(1)) if match else 0


def wait_for_checkpoint(cluster: LocalCluster, submission_id: str, submitter: subprocess.Popen, snapshot: Path,
                        timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while (step := registered_step(snapshot)) == 0:
        status = cluster.job_status(submission_id)
        if status is None:  # not submitted yet: the submitter is still uploading the working dir
            assert submitter.poll() is None, f"`ray job submit` exited with {submitter.returncode}"
        else:
            assert status in ("PENDING", "RUNNING"), f"job {status} before its first checkpoint: " + \
                cluster.job_logs(submission_id)[-3000:]
        assert time.monotonic() < deadline, "no checkpoint registered in time"
        time.sleep(0.5)
    return step


def printed_steps(logs: str) -> dict[str, list[int]]:
    """Rank 0's printed steps by worker process. A process takes each step once, so a line seen twice (Ray may
    forward a line more than once) counts once; a step taken again after a restart is in another process."""
    steps: dict[str, set[int]] = {}
    for pid, step in STEP_LINE.findall(logs):
        steps.setdefault(pid, set()).add(int(step))
    return {pid: sorted(taken) for pid, taken in steps.items()}


def extract(cluster: LocalCluster, corpus: Path, extracted: Path) -> int:
    """Submits the extraction job and checks its shards against its manifest; returns the train pairs."""
    output = submitted(cluster.submit(["python", "jobs/extract.py", "--source", str(corpus), "--output",
                                       str(extracted)]))
    assert "pairs_written" in output  # the job's own summary reaches the submitter
    manifest = json.loads((extracted / "manifest.json").read_text())
    train_shards = sorted((extracted / "train").glob("part-*.parquet"))
    assert train_shards and list((extracted / "val").glob("part-*.parquet"))
    train_rows = sum(pq.read_metadata(shard).num_rows for shard in train_shards)
    assert manifest["pairs_written"]["train"] == train_rows
    assert train_rows // GLOBAL_BATCH >= 3 * CHECKPOINT_EVERY  # room to resume after the first checkpoint or two
    return train_rows


@pytest.mark.timeout(1200)
def test_extract_then_pretrain_through_a_node_failure(cluster, tmp_path):
    corpus, extracted, run_dir = tmp_path / "corpus", tmp_path / "extracted", tmp_path / "run"
    write_sample_corpus(corpus, articles=64)

    started = time.monotonic()
    train_rows = extract(cluster, corpus, extracted)
    extract_s = time.monotonic() - started

    started = time.monotonic()
    # --verbose: every rank's lines reach the job's log, which the checks below read step by step.
    pretrain = ["python", "jobs/pretrain.py", "--config", "jobs/configs/tiny.yaml", "--verbose",
                "--set", f"data.path={extracted}", "--set", f"run.output_dir={run_dir}",
                "--set", f"data.micro_batch={MICRO_BATCH}", "--set", "data.map_tasks=1",
                "--set", f"train.curriculum=[{{global_batch: {GLOBAL_BATCH}}}]", "--set", "train.epochs=1",
                "--set", "train.unmasked_epochs=0", "--set", "train.log_every_steps=1",
                "--set", "run.num_workers=[1,2]",  # elastic: the job goes on with what the surviving node offers
                "--set", "run.max_failures=1", "--set", f"run.checkpoint_every_steps={CHECKPOINT_EVERY}",
                "--set", "run.keep_checkpoints=null"]
    snapshot = run_dir / "checkpoints" / RUN_NAME / "checkpoint_manager_snapshot.json"
    submitter = cluster.submit_in_background(pretrain, "pretrain", tmp_path / "submit.log")
    try:
        checkpoint_step = wait_for_checkpoint(cluster, "pretrain", submitter, snapshot)
        names = cluster.node_names()
        workers = [a for a in cluster.actors("RayTrainWorker") if a["state"] == "ALIVE"]
        victim = names[workers[0]["node_id"]]
        controller_nodes = {names[a["node_id"]] for a in cluster.actors("TrainController") if a["state"] == "ALIVE"}
        assert victim != "head" and victim not in controller_nodes
        cluster.kill_node(cluster.named_nodes[victim])
        killed_at = time.monotonic() - started
        submitter.wait(timeout=900)  # `ray job submit` returns when the job ends
    finally:
        if submitter.poll() is None:
            submitter.kill()
    output = (tmp_path / "submit.log").read_text()
    logs = cluster.job_logs("pretrain")
    assert cluster.job("pretrain")["status"] == "SUCCEEDED", logs[-4000:]
    assert submitter.returncode == 0 and "succeeded" in output, output[-4000:]
    pretrain_s = time.monotonic() - started

    # What the user sees and gets: progress streamed by `ray job submit`, a checkpoint, the exported model, curves.
    assert f"{train_rows} training pairs" in output and "val/i2t_R@1" in output and "checkpoint " in output
    checkpoints = run_dir / "checkpoints" / RUN_NAME
    model, tokenizer = load_artifact(run_dir / "final")
    assert model.config.embed_dim == 64 and tokenizer.vocab_size > 0
    assert (run_dir / CURVES_PNG).stat().st_size > 0
    statuses = [(entrypoint.split()[1], status) for entrypoint, status in job_statuses(cluster)
                if entrypoint.startswith("python jobs/")]
    assert statuses == [("jobs/extract.py", "SUCCEEDED"), ("jobs/pretrain.py", "SUCCEEDED")]

    # The restart: new workers, none on the dead node.
    restarted_workers = [a for a in cluster.actors("RayTrainWorker") if a["actor_id"] not in
                         {w["actor_id"] for w in workers}]
    assert restarted_workers, "no training worker was started after the node died"
    assert {names.get(a["node_id"]) for a in restarted_workers} <= set(WORKER_NODES) - {victim}

    # One resume, from a checkpoint no older than the one registered before the kill (a later one may have been
    # registered while the node was being killed), that is on disk and that the restarted rank 0 announced.
    progress = torch.load(sorted(checkpoints.glob("checkpoint_step*"))[-1] / TRAIN_STATE, map_location="cpu",
                          weights_only=False)["progress"]
    recorded = [step for step, _ in progress["history"]["train/loss"]]
    total = recorded[-1]
    assert recorded == list(range(1, total + 1)), "the run's step record has gaps or repeats"
    assert total == train_rows // GLOBAL_BATCH
    assert len(progress["resumes"]) == 1, progress["resumes"]
    resumed_from = progress["resumes"][0]
    assert checkpoint_step <= resumed_from < total
    assert (checkpoints / f"checkpoint_step{resumed_from:08d}").is_dir()
    assert f"resuming at step {resumed_from} " in logs

    # Every step printed once by the first rank 0 up to the kill, then exactly the steps after the checkpoint.
    by_process = printed_steps(logs)
    first_pid = next(pid for pid, steps in by_process.items() if steps[0] == 1)
    before = by_process.pop(first_pid)
    assert before == list(range(1, len(before) + 1)) and max(before) >= resumed_from
    assert len(by_process) == 1, f"expected one restarted rank 0, got {by_process}"
    after = next(iter(by_process.values()))
    assert after == list(range(resumed_from + 1, total + 1)), \
        f"resumed from checkpoint {resumed_from}, but the restarted workers ran steps {after}"
    print(f"\nextraction job {extract_s:.0f}s; pretraining job {pretrain_s:.0f}s: node {victim} killed "
          f"{killed_at:.0f}s in, after checkpoint {checkpoint_step}; resumed from {resumed_from}; "
          f"steps before: {before}, after: {after}")
