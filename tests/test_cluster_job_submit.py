"""What a user does: start a Ray head and a second node with `ray start`, token auth on, then `ray job submit
--working-dir .` the extraction job and the pretraining job, and find their outputs; a submit without the token is
refused."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile

import pyarrow.parquet as pq
import pytest

from biomedclip.model.artifact import load_artifact
from tests.cluster_local import VENV_BIN, LocalCluster, local_cluster, working_dir_package
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster("cj") as cluster:
        cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=2)
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
    for token, refusal in ((None, "401"), ("not-the-token", "403")):
        result = cluster.submit(["python", "-c", "print('refused')"], token=token)
        assert result.returncode != 0
        assert "refused" not in result.stdout
        assert cluster.get("/api/jobs/", token=token)[0] == int(refusal)
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


def test_extract_then_pretrain_by_job_submission(cluster, tmp_path):
    corpus, extracted, run_dir = tmp_path / "corpus", tmp_path / "extracted", tmp_path / "run"
    subprocess.run([sys.executable, "jobs/make_sample_corpus.py", "--output", str(corpus), "--articles", "64"],
                   cwd=REPO, check=True, capture_output=True)

    started = time.monotonic()
    extract = ["python", "jobs/extract.py", "--source", str(corpus), "--output", str(extracted)]
    output = submitted(cluster.submit(extract))
    assert '"pairs_written"' in output  # the job's own summary reaches the submitter
    manifest = json.loads((extracted / "manifest.json").read_text())
    train_shards = sorted((extracted / "train").glob("part-*.parquet"))
    assert train_shards and list((extracted / "val").glob("part-*.parquet"))
    train_rows = sum(pq.read_metadata(shard).num_rows for shard in train_shards)
    assert train_rows >= 64  # enough for the tiny curriculum's first stage on 2 workers
    assert manifest["pairs_written"] >= train_rows
    extract_s = time.monotonic() - started

    started = time.monotonic()
    pretrain = ["python", "jobs/pretrain.py", "--config", "jobs/configs/tiny.yaml",
                "--set", f"data.path={extracted}", "--set", f"run.output_dir={run_dir}",
                "--set", "train.epochs=1", "--set", "train.unmasked_epochs=0", "--set", "run.num_workers=2"]
    output = submitted(cluster.submit(pretrain))
    assert "epoch 0 val:" in output  # progress a person can follow, streamed back by `ray job submit`
    assert "last checkpoint:" in output
    checkpoints = sorted((run_dir / "checkpoints").glob("*/checkpoint_step*"))
    assert checkpoints, list(run_dir.rglob("*"))[:20]
    model, tokenizer = load_artifact(run_dir / "final")  # the exported model loads
    assert model.config.embed_dim == 64 and tokenizer.vocab_size > 0
    pretrain_s = time.monotonic() - started

    statuses = [(entrypoint.split()[1], status) for entrypoint, status in job_statuses(cluster)
                if entrypoint.startswith("python jobs/")]
    assert statuses == [("jobs/extract.py", "SUCCEEDED"), ("jobs/pretrain.py", "SUCCEEDED")]
    print(f"\nextraction job {extract_s:.0f}s, pretraining job {pretrain_s:.0f}s")
