"""ray-cluster.yaml: valid for the launcher in the ray wheel, GPU types as documented, auth on, no secrets."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
CONFIG_PATH = REPO / "ray-cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture()
def config() -> dict:
    return yaml.safe_load(CONFIG_PATH.read_text())


def start_commands(config: dict) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def run_like_the_launcher(commands: list[str], home: Path) -> list[dict]:
    """Runs the `ray start` commands among `commands` with bash from `home`, as the launcher does on a node whose
    home that is, with a `ray` on PATH that starts nothing: it records the directory, the environment and the
    arguments it was started with (one dict per `ray start`)."""
    shim_dir, record = home / ".shim", home / ".ray_start_record"
    shim_dir.mkdir(parents=True, exist_ok=True)
    shim = shim_dir / "ray"
    shim.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"with open({str(record)!r}, 'a') as out:\n"
                    "    out.write(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'args': sys.argv[1:]}))\n"
                    "    out.write('\\n')\n")
    shim.chmod(0o755)
    env = {**os.environ, "HOME": str(home), "PATH": f"{shim_dir}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        if "ray start" in command:
            subprocess.run(["bash", "-c", command], env=env, cwd=home, check=True, capture_output=True, timeout=30)
    return [json.loads(line) for line in record.read_text().splitlines()]


def exported(start: dict) -> dict[str, str]:
    """The variables a start command set or changed, compared with the environment it was run in."""
    return {k: v for k, v in start["env"].items() if os.environ.get(k) != v and k not in ("HOME", "PATH", "PWD",
                                                                                         "OLDPWD", "SHLVL", "_")}


def test_matches_the_schema_in_the_ray_wheel(config):
    jsonschema.validate(config, json.loads(SCHEMA_PATH.read_text()))


def test_passes_the_launchers_own_checks(config):
    prepared = prepare_config(copy.deepcopy(config))  # merges the AWS defaults, as `ray up` does
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    assert types["head"]["max_workers"] == 0
    workers = [name for name in types if name != prepared["head_node_type"]]
    assert sum(types[name]["min_workers"] for name in workers) <= prepared["max_workers"]
    assert sum(types[name]["max_workers"] for name in workers) == prepared["max_workers"]
    for name in workers:
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"], name


def test_launcher_checks_catch_a_missing_head_type_and_bad_bounds(config):
    """The checks above can fail: the same validator refuses a broken copy of our file."""
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_a100"]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        validate_config(prepare_config(broken))
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_v100"]["resources"]["GPU"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA_PATH.read_text()))


def test_cpu_and_pinned_gpu_worker_types(config):
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head only coordinates
    assert "GPU" not in types["cpu"]["resources"] and types["cpu"]["resources"]["CPU"] > 0
    expected = {"gpu_a100": ("p4d.24xlarge", "A100"), "gpu_v100": ("p3.16xlarge", "V100")}
    for name, (instance, accelerator) in expected.items():
        assert types[name]["node_config"]["InstanceType"] == instance
        assert types[name]["resources"]["GPU"] == 8
        pinned = [key for key in types[name]["resources"] if key.startswith("accelerator_type:")]
        assert pinned == [f"accelerator_type:{accelerator}"], name  # a run never mixes GPU types
    for name in ("cpu", *expected):
        assert types[name]["min_workers"] == 0 < types[name]["max_workers"], name


def test_token_auth_on_every_node_from_a_mounted_file(config):
    for command in start_commands(config):
        if "ray start" not in command:
            continue
        assert "RAY_AUTH_MODE=token" in command
        token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", command).group(1).rstrip(";")
        remote = token_path.replace("$HOME", "~")
        assert remote in config["file_mounts"], f"{token_path} is not mounted"
        assert config["file_mounts"][remote].startswith("~/"), "the token must come from the user's machine"


def test_no_token_is_committed(config):
    text = CONFIG_PATH.read_text()
    assert "RAY_AUTH_TOKEN=" not in text, "a literal token in the file"
    assert not re.search(r"\b[0-9a-f]{32,}\b", text), "something token-shaped in the file"


def test_dashboard_bound_to_loopback(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in yaml.safe_dump(config)


def test_project_installed_from_the_synced_checkout(config):
    assert config["file_mounts"]["~/biomedclip"] == "."
    assert ".gitignore" in config["rsync_filter"]  # no .venv, run outputs or local Ray sessions are synced
    assert any("pip install" in cmd and "~/biomedclip" in cmd for cmd in config["setup_commands"])
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0-py311-gpu")
    assert ray.__version__ == "2.60.0"


def test_every_node_starts_ray_in_the_synced_checkout_with_it_on_pythonpath(config, tmp_path):
    """`serve.app:build` (serve/config.yaml) and `python jobs/...` live in the checkout that file_mounts syncs to
    ~/biomedclip, outside the installed package: every node's Ray must start there with it on PYTHONPATH, so that
    the Serve replicas and job drivers Ray starts import them (tests/test_cluster_serve_deploy.py deploys on it)."""
    checkout = tmp_path / "home" / "biomedclip"
    shutil.copytree(REPO / "serve", checkout / "serve")
    starts = run_like_the_launcher(start_commands(config), tmp_path / "home")
    assert [start["args"][0] for start in starts] == ["start", "start"]  # head, then worker
    for start in starts:
        assert Path(start["cwd"]) == checkout
        python_path = exported(start).get("PYTHONPATH", "").split(os.pathsep)
        assert python_path[0] == str(checkout)
        assert python_path[1:] == [p for p in [os.environ.get("PYTHONPATH")] if p]  # the node's own path kept
        # Where a Ray worker of that node, started elsewhere, finds the config's import path (found, not run).
        module = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]["import_path"]
        found = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                                "print(importlib.util.find_spec(sys.argv[1]).origin)", module.split(":")[0]],
                               env=start["env"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stderr[-2000:]
        assert found.stdout.strip() == str(checkout / "serve" / "app.py")
