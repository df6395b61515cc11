"""The platform team's whole path on a local multi-node Ray cluster and a loopback S3 server, every location an
s3:// URI and the only endpoint setting the standard `AWS_ENDPOINT_URL`, which every node, job and replica inherits:

extract S3 -> S3; pretrain with its outputs on S3 while a worker node is killed (Ray Train restarts the workers on
the other node from the last checkpoint); the whole cluster torn down mid-run and every local directory deleted (the
nodes' temporary directories and the per-node model cache); a new cluster resumes the run from S3 with the same
tokenizer and finishes it; evaluation and VQA fine-tuning read from S3 and write to S3; Serve loads the final model
and the VQA model from s3:// and answers; then `serve deploy` of a config naming an earlier checkpoint rolls out
while two clients keep sending requests, and none fails. Along the way: submits without the cluster's token are
refused, and a job without a working dir runs where the node started.

Each cluster is a head (no CPUs: drivers and controllers) and two worker nodes of 3 CPUs with their own --temp-dir,
started with `ray start` and token auth as a user would (tests/cluster_local.py).
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from biomedclip.inference import Predictor
from biomedclip.io import OutputStore, local_copy, upload_dir
from biomedclip.io.transfer import listing
from biomedclip.model.artifact import load_artifact
from biomedclip.samples.corpus import write_sample_corpus
from biomedclip.train.checkpointing import TRAIN_STATE
from tests.cluster_local import VENV_BIN, LocalCluster, local_cluster, submitted, working_dir_package
from tests.conftest import REPO, free_port
from tests.serve_helpers import requests_during

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

RUN_NAME = "tiny-pretrain"  # run.name in jobs/configs/tiny.yaml
# Rank 0's progress line as Ray forwards it: "(RayTrainWorker pid=N, ip=...) epoch E step S: loss ...", maybe coloured.
STEP_LINE = re.compile(r"pid=(\d+)[^)]*\)(?:\x1b\[[\d;]*m)?\s*epoch \d+ step (\d+): loss")
BUCKET = "platform"
S3 = f"s3://{BUCKET}"
RUN = f"{S3}/run"  # run.output_dir
CHECKPOINTS = f"run/checkpoints/{RUN_NAME}"  # Ray Train's storage for the run, under the bucket
MICRO_BATCH, GLOBAL_BATCH, CHECKPOINT_EVERY, EPOCHS = 4, 8, 3, 2
APP = "biomedclip"


def pretrain_command() -> list[str]:
    """The same command on both clusters: the second start finds the run's checkpoints on S3 and resumes."""
    return ["python", "jobs/pretrain.py", "--config", "jobs/configs/tiny.yaml", "--verbose",
            "--set", f"data.path={S3}/pairs", "--set", f"run.output_dir={RUN}",
            "--set", f"data.micro_batch={MICRO_BATCH}", "--set", "data.map_tasks=1",
            "--set", f"train.curriculum=[{{global_batch: {GLOBAL_BATCH}}}]", "--set", f"train.epochs={EPOCHS}",
            "--set", "train.unmasked_epochs=0", "--set", "train.log_every_steps=1",
            "--set", "run.num_workers=[1,2]",  # elastic: the job goes on with what the surviving node offers
            "--set", "run.max_failures=1", "--set", f"run.checkpoint_every_steps={CHECKPOINT_EVERY}",
            "--set", "run.keep_checkpoints=null"]


def start(cluster: LocalCluster) -> None:
    cluster.start_head(num_cpus=0)
    for name in ("a", "b"):
        cluster.add_node(num_cpus=3, name=name)


def registered_step(store: OutputStore) -> int:
    """The global step of the newest checkpoint the Train controller has registered in S3 (0 before the first)."""
    try:
        state = store.read_json(f"{CHECKPOINTS}/checkpoint_manager_snapshot.json")
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return 0
    match = re.findall(r"checkpoint_step(\d+)", json.dumps(state.get("latest_checkpoint_result") or {}))
    return int(match[-1]) if match else 0


def wait_for(condition, what: str, cluster: LocalCluster, submission_id: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        status = cluster.job_status(submission_id)
        assert status in (None, "PENDING", "RUNNING"), \
            f"job {status} while waiting for {what}: " + cluster.job_logs(submission_id)[-3000:]
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.5)
    return value


def serve_config(models: dict[str, str], vqa: str, port: int) -> dict:
    """serve/config.yaml as a user edits it: their models, a free port, small replicas for 2 cores."""
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(models=models, default_model="default", vqa_artifact=vqa)
    app["deployments"] = [
        {"name": "Ingress", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        {"name": "ClipModel", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}},
        {"name": "VqaModel", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.2}},
    ]
    return config


def serve_deploy(cluster: LocalCluster, config: dict, path: Path, timeout: float = 400) -> None:
    """`serve deploy` of `config` (the CLI returns once the cluster took it), then waits until the application runs
    that config."""
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "--address", cluster.dashboard_url],
                            env=cluster.client_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    wanted = config["applications"][0]["args"]["models"]
    deadline = time.monotonic() + timeout
    while True:
        status, body = cluster.get("/api/serve/applications/")
        app = body.get("applications", {}).get(APP, {}) if status == 200 else {}
        deployed = ((app.get("deployed_app_config") or {}).get("args") or {}).get("models")
        if app.get("status") == "RUNNING" and deployed == wanted:
            return
        assert app.get("status") != "DEPLOY_FAILED", app.get("message")
        assert time.monotonic() < deadline, f"application not running {wanted} after {timeout} s: {app}"
        time.sleep(1)


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 112, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_embedding(artifact, image: bytes) -> np.ndarray:
    """The oracle: the same artifact loaded in this process."""
    return Predictor(*artifact).encode_images([Image.open(io.BytesIO(image)).convert("RGB")])[0]


def assert_submits_need_the_token(cluster: LocalCluster) -> None:
    refusals = ((None, 401, "Unauthorized: Missing authentication token"),
                ("not-the-token", 403, "Forbidden: Invalid authentication token"))
    for token, status, message in refusals:
        result = cluster.submit(["python", "-c", "print('refused')"], token=token)
        assert result.returncode != 0
        assert message in result.stdout + result.stderr, result.stdout + result.stderr
        assert cluster.get("/api/jobs/", token=token)[0] == status
    assert cluster.get("/api/jobs/")[1] == []  # nothing was queued


def assert_jobs_without_working_dir_run_where_the_node_started(cluster: LocalCluster) -> None:
    """What cluster/rayjob-pretrain.yaml relies on: with no working_dir, the entrypoint's relative paths are taken
    from the directory the head's `ray start` ran in (the image's working directory on Kubernetes)."""
    command = [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--",
               "python", "-c", "import os; print('cwd=' + os.getcwd())"]
    result = subprocess.run(command, env=cluster.client_env(), cwd="/", capture_output=True, text=True, timeout=300)
    assert f"cwd={REPO}" in submitted(result)


def test_working_dir_upload_leaves_out_ignored_paths(tmp_path):
    """What `ray job submit --working-dir .` uploads: the code, none of the local state. A probe file in each
    ignored folder makes the check independent of what earlier runs left there (Ray keeps an empty ignored folder
    as an empty entry, which uploads nothing)."""
    ignored = (".venv/", ".ray_tmp/", "demo_out/", "runs/")
    made = [REPO / folder for folder in ignored if not (REPO / folder).exists()]
    probes = [REPO / folder / "upload-probe.txt" for folder in ignored]
    try:
        for probe in probes:
            probe.parent.mkdir(exist_ok=True)
            probe.write_text("local state")
        names = zipfile.ZipFile(working_dir_package(REPO, tmp_path)).namelist()
    finally:
        for probe in probes:
            probe.unlink(missing_ok=True)
        for folder in made:
            folder.rmdir()
    assert "jobs/pretrain.py" in names and "jobs/extract.py" in names
    for folder in (*ignored, ".git/"):
        assert not any(name.startswith(folder) and name != folder for name in names), folder
    assert (tmp_path / "working_dir.zip").stat().st_size < 10 * 2**20


@pytest.mark.timeout(2400)
def test_the_platform_path_on_s3_across_two_clusters(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # nodes, jobs and replicas inherit it from here
    cache = tmp_path / "node-cache"
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(cache))
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    store = OutputStore(S3)
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, articles=64, layout="s3")
    upload_dir(corpus, f"{S3}/corpus")
    shutil.rmtree(corpus)
    timings = {}

    # 1. The first cluster: extraction, then pretraining through a worker node's death, then the cluster goes away.
    (tmp_path / "secrets1").mkdir()
    with local_cluster("ch1", tmp_path / "secrets1") as first:
        start(first)
        assert_submits_need_the_token(first)
        assert_jobs_without_working_dir_run_where_the_node_started(first)
        began = time.monotonic()
        submitted(first.submit(["python", "jobs/extract.py", "--source", f"{S3}/corpus", "--signed",
                                "--output", f"{S3}/pairs"]))
        timings["extract"] = time.monotonic() - began
        train_rows = store.read_json("pairs/manifest.json")["pairs_written"]["train"]
        total_steps = EPOCHS * (train_rows // GLOBAL_BATCH)
        assert total_steps >= 4 * CHECKPOINT_EVERY  # room for a kill, a resume and a teardown before the end

        began = time.monotonic()
        submitter = first.submit_in_background(pretrain_command(), "pretrain", tmp_path / "submit1.log")
        try:
            first_checkpoint = wait_for(lambda: registered_step(store), "first checkpoint", first, "pretrain")
            names = first.node_names()
            workers = [a for a in first.actors("RayTrainWorker") if a["state"] == "ALIVE"]
            victim = names[workers[0]["node_id"]]
            assert victim != "head"
            first.kill_node(first.named_nodes[victim])
            # The restarted workers resume and register a later checkpoint; then the whole cluster is torn down.
            torn_at = wait_for(lambda: (step := registered_step(store)) > first_checkpoint and step,
                               "checkpoint after the restart", first, "pretrain")
            tokenizer_before = store.read_bytes("run/tokenizer/tokenizer.json")
            first_logs = first.job_logs("pretrain")
        finally:
            if submitter.poll() is None:
                submitter.kill()
        timings["pretrain, first cluster"] = time.monotonic() - began
    resume_at = registered_step(store)  # the job may register one more checkpoint while the cluster stops
    assert torn_at <= resume_at < total_steps and not store.exists("run/final/model.safetensors"), \
        "the run finished on the first cluster"
    assert re.search(r"resuming at step \d+", first_logs), first_logs[-3000:]

    # 2. Nothing local survives: the nodes' directories are gone (local_cluster removed them), so is the cache.
    shutil.rmtree(cache, ignore_errors=True)
    assert not first.temp_dir.exists() and not (REPO / "s3:").exists()

    # 3. A new cluster, the same command: resumed from S3 with the run's tokenizer, finished, exported to S3.
    (tmp_path / "secrets2").mkdir()
    with local_cluster("ch2", tmp_path / "secrets2") as second:
        start(second)
        began = time.monotonic()
        submitted(second.submit(pretrain_command()))
        logs = second.job_logs(second.get("/api/jobs/")[1][0]["submission_id"])
        timings["pretrain, second cluster"] = time.monotonic() - began
        assert f"resuming at step {resume_at} " in logs, logs[-3000:]
        assert store.read_bytes("run/tokenizer/tokenizer.json") == tokenizer_before
        final = load_artifact(local_copy(f"{RUN}/final"))
        assert final[1].backend.to_str() == load_artifact(local_copy(f"{S3}/{CHECKPOINTS}/"
                                                                      f"checkpoint_step{resume_at:08d}"))[1].backend.to_str()
        outputs = listing(RUN)
        for expected in ("final/model.safetensors", "open_clip/open_clip_config.json", "curves.png"):
            assert expected in outputs, sorted(outputs)
        assert any(name.startswith("tensorboard/") for name in outputs), sorted(outputs)
        last = max(name for name in outputs if re.match(rf"checkpoints/{RUN_NAME}/checkpoint_step\d+/{TRAIN_STATE}",
                                                         name))
        progress = torch.load(local_copy(f"{RUN}/{Path(last).parent}") / TRAIN_STATE, weights_only=True)["progress"]
        steps = [step for step, _ in progress["history"]["train/loss"]]
        assert steps == list(range(1, total_steps + 1)), "the run's step record has gaps or repeats"
        assert len(progress["resumes"]) == 2 and progress["resumes"][-1] == resume_at
        assert list(printed_steps(logs).values())[-1] == list(range(resume_at + 1, total_steps + 1))

        # 4. Evaluation and VQA fine-tuning, S3 in and out.
        began = time.monotonic()
        submitted(second.submit(["python", "jobs/evaluate.py", "--checkpoint", f"{RUN}/final", "--task",
                                 "retrieval", "--data", f"{S3}/pairs/test", "--output", f"{S3}/eval"]))
        report = store.read_json("eval/retrieval.json")
        assert report["metrics"]["n"] == store.read_json("pairs/manifest.json")["pairs_written"]["test"]
        submitted(second.submit(["python", "jobs/finetune_vqa.py", "--checkpoint", f"{RUN}/final", "--dataset",
                                 "synthetic", "--data", f"{S3}/pairs", "--config",
                                 "jobs/configs/finetune_vqa_tiny.yaml", "--set", "train.epochs=1",
                                 "--output", f"{S3}/vqa"]))
        assert store.read_json("vqa/metrics.json")["test"]["n"] > 0
        timings["evaluate + VQA"] = time.monotonic() - began

        # 5. Serve from s3://, then a rollout of an earlier checkpoint under client load.
        began = time.monotonic()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        earlier = f"{S3}/{CHECKPOINTS}/checkpoint_step{CHECKPOINT_EVERY:08d}"
        serve_deploy(second, serve_config({"default": f"{RUN}/final"}, f"{S3}/vqa/model", port),
                     tmp_path / "serve1.yaml")
        timings["serve"] = time.monotonic() - began
        image = png(1)
        encoded = base64.b64encode(image).decode()
        body = {"input": f"data:image/png;base64,{encoded}", "model": "default"}
        with httpx.Client(base_url=url, timeout=120) as client:
            served = client.post("/v1/embeddings", json=body)
            vqa = client.post("/v1/vqa", json={"image_base64": encoded, "question": "Is this a chest x-ray?"})
        assert served.status_code == 200 and vqa.status_code == 200 and vqa.json()["answer"], served.text + vqa.text
        assert np.allclose(embedding_of(served.json()), image_embedding(final, image), atol=1e-4)

        record = requests_during(
            lambda: serve_deploy(second, serve_config({"default": earlier}, f"{S3}/vqa/model", port),
                                 tmp_path / "serve2.yaml"),
            lambda client: client.post("/v1/embeddings", json=body), url)
        failed = [answer for answer in record.answers if answer.status != 200]
        assert not failed, failed[:5]
        rolled = image_embedding(load_artifact(local_copy(earlier)), image)
        assert np.allclose(embedding_of(record.answers[-1].body), rolled, atol=1e-4)
        timings["rollout"] = record.rollout_seconds
    print(f"\n{len(record.answers)} requests during the rollout, none failed; " +
          ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items()))


def embedding_of(body: dict) -> list[float]:
    return body["data"][0]["embedding"]


def printed_steps(logs: str) -> dict[str, list[int]]:
    """Rank 0's printed steps by worker process. A process takes each step once, so a line seen twice (Ray may
    forward a line more than once) counts once; a step taken again after a restart is in another process."""
    steps: dict[str, set[int]] = {}
    for pid, step in STEP_LINE.findall(logs):
        steps.setdefault(pid, set()).add(int(step))
    return {pid: sorted(taken) for pid, taken in steps.items()}
