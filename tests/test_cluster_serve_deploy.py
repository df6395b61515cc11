"""`serve deploy serve/config.yaml` after `ray up ray-cluster.yaml`, on this machine: a Ray head started the way
ray-cluster.yaml's head start command starts it (its directory and the variables it exports, found by running the
command with bash; token auth on), in a stand-in of the synced checkout outside the repository. The client deploys
serve/config.yaml from elsewhere, only the model and the HTTP port changed; the application must import
`serve.app:build` from the node's checkout and answer."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from biomedclip.model import build_model
from biomedclip.model.artifact import save_artifact
from tests.cluster_local import VENV_BIN, LocalCluster, local_cluster
from tests.conftest import REPO, free_port
from tests.helpers import tiny_config, train_tokenizer
from tests.test_cluster_launcher import CONFIG_PATH, exported, run_like_the_launcher

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

API_KEY = "serve-deploy-test-key"
CAPTIONS = ["a chest x-ray", "a brain mri", "a histology slide", "a ct scan of the abdomen"]


def deployable_config(directory: Path, model: Path) -> tuple[Path, int]:
    """serve/config.yaml with its default model at `model` and a free HTTP port: nothing else changed."""
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    port = config["http_options"]["port"] = free_port()
    args = config["applications"][0]["args"]
    args["models"] = {args["default_model"]: str(model)}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def application_status(cluster: LocalCluster, timeout: float = 240) -> dict:
    """The application's status once it has left DEPLOYING/NOT_STARTED (or the last one seen at the timeout)."""
    deadline, app = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status, body = cluster.get("/api/serve/applications/")
        if status == 200:
            app = next(iter(body["applications"].values()), {})
            if app.get("status") not in (None, "NOT_STARTED", "DEPLOYING"):
                return app
        time.sleep(1)
    return app


def test_serve_deploy_imports_the_app_from_the_nodes_checkout(tmp_path):
    home = tmp_path / "home"
    shutil.copytree(REPO / "serve", home / "biomedclip" / "serve")  # the part of the synced checkout pip leaves out
    [head_start] = run_like_the_launcher(yaml.safe_load(CONFIG_PATH.read_text())["head_start_ray_commands"], home)
    tokenizer = train_tokenizer(CAPTIONS)
    model = save_artifact(build_model(tiny_config(tokenizer)).eval(), tokenizer, tmp_path / "model")
    config, port = deployable_config(tmp_path, model)
    with local_cluster("sd", tmp_path) as cluster:
        cluster.cwd = Path(head_start["cwd"])
        cluster.env = {**{k: v for k, v in exported(head_start).items() if not k.startswith("RAY_AUTH")},
                       "BIOMEDCLIP_API_KEY": API_KEY,  # docs/cluster.md: set where the replicas run
                       "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}  # a loaded 2-core machine starts it slowly
        cluster.start_head(num_cpus=2)
        deployed = subprocess.run([str(VENV_BIN / "serve"), "deploy", str(config), "--address", cluster.dashboard_url],
                                  env=cluster.client_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        app = application_status(cluster)
        assert app.get("status") == "RUNNING", f"{app.get('message', '')[-3000:]}\n{cluster.logs()}"
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"X-API-Key": API_KEY}, timeout=60)
        assert models.status_code == 200, models.text
        assert [entry["id"] for entry in models.json()["models"]] == ["default"]
