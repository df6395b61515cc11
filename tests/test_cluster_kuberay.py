"""KubeRay manifests and the image recipe: structure, token auth, GPU groups that fit the job, paths that exist,
and a RayService whose Serve config is serve/config.yaml with its models on S3."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from biomedclip.config import from_dict, load_config
from biomedclip.io.transfer import CACHE_ENV
from biomedclip.serving.config import MODEL_DIR_ENV, AuthConfig, ServingConfig
from biomedclip.train.config import PretrainConfig

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
IMAGE_ROOT = "/home/ray/biomedclip"  # where cluster/Dockerfile puts the repository
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob-pretrain.yaml": "RayJob", "rayservice.yaml": "RayService"}
CLUSTER_SPEC_KEY = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def cluster_spec(manifest: dict) -> dict:
    key = CLUSTER_SPEC_KEY[manifest["kind"]]
    return manifest["spec"] if key is None else manifest["spec"][key]


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [group["template"] for group in spec["workerGroupSpecs"]]


def containers(spec: dict) -> list[dict]:
    return [c for template in pod_templates(spec) for c in template["spec"]["containers"]]


def gpus(group: dict) -> int:
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return int(limits.get("nvidia.com/gpu", 0))


@pytest.fixture(params=sorted(MANIFESTS))
def manifest(request) -> dict:
    return load(request.param)


def test_kind_and_api_version(manifest):
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] in MANIFESTS.values()
    assert manifest["metadata"]["name"]


def test_same_ray_and_project_image_everywhere(manifest):
    spec = cluster_spec(manifest)
    assert spec["rayVersion"] == ray.__version__
    for container in containers(spec):
        assert container["image"] == f"biomedclip:{VERSION}", container["name"]


def test_token_auth_on_and_no_secret_values(manifest):
    spec = cluster_spec(manifest)
    assert spec["authOptions"]["mode"] == "token"
    for container in containers(spec):
        for env in container.get("env", []):
            if re.search(r"TOKEN|KEY|SECRET|PASSWORD", env["name"]) and not env["name"].endswith("_DIR"):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]


def test_in_tree_autoscaling_with_sane_bounds(manifest):
    spec = cluster_spec(manifest)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head only coordinates
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] == container["resources"]["limits"], group["groupName"]
        if gpus(group):
            tolerated = {t["key"] for t in group["template"]["spec"].get("tolerations", [])}
            assert "nvidia.com/gpu" in tolerated, group["groupName"]


GPU_TYPES = {"p4d.24xlarge": "A100", "p3.16xlarge": "V100"}


def instance_type(group: dict) -> str:
    return group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]


def ray_resources(group: dict) -> dict:
    """The custom resources a group's Ray nodes advertise (rayStartParams' JSON-in-a-string form)."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}


def test_raycluster_has_a_cpu_group_and_a100_and_v100_groups_of_8_gpus():
    spec = load("raycluster.yaml")["spec"]
    by_instance = {instance_type(g): g for g in spec["workerGroupSpecs"]}
    assert set(by_instance) == {"m6i.8xlarge", *GPU_TYPES}
    assert gpus(by_instance.pop("m6i.8xlarge")) == 0  # extraction, Ray Data and Serve ingress start no GPU node
    assert all(gpus(group) == 8 for group in by_instance.values())
    assert all(group["minReplicas"] == 0 for group in spec["workerGroupSpecs"])  # scale from zero


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-pretrain.yaml"])
def test_gpu_groups_are_pinned_to_their_accelerator_type(name):
    for group in cluster_spec(load(name))["workerGroupSpecs"]:
        pinned = {key.removeprefix("accelerator_type:") for key in ray_resources(group)
                  if key.startswith("accelerator_type:")}
        assert pinned == ({GPU_TYPES[instance_type(group)]} if gpus(group) else set()), group["groupName"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-pretrain.yaml"])
def test_every_pod_reads_s3_as_the_projects_service_account(name):
    account = load("serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount" and "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    for template in pod_templates(cluster_spec(load(name))):
        assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]


def entrypoint_args(manifest: dict) -> list[str]:
    return shlex.split(manifest["spec"]["entrypoint"])


def test_rayjob_runs_the_pretraining_job_with_a_valid_config():
    args = entrypoint_args(load("rayjob-pretrain.yaml"))
    assert args[:2] == ["python", "jobs/pretrain.py"]
    assert (REPO / args[1]).is_file()
    config = args[args.index("--config") + 1]
    assert (REPO / config).is_file()
    overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    cfg = load_config(PretrainConfig, REPO / config, overrides)  # unknown keys or bad values raise
    assert cfg.data.path.startswith("s3://") and cfg.run.storage_path.startswith("s3://"), \
        "on a cluster, data and checkpoints must be on storage every node reaches"


def test_rayjob_cluster_fits_the_job():
    manifest = load("rayjob-pretrain.yaml")
    args = entrypoint_args(manifest)
    cfg = load_config(PretrainConfig, REPO / args[args.index("--config") + 1])
    spec = manifest["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["workingDir"] == IMAGE_ROOT  # the driver's relative paths
    assert cfg.run.use_gpu
    workers = cfg.run.worker_range[1]
    gpu_groups = [g for g in spec["workerGroupSpecs"] if gpus(g)]
    assert sum(gpus(g) * g["maxReplicas"] for g in gpu_groups) >= workers
    for group in gpu_groups:  # one worker per GPU, its CPUs must fit on the node beside the others
        cpus = float(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        assert gpus(group) * cfg.run.cpus_per_worker < cpus, group["groupName"]


def test_rayservice_serve_config_is_serve_config_yaml_with_models_on_s3():
    serve_config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    deployed = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    args = deployed["applications"][0]["args"]
    config = from_dict(ServingConfig, args)  # unknown keys or bad values raise
    assert config.models and all(uri.startswith("s3://") for uri in config.models.values()), config.models
    assert config.resolved(REPO).models == config.models  # URIs are never taken as paths
    # Only the model locations (S3 on the cluster, local on a laptop) and the bind address (the pod's interface
    # behind KubeRay's Service) differ.
    without_models = [{**app, "args": {k: v for k, v in app["args"].items() if k != "models"}}
                      for app in deployed["applications"]]
    assert without_models == [{**app, "args": {k: v for k, v in app["args"].items() if k != "models"}}
                              for app in serve_config["applications"]]
    assert deployed["http_options"] == {**serve_config["http_options"], "host": "0.0.0.0"}
    assert {k: v for k, v in deployed.items() if k not in ("http_options", "applications")} == \
        {k: v for k, v in serve_config.items() if k not in ("http_options", "applications")}


def test_rayservice_import_paths_resolve():
    deployed = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    for app in deployed["applications"]:
        module_name, attribute = app["import_path"].split(":")
        path = REPO / (module_name.replace(".", "/") + ".py")
        assert path.is_file(), app["import_path"]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(getattr(module, attribute)), app["import_path"]


def test_rayservice_pods_read_s3_as_the_service_account_with_a_cache_and_the_key_from_a_secret():
    spec = load("rayservice.yaml")["spec"]["rayClusterConfig"]
    account = load("serviceaccount.yaml")["metadata"]["name"]
    for template in pod_templates(spec):
        pod = template["spec"]
        assert pod["serviceAccountName"] == account
        assert not any("persistentVolumeClaim" in volume for volume in pod.get("volumes", []))  # models come from S3
        container = pod["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert MODEL_DIR_ENV not in env, "the models are named in serveConfigV2, where a rollout changes them"
        assert env[AuthConfig().key_env]["valueFrom"]["secretKeyRef"] == {"name": "biomedclip-api-key",
                                                                          "key": "api-key"}
        cache = env[CACHE_ENV]["value"]
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
        assert mounted.get(cache) in empty_dirs, container["name"]  # a per-pod cache, gone with the pod


def test_rayservice_gpu_group_is_pinned_to_its_accelerator_type():
    groups = load("rayservice.yaml")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for group in groups:
        pinned = {key for key in ray_resources(group) if key.startswith("accelerator_type:")}
        assert pinned == ({"accelerator_type:A10G"} if gpus(group) else set()), group["groupName"]
    assert instance_type(next(group for group in groups if gpus(group))) == "g5.2xlarge"  # A10G GPUs


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_dockerfile_builds_the_project_on_the_ray_image():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", f"rayproject/ray:{ray.__version__}-py311-gpu")
    assert ("WORKDIR", IMAGE_ROOT) in instructions
    copied = []
    for op, rest in instructions:
        if op == "COPY":
            sources = [part for part in rest.split() if not part.startswith("--")][:-1]
            copied += sources
    assert copied and all((REPO / source).exists() for source in copied), copied
    assert {"platform", "jobs", "serve", "pyproject.toml"} <= set(copied)
    assert any(op == "RUN" and "pip install" in rest for op, rest in instructions)
    env = " ".join(rest for op, rest in instructions if op in ("ENV", "ARG"))
    assert f"PYTHONPATH={IMAGE_ROOT}" in env  # serve.app:build imports from the repository root
    assert not re.search(r"AUTH_TOKEN|API_KEY|SECRET|PASSWORD", env)
