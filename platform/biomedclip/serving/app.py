"""Builds the Serve application: the ingress in front of the CLIP deployment and, when configured, the VQA and
figure-search ones.

Replicas, autoscaling and resources are Serve's own deployment options: each deployment module holds its defaults
(DEPLOYMENT_OPTIONS), `serve run serve/config.yaml` overrides them from its `deployments:` section, and Python callers
pass `deployments={"ClipModel": {...}}` here.
"""
from __future__ import annotations

import os
from pathlib import Path

from ray.serve import Application

from biomedclip.config import from_dict
from biomedclip.serving.clip_deployment import clip_deployment
from biomedclip.serving.config import ROLLOUT_OPTIONS, ServingConfig
from biomedclip.serving.ingress import Ingress
from biomedclip.serving.search_deployment import search_deployment
from biomedclip.serving.vqa_deployment import vqa_deployment

INGRESS_OPTIONS = {
    **ROLLOUT_OPTIONS,
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 32},
    "max_ongoing_requests": 256,
    "ray_actor_options": {"num_cpus": 0.2},
}


def build_app(config: ServingConfig, deployments: dict[str, dict] | None = None) -> Application:
    """The application for `serve.run`; artifact paths in `config` should be absolute (see ServingConfig.resolved).
    `deployments` overrides Serve options by deployment name (Ingress, ClipModel, VqaModel, SearchIndex)."""
    from ray import serve

    options = deployments or {}
    unknown = set(options) - {"Ingress", "ClipModel", "VqaModel", "SearchIndex"}
    if unknown:
        raise ValueError(f"deployments: unknown deployment names {sorted(unknown)}")
    clip = clip_deployment.options(**options.get("ClipModel", {})).bind(config)
    vqa = vqa_deployment.options(**options.get("VqaModel", {})).bind(config) if config.vqa_artifact else None
    search = search_deployment.options(**options.get("SearchIndex", {})).bind(config) if config.search.index else None
    ingress = serve.deployment(Ingress, name="Ingress", **{**INGRESS_OPTIONS, **options.get("Ingress", {})})
    return ingress.bind(clip, vqa, search, config, _key_file(config))


def _key_file(config: ServingConfig) -> str | None:
    """The key file's path (not a secret) for the ingress replicas; the key itself is never passed on, so
    $BIOMEDCLIP_API_KEY must be set where the replicas run."""
    return os.environ.get(config.auth.key_file_env) or None


def build_app_from_args(args: dict, base_dir: str | Path) -> Application:
    """For a Serve config file's `args:` (checked like any config); relative paths are taken from `base_dir`."""
    return build_app(from_dict(ServingConfig, args).resolved(base_dir))
