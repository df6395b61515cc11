"""Typed configuration of the inference application: models, batching, replicas, request limits and auth.

Loaded from the `args:` section of serve/config.yaml (or built in Python). The API key itself never appears here:
`auth` only names the environment variables that hold the key or the path of a file holding it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from biomedclip.config import ConfigError

DEFAULT_MODEL_DIR = "demo_out/model"
MODEL_DIR_ENV = "BIOMEDCLIP_MODEL_DIR"
VQA_DIR_ENV = "BIOMEDCLIP_VQA_DIR"
# BiomedCLIP's zero-shot prompt.
DEFAULT_TEMPLATES = ("this is a photo of {}",)


@dataclass
class BatchingConfig:
    """Dynamic batching of image encodes on a model replica; max_batch_size 1 turns batching off."""
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"batching.max_batch_size: must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batching.batch_wait_timeout_s: must be >= 0, got {self.batch_wait_timeout_s}")


@dataclass
class ReplicaConfig:
    """Resources and autoscaling (by ongoing requests per replica) of one deployment."""
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64
    num_cpus: float = 0.5
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"replicas: need 1 <= min_replicas <= max_replicas, got "
                              f"{self.min_replicas}..{self.max_replicas}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("replicas: num_cpus and num_gpus must be >= 0")

    def deployment_options(self) -> dict:
        return {
            "autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                   "initial_replicas": self.min_replicas,
                                   "target_ongoing_requests": self.target_ongoing_requests},
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }


@dataclass
class LimitsConfig:
    """What a request may hold; anything beyond is refused with a 4xx naming the field."""
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding
    max_images: int = 16  # per /v1/embed request
    max_labels: int = 64
    max_templates: int = 8
    max_texts: int = 64  # per /v1/embed request
    max_text_chars: int = 512  # each label, template, question or text

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ConfigError(f"limits.{name}: must be >= 1, got {value}")


@dataclass
class AuthConfig:
    """Where the API key comes from: an environment variable, else a file whose path is in another one.

    When neither variable is set the API is open (fit for loopback only).
    """
    key_env: str = "BIOMEDCLIP_API_KEY"
    key_file_env: str = "BIOMEDCLIP_API_KEY_FILE"


@dataclass
class ServingConfig:
    models: dict[str, str] = field(default_factory=lambda: {"default": DEFAULT_MODEL_DIR})  # model id -> artifact
    default_model: str | None = None  # None: the first of `models`
    vqa_artifact: str | None = None  # None: /v1/vqa answers 503
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    prompt_cache_size: int = 1024  # label sets per replica
    max_models_per_replica: int = 3
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    clip: ReplicaConfig = field(default_factory=ReplicaConfig)
    vqa: ReplicaConfig = field(default_factory=ReplicaConfig)
    ingress: ReplicaConfig = field(default_factory=lambda: ReplicaConfig(num_cpus=0.2, max_ongoing_requests=256))
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models: at least one model id -> artifact directory is needed")
        if self.default_model is not None and self.default_model not in self.models:
            raise ConfigError(f"default_model: {self.default_model!r} is not one of {sorted(self.models)}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("templates: need at least one, each with a '{}' for the label")

    @property
    def default_model_id(self) -> str:
        return self.default_model or next(iter(self.models))

    def resolved(self, base_dir: str | Path) -> ServingConfig:
        """Applies the env overrides (model and VQA directories) and makes artifact paths absolute."""
        models = dict(self.models)
        if os.environ.get(MODEL_DIR_ENV):
            models[self.default_model_id] = os.environ[MODEL_DIR_ENV]
        vqa = os.environ.get(VQA_DIR_ENV) or self.vqa_artifact
        base = Path(base_dir)
        return replace(self, models={k: str(_absolute(v, base)) for k, v in models.items()},
                       vqa_artifact=None if vqa is None else str(_absolute(vqa, base)))


def _absolute(path: str, base: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()
