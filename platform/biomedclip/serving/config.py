"""Typed configuration of the inference application: models, batching, search, request limits and auth.

Loaded from the `args:` section of serve/config.yaml (or built in Python). The API key itself never appears here:
`auth` only names the environment variables that hold the key or the path of a file holding it. Artifacts (models,
the VQA model, the search index) are local folders or URIs (`s3://...`, any pyarrow filesystem); replicas copy remote
ones into their node's cache ($BIOMEDCLIP_CACHE) before loading them, reaching S3 at $AWS_ENDPOINT_URL when set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from biomedclip.config import ConfigError
from biomedclip.io import absolute

DEFAULT_MODEL_DIR = "demo_out/model"
MODEL_DIR_ENV = "BIOMEDCLIP_MODEL_DIR"
VQA_DIR_ENV = "BIOMEDCLIP_VQA_DIR"
# Serve options every deployment shares, for rollouts (`serve deploy` of a changed config) that fail no request: new
# replicas start before old ones stop (surge), and an old replica drains its ongoing requests before it exits.
ROLLOUT_OPTIONS = {"max_surge_percent": 100, "graceful_shutdown_wait_loop_s": 2.0,
                   "graceful_shutdown_timeout_s": 60.0}
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
class LimitsConfig:
    """What a request may hold; anything beyond is refused with a 4xx naming the field."""
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding
    max_images: int = 16  # per /v1/embed or /v1/zero-shot request
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
class SearchConfig:
    """Figure search (/v1/search) over an index written by jobs/build_index.py; without an index it answers 503."""
    index: str | None = None  # index directory or URI (s3://...)
    model: str | None = None  # model id of the artifact the index was built with; None: the default model
    max_top_k: int = 50
    chunk_rows: int = 65_536  # index rows scored at a time: bounds the memory a query takes

    def __post_init__(self) -> None:
        if self.max_top_k < 1 or self.chunk_rows < 1:
            raise ConfigError("search: max_top_k and chunk_rows must be >= 1")


@dataclass
class ServingConfig:
    """App settings only: replicas, autoscaling and resources are Serve's own per-deployment options (the
    `deployments:` section of serve/config.yaml, or `build_app(..., deployments=...)`)."""
    # model id -> artifact folder or URI; replicas load a model on its first request (up to max_models_per_replica)
    models: dict[str, str] = field(default_factory=lambda: {"default": DEFAULT_MODEL_DIR})
    default_model: str | None = None  # None: the first of `models`
    vqa_artifact: str | None = None  # folder or URI; None: /v1/vqa answers 503
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    prompt_cache_size: int = 1024  # label sets per replica
    max_models_per_replica: int = 3
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models: at least one model id -> artifact directory is needed")
        if self.default_model is not None and self.default_model not in self.models:
            raise ConfigError(f"default_model: {self.default_model!r} is not one of {sorted(self.models)}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("templates: need at least one, each with a '{}' for the label")
        if self.search.model is not None and self.search.model not in self.models:
            raise ConfigError(f"search.model: {self.search.model!r} is not one of {sorted(self.models)}")

    @property
    def default_model_id(self) -> str:
        return self.default_model or next(iter(self.models))

    @property
    def search_model_id(self) -> str:
        return self.search.model or self.default_model_id

    def resolved(self, base_dir: str | Path) -> ServingConfig:
        """Applies the env overrides (model and VQA artifacts) and makes local artifact paths absolute; URIs stay as
        they are."""
        models = dict(self.models)
        if os.environ.get(MODEL_DIR_ENV):
            models[self.default_model_id] = os.environ[MODEL_DIR_ENV]
        vqa = os.environ.get(VQA_DIR_ENV) or self.vqa_artifact
        base = Path(base_dir)
        return replace(self, models={k: absolute(v, base) for k, v in models.items()},
                       vqa_artifact=None if vqa is None else absolute(vqa, base),
                       search=replace(self.search, index=None if self.search.index is None
                                      else absolute(self.search.index, base)))
