"""Builds the Serve application: the ingress in front of the CLIP deployment and, when configured, the VQA one."""
from __future__ import annotations

import os
from pathlib import Path

from ray import serve
from ray.serve import Application

from biomedclip.config import from_dict
from biomedclip.serving.clip_deployment import clip_deployment
from biomedclip.serving.config import ServingConfig
from biomedclip.serving.ingress import Ingress
from biomedclip.serving.vqa_deployment import vqa_deployment


def build_app(config: ServingConfig) -> Application:
    """The application for `serve.run`; artifact paths in `config` should be absolute (see ServingConfig.resolved)."""
    clip = clip_deployment(config).bind(config)
    vqa = vqa_deployment(config).bind(config) if config.vqa_artifact else None
    options = config.ingress.deployment_options()
    options["ray_actor_options"]["runtime_env"] = {"env_vars": _key_file_env(config)}
    return serve.deployment(Ingress, name="Ingress", **options).bind(clip, vqa, config)


def _key_file_env(config: ServingConfig) -> dict[str, str]:
    """Passes the key file's path (not a secret) on to the ingress replicas; the key itself is never forwarded,
    so $BIOMEDCLIP_API_KEY must be set where the replicas run."""
    name = config.auth.key_file_env
    return {name: os.environ[name]} if os.environ.get(name) else {}


def build_app_from_args(args: dict, base_dir: str | Path) -> Application:
    """For a Serve config file's `args:` (checked like any config); relative paths are taken from `base_dir`."""
    return build_app(from_dict(ServingConfig, args).resolved(base_dir))
