"""FailureConfig on a local multi-node cluster: killing the node of a training worker mid-run restarts the workers
from the last checkpoint and the run finishes.

The cluster lives in a subprocess (this file run as a script), so it never meets the session's `ray_session`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EPOCHS, TRAIN_ROWS, GLOBAL_BATCH = 3, 48, 8
TOTAL_STEPS = EPOCHS * TRAIN_ROWS // GLOBAL_BATCH


@pytest.mark.slow
@pytest.mark.cluster
def test_worker_node_killed_mid_run_resumes_from_last_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, cwd=REPO, timeout=840,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["error"] is None
    assert outcome["global_step"] == TOTAL_STEPS
    assert 2 <= outcome["killed_after_step"] < TOTAL_STEPS
    # restarted from a checkpoint written no earlier than the one seen before the kill, not from step 0
    assert outcome["resumes"] and outcome["resumes"][0] >= outcome["killed_after_step"]


def _latest_checkpoint_step(storage: Path) -> int:
    steps = [int(p.name.removeprefix("checkpoint_step")) for p in storage.glob("*/checkpoint_step*") if p.is_dir()]
    return max(steps, default=0)


def _run_scenario(workdir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from biomedclip.config import load_config
    from biomedclip.train.checkpointing import TRAIN_STATE
    from biomedclip.train.config import PretrainConfig
    from biomedclip.train.synthetic import write_shapes_corpus
    from biomedclip.train.trainer import run_pretraining
    from tests.conftest import free_port

    data = write_shapes_corpus(workdir / "data", train=TRAIN_ROWS, val=8, rows_per_file=8)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "port": free_port(),
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=3) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/tiny.yaml", [
        f"data.path={data}", f"run.output_dir={workdir / 'run'}", "data.micro_batch=4", "data.augment=false",
        "data.vocab_size=256", f"train.epochs={EPOCHS}", f"train.curriculum=[{{global_batch: {GLOBAL_BATCH}}}]",
        "run.num_workers=[1, 2]", "run.max_failures=2", "run.checkpoint_every_steps=1", "data.map_tasks=1"])
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = run_pretraining(cfg).result
        except Exception as err:  # reported to the test through outcome.json
            outcome["exception"] = repr(err)

    thread = threading.Thread(target=fit)
    thread.start()
    storage = workdir / "run" / "checkpoints"
    while thread.is_alive() and _latest_checkpoint_step(storage) < 2:
        thread.join(timeout=0.5)  # waits on the run itself while polling for its second checkpoint
    killed_after = _latest_checkpoint_step(storage)
    # the GCS actor table (the state API needs a dashboard, which this cluster does not run)
    worker_nodes = {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
                    if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"}
    victim = next(node for node in nodes if node.node_id in worker_nodes)
    cluster.remove_node(victim, allow_graceful=False)
    thread.join()
    result = outcome.get("result")
    report = {"error": outcome.get("exception") or (repr(result.error) if result and result.error else None),
              "killed_after_step": killed_after, "global_step": None, "resumes": []}
    if result is not None and result.checkpoint is not None:
        import torch
        with result.checkpoint.as_directory() as directory:
            progress = torch.load(Path(directory) / TRAIN_STATE, weights_only=False)["progress"]
        report.update(global_step=progress["global_step"], resumes=progress["resumes"])
    (workdir / "outcome.json").write_text(json.dumps(report))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TMPDIR", str(REPO / ".ray_tmp"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    _run_scenario(Path(sys.argv[1]))
    print(f"scenario took {time.time() - started:.0f} s")
