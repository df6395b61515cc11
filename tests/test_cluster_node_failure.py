"""Fault tolerance across nodes: kill the node that hosts the training workers in the middle of a submitted
pretraining job; Ray Train restarts the workers on the surviving node from the last registered checkpoint and the
job finishes with every optimizer step done exactly once after that checkpoint."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from biomedclip.train.checkpointing import TRAIN_STATE
from biomedclip.train.synthetic import write_shapes_corpus
from tests.cluster_local import NODE_TAG, LocalCluster, local_cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

RUN_NAME = "tiny-pretrain"  # run.name in jobs/configs/tiny.yaml
STEP_LINE = re.compile(r"pid=(\d+)[^)]*\)\s*epoch \d+ step (\d+): loss")  # rank 0's progress line, as forwarded


def registered_step(snapshot: Path) -> int:
    """The global step of the latest checkpoint the Train controller has registered (0 before the first)."""
    try:
        state = json.loads(snapshot.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return 0
    latest = state.get("latest_checkpoint_result") or {}
    match = re.search(r"checkpoint_step(\d+)", json.dumps(latest))
    return int(match.group(1)) if match else 0


def wait_for_checkpoint(cluster: LocalCluster, submission_id: str, snapshot: Path, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while (step := registered_step(snapshot)) == 0:
        status = cluster.job(submission_id)["status"]
        assert status in ("PENDING", "RUNNING"), f"job {status} before its first checkpoint: " + \
            cluster.job_logs(submission_id)[-3000:]
        assert time.monotonic() < deadline, "no checkpoint registered in time"
        time.sleep(0.5)
    return step


def printed_steps(logs: str) -> dict[str, list[int]]:
    """Rank 0's printed steps, by worker process id, in log order."""
    steps: dict[str, list[int]] = {}
    for pid, step in STEP_LINE.findall(logs):
        steps.setdefault(pid, []).append(int(step))
    return steps


def test_pretraining_survives_losing_the_workers_node(tmp_path):
    data = write_shapes_corpus(tmp_path / "data", train=256, val=32)
    run_dir = tmp_path / "run"
    snapshot = run_dir / "checkpoints" / RUN_NAME / "checkpoint_manager_snapshot.json"
    entrypoint = ["python", "jobs/pretrain.py", "--config", "jobs/configs/tiny.yaml",
                  "--set", f"data.path={data}", "--set", f"run.output_dir={run_dir}",
                  "--set", "train.epochs=2", "--set", "train.unmasked_epochs=0", "--set", "train.log_every_steps=1",
                  "--set", "run.num_workers=[1,2]",  # elastic: the job goes on with what the surviving node offers
                  "--set", "run.max_failures=1", "--set", "run.checkpoint_every_steps=2",
                  "--set", "run.keep_checkpoints=null"]
    with local_cluster("cf") as cluster:
        cluster.start_head(num_cpus=0)  # driver and Train controller only: the workers go to the nodes below
        nodes = {name: cluster.add_node(num_cpus=3, resources={name: 1}) for name in (f"{NODE_TAG}a", f"{NODE_TAG}b")}
        started = time.monotonic()
        cluster.start_job(entrypoint, "pretrain-node-failure")

        checkpoint_step = wait_for_checkpoint(cluster, "pretrain-node-failure", snapshot)
        names = cluster.node_names()
        workers = [a for a in cluster.actors("RayTrainWorker") if a["state"] == "ALIVE"]
        victim = names[workers[0]["node_id"]]
        controller_nodes = {names[a["node_id"]] for a in cluster.actors("TrainController") if a["state"] == "ALIVE"}
        assert victim != "head" and victim not in controller_nodes
        cluster.kill_node(nodes[victim])
        assert registered_step(snapshot) == checkpoint_step  # nothing registered after we looked
        killed_at = time.monotonic() - started

        job = cluster.wait_for_job("pretrain-node-failure")
        logs = cluster.job_logs("pretrain-node-failure")
        assert job["status"] == "SUCCEEDED", logs[-4000:]
        restarted_workers = [a for a in cluster.actors("RayTrainWorker") if a["actor_id"] not in
                             {w["actor_id"] for w in workers}]
        assert restarted_workers, "no training worker was started after the node died"
        assert {names.get(a["node_id"]) for a in restarted_workers} <= {"head"} | set(nodes) - {victim}

    final = sorted((run_dir / "checkpoints" / RUN_NAME).glob("checkpoint_step*"))[-1]
    history = torch.load(final / TRAIN_STATE, map_location="cpu", weights_only=False)["progress"]["history"]
    recorded = [step for step, _ in history["train/loss"]]
    total = recorded[-1]
    assert recorded == list(range(1, total + 1)), "the run's step record has gaps or repeats"
    assert checkpoint_step < total

    by_process = printed_steps(logs)
    first_pid = next(pid for pid, steps in by_process.items() if steps[0] == 1)
    before = by_process.pop(first_pid)
    assert before == list(range(1, len(before) + 1)) and max(before) >= checkpoint_step
    assert len(by_process) == 1, f"expected one restarted rank 0, got {by_process}"
    after = next(iter(by_process.values()))
    assert after == list(range(checkpoint_step + 1, total + 1)), \
        f"resumed from checkpoint {checkpoint_step}, but the restarted workers ran steps {after}"
    print(f"\nnode killed {killed_at:.0f}s into the job, after checkpoint {checkpoint_step}; "
          f"steps before: {before}, after: {after}; job {time.monotonic() - started:.0f}s")
