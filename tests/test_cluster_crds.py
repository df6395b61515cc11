"""Every manifest in cluster/ against the Kubernetes API (pod templates, metadata and the ServiceAccount, field by
field from the official `kubernetes` client's models) and KubeRay's CRDs (ray.io/v1: RayCluster, RayJob,
RayService), as tests/kuberay_schema.py describes them; and each kind of mistake those checks must catch."""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.kuberay_schema import manifest_errors

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
MANIFESTS = sorted(path.name for path in CLUSTER.glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_every_kind_of_manifest_is_here():
    assert {load(name)["kind"] for name in MANIFESTS} >= {"RayCluster", "RayJob", "RayService", "ServiceAccount"}


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_kubernetes_and_kuberay_schemas(name):
    errors = manifest_errors(load(name))
    assert not errors, f"cluster/{name}:\n" + "\n".join(errors)


def head(spec: dict) -> dict:
    return spec["headGroupSpec"]


def worker(spec: dict) -> dict:
    return spec["workerGroupSpecs"][0]


def pod(group: dict) -> dict:
    return group["template"]["spec"]


def container(group: dict) -> dict:
    return pod(group)["containers"][0]


def cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


# (manifest, what is broken, the change, the path and words the error must name)
Mutation = Callable[[dict], None]
BROKEN: list[tuple[str, str, Mutation, str]] = [
    ("raycluster.yaml", "a misspelled pod field",
     lambda m: pod(worker(m["spec"])).update(serviceAccountname=pod(worker(m["spec"])).pop("serviceAccountName")),
     "spec.workerGroupSpecs[0].template.spec: Additional properties are not allowed ('serviceAccountname'"),
    ("rayservice.yaml", "env on the pod instead of its container",
     lambda m: pod(head(cluster_spec(m))).update(env=[{"name": "BIOMEDCLIP_MODEL_DIR", "value": "/models"}]),
     "spec.rayClusterConfig.headGroupSpec.template.spec: Additional properties are not allowed ('env'"),
    ("rayjob-pretrain.yaml", "an int where Kubernetes wants a string",
     lambda m: container(head(cluster_spec(m))).update(env=[{"name": "OMP_NUM_THREADS", "value": 1}]),
     "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env[0].value: 1 is not of type 'string'"),
    ("raycluster.yaml", "a container without its name",
     lambda m: container(head(m["spec"])).pop("name"),
     "spec.headGroupSpec.template.spec.containers[0]: 'name' is a required property"),
    ("raycluster.yaml", "a misspelled KubeRay field",
     lambda m: worker(m["spec"]).update(maxReplica=worker(m["spec"]).pop("maxReplicas")),
     "spec.workerGroupSpecs[0]: Additional properties are not allowed ('maxReplica'"),
    ("raycluster.yaml", "a non-string rayStartParams value",
     lambda m: head(m["spec"])["rayStartParams"].update({"num-cpus": 0}),
     "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'"),
    ("rayservice.yaml", "replicas as a string",
     lambda m: worker(cluster_spec(m)).update(replicas="1"),
     "spec.rayClusterConfig.workerGroupSpecs[0].replicas: '1' is not of type 'integer'"),
    ("raycluster.yaml", "a worker group without its name",
     lambda m: worker(m["spec"]).pop("groupName"),
     "spec.workerGroupSpecs[0]: 'groupName' is a required property"),
    ("raycluster.yaml", "an unknown auth mode",
     lambda m: m["spec"]["authOptions"].update(mode="tokens"),
     "spec.authOptions.mode: 'tokens' is not one of ['disabled', 'token']"),
    ("raycluster.yaml", "an unknown upscaling mode",
     lambda m: m["spec"]["autoscalerOptions"].update(upscalingMode="Fast"),
     "spec.autoscalerOptions.upscalingMode: 'Fast' is not one of"),
    ("rayjob-pretrain.yaml", "an unknown submission mode",
     lambda m: m["spec"].update(submissionMode="K8sJob"),
     "spec.submissionMode: 'K8sJob' is not one of"),
    ("rayjob-pretrain.yaml", "a misspelled RayJob field",
     lambda m: m["spec"].update(shutdownAfterJobFinish=m["spec"].pop("shutdownAfterJobFinishes")),
     "spec: Additional properties are not allowed ('shutdownAfterJobFinish'"),
    ("rayservice.yaml", "a RayService without its cluster",
     lambda m: m["spec"].pop("rayClusterConfig"),
     "spec: 'rayClusterConfig' is a required property"),
    ("serviceaccount.yaml", "a misspelled ServiceAccount field",
     lambda m: m.update(automountServiceAccountTokens=False),
     "<root>: Additional properties are not allowed ('automountServiceAccountTokens'"),
    ("raycluster.yaml", "an unknown API version",
     lambda m: m.update(apiVersion="ray.io/v1alpha1"),
     "apiVersion: 'ray.io/v1' was expected"),
    ("raycluster.yaml", "an unknown kind",
     lambda m: m.update(kind="RayClusters"),
     "kind: 'RayClusters' is neither one of"),
]


@pytest.mark.parametrize(("name", "mistake", "mutate", "expected"), BROKEN, ids=[case[1] for case in BROKEN])
def test_each_kind_of_mistake_is_refused_with_its_path(name, mistake, mutate, expected):
    manifest = copy.deepcopy(load(name))
    assert not manifest_errors(manifest)
    mutate(manifest)
    errors = manifest_errors(manifest)
    assert any(error.startswith(expected) for error in errors), f"{mistake}: {errors}"
