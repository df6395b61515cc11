"""JSON Schemas for the KubeRay manifests in cluster/: what `kubectl apply` and the KubeRay operator would refuse,
checked without a Kubernetes cluster.

- Kubernetes' own objects (pod templates, metadata, Services, and core v1 manifests such as the ServiceAccount) are
  generated from the models of the official `kubernetes` Python client: every model's `openapi_types` /
  `attribute_map` become a definition with its JSON field names, their types, its required fields, and no other field.
- KubeRay's own types (ray.io/v1) are written out below from the field reference of KubeRay's CRD API (docs.ray.io,
  "KubeRay CRD API reference", KubeRay 1.5-1.7, and the Go types in ray-operator/apis/ray/v1): field names, JSON
  types, required fields and enums. Nested KubeRay options this project does not use (GCS fault tolerance, history
  server, network policy, deletion rules, incremental upgrades) are checked as objects only.
"""
from __future__ import annotations

import re
from functools import cache

import jsonschema
from kubernetes.client import models as k8s

INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# resource.Quantity: the client types it as a string, but the API also takes a number (`nvidia.com/gpu: 8`).
QUANTITY = {"type": ["string", "number"]}
QUANTITY_FIELDS = {("V1ResourceRequirements", "limits"), ("V1ResourceRequirements", "requests"),
                   ("V1PodSpec", "overhead"), ("V1EmptyDirVolumeSource", "size_limit"),
                   ("V1ResourceFieldSelector", "divisor")}
# The client types IntOrString fields (probe and service ports) as `object`; the only other `object` field,
# managedFields' fieldsV1, is written by the API server, never in a manifest.
INT_OR_STRING = {"type": ["integer", "string"]}
BASIC_TYPES = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"},
               "float": {"type": "number"}, "datetime": {"type": "string"}, "date": {"type": "string"},
               "bytes": {"type": "string"}, "bytearray": {"type": "string"},  # base64 in YAML and JSON
               "object": INT_OR_STRING}


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def _type_schema(openapi_type: str, definitions: dict) -> dict:
    """The schema of one `openapi_types` entry ("str", "List[V1EnvVar]", "Dict[str, str]", "V1PodSpec", or the
    older client's "list[...]" / "dict(str, ...)" spellings); model types are added to `definitions`."""
    if openapi_type in BASIC_TYPES:
        return BASIC_TYPES[openapi_type]
    if match := re.fullmatch(r"[Ll]ist\[(.+)\]", openapi_type):
        return {"type": "array", "items": _type_schema(match.group(1), definitions)}
    if match := re.fullmatch(r"Dict\[str, (.+)\]|dict\(str, (.+)\)", openapi_type):
        return {"type": "object", "additionalProperties": _type_schema(match.group(1) or match.group(2), definitions)}
    _add_model(openapi_type, definitions)
    return _ref(openapi_type)


def _add_model(name: str, definitions: dict) -> None:
    if name in definitions:
        return
    model = getattr(k8s, name)
    definitions[name] = {}  # placeholder first: models refer to each other
    properties = {}
    for attribute, openapi_type in model.openapi_types.items():
        if (name, attribute) in QUANTITY_FIELDS:
            properties[model.attribute_map[attribute]] = (
                {"type": "object", "additionalProperties": QUANTITY} if openapi_type.lower().startswith("dict")
                else QUANTITY)
        else:
            properties[model.attribute_map[attribute]] = _type_schema(openapi_type, definitions)
    fields = getattr(model, "model_fields", {})  # the client's pydantic models know their required fields
    required = sorted(model.attribute_map[a] for a, f in fields.items() if a in model.attribute_map
                      and f.is_required())
    definitions[name] = {"type": "object", "properties": properties, "additionalProperties": False,
                         **({"required": required} if required else {})}


def kubernetes_definitions(*models: str) -> dict:
    """`$defs` for the named client models and every model they refer to."""
    definitions: dict = {}
    for name in models:
        _add_model(name, definitions)
    return definitions


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def _enum(*values: str) -> dict:
    return {"type": "string", "enum": list(values)}


OBJECT = {"type": "object"}
MANAGED_BY = _enum("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")

KUBERAY_DEFINITIONS = {
    "AuthOptions": _object({"mode": _enum("disabled", "token"), "secretName": {"type": "string"},
                            "enableK8sTokenAuth": {"type": "boolean"}}),
    "AutoscalerOptions": _object({
        "resources": _ref("V1ResourceRequirements"), "image": {"type": "string"},
        "imagePullPolicy": _enum("Always", "Never", "IfNotPresent"), "securityContext": _ref("V1SecurityContext"),
        "idleTimeoutSeconds": INT32, "upscalingMode": _enum("Default", "Aggressive", "Conservative"),
        "version": _enum("v1", "v2"), "env": {"type": "array", "items": _ref("V1EnvVar")},
        "envFrom": {"type": "array", "items": _ref("V1EnvFromSource")},
        "volumeMounts": {"type": "array", "items": _ref("V1VolumeMount")},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}}}),
    "HeadGroupSpec": _object({
        "template": _ref("V1PodTemplateSpec"), "headService": _ref("V1Service"), "enableIngress": {"type": "boolean"},
        "ingressOptions": OBJECT, "resources": STRING_MAP, "labels": STRING_MAP, "rayStartParams": STRING_MAP,
        "serviceType": _enum("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")}, required=("template",)),
    "WorkerGroupSpec": _object({
        "suspend": {"type": "boolean"}, "groupName": {"type": "string"}, "replicas": INT32, "minReplicas": INT32,
        "maxReplicas": INT32, "idleTimeoutSeconds": INT32, "priority": INT32, "resources": STRING_MAP,
        "labels": STRING_MAP, "rayStartParams": STRING_MAP, "template": _ref("V1PodTemplateSpec"),
        "scaleStrategy": _object({"workersToDelete": {"type": "array", "items": {"type": "string"}}}),
        "numOfHosts": INT32}, required=("groupName", "template")),
    "RayClusterSpec": _object({
        "upgradeStrategy": _object({"type": _enum("Recreate", "None")}), "authOptions": _ref("AuthOptions"),
        "suspend": {"type": "boolean"}, "managedBy": MANAGED_BY, "autoscalerOptions": _ref("AutoscalerOptions"),
        "headServiceAnnotations": STRING_MAP, "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": OBJECT, "historyServerOptions": OBJECT, "networkPolicy": OBJECT,
        "tlsOptions": _object({"enabled": {"type": "boolean"}}), "headGroupSpec": _ref("HeadGroupSpec"),
        "rayVersion": {"type": "string"}, "workerGroupSpecs": {"type": "array", "items": _ref("WorkerGroupSpec")}},
        required=("headGroupSpec",)),
    "RayJobSpec": _object({
        "activeDeadlineSeconds": INT32, "backoffLimit": INT32, "rayClusterSpec": _ref("RayClusterSpec"),
        "submitterPodTemplate": _ref("V1PodTemplateSpec"), "metadata": STRING_MAP, "clusterSelector": STRING_MAP,
        "submitterConfig": _object({"backoffLimit": INT32}), "managedBy": MANAGED_BY, "deletionStrategy": OBJECT,
        "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
        "submissionMode": _enum("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"),
        "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": INT32,
        "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"}}),
    "RayServiceSpec": _object({
        "rayClusterDeletionDelaySeconds": {**INT32, "minimum": 0}, "serviceUnhealthySecondThreshold": INT32,
        "deploymentUnhealthySecondThreshold": INT32, "serveService": _ref("V1Service"),
        "upgradeStrategy": _object({"type": _enum("NewClusterWithIncrementalUpgrade", "NewCluster", "None"),
                                    "clusterUpgradeOptions": OBJECT}),
        "serveConfigV2": {"type": "string"}, "rayClusterConfig": _ref("RayClusterSpec"),
        "excludeHeadPodFromServeSvc": {"type": "boolean"}}, required=("rayClusterConfig",)),
}

KIND_SPEC = {"RayCluster": "RayClusterSpec", "RayJob": "RayJobSpec", "RayService": "RayServiceSpec"}


@cache
def manifest_schema(kind: str) -> dict:
    """The schema of a manifest of `kind`: a RayCluster, RayJob or RayService of ray.io/v1, or a core v1 object
    (ServiceAccount, Secret, ConfigMap, ...) from the client's model of that name."""
    if kind in KIND_SPEC:
        root = _object({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind},
                        "metadata": _ref("V1ObjectMeta"), "spec": _ref(KIND_SPEC[kind])},
                       required=("apiVersion", "kind", "metadata", "spec"))
        models = ("V1PodTemplateSpec", "V1Service", "V1ObjectMeta", "V1ResourceRequirements", "V1SecurityContext",
                  "V1EnvVar", "V1EnvFromSource", "V1VolumeMount")
    else:
        root = {"allOf": [_ref(f"V1{kind}"), {"properties": {"apiVersion": {"const": "v1"}},
                                              "required": ["apiVersion", "kind", "metadata"]}]}
        models = (f"V1{kind}",)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$defs": {**kubernetes_definitions(*models), **KUBERAY_DEFINITIONS}, **root}
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def manifest_errors(manifest: dict) -> list[str]:
    """Every violation, as "<path>: <message>" (e.g. "spec.workerGroupSpecs[0].template.spec: Additional
    properties are not allowed ('serviceAccount' was unexpected)"); empty when the manifest is valid."""
    kind = manifest.get("kind")
    if kind not in KIND_SPEC and not hasattr(k8s, f"V1{kind}"):
        return [f"kind: {kind!r} is neither one of {list(KIND_SPEC)} nor a core v1 kind"]
    validator = jsonschema.Draft202012Validator(manifest_schema(kind))
    return sorted(f"{_path(error.absolute_path)}: {error.message}" for error in validator.iter_errors(manifest))


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<root>"
