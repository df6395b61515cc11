"""The BiomedCLIP model deployment: several artifacts multiplexed by model id, image encodes batched across requests.

The ingress names the model with `handle.options(multiplexed_model_id=...)`; Serve routes to a replica that has it
loaded and splits batches by model id, so one batch always runs on one model. A replica loads the default model when
it starts and any other on its first request for it (a remote artifact is copied to the node's cache first): a model
that cannot be fetched or loaded fails only the requests for it, with an error naming it and its location, while the
other models keep serving.

Model work runs on the replica's event loop, blocking it, on purpose: Serve forms the next batch as soon as requests
arrive and only then waits for the running one, so with the loop free (a worker thread) every batch after the
first held one or two requests; with the loop blocked, the requests that arrive meanwhile form one batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import numpy as np
import ray
import torch
from PIL import Image
from ray import serve

from biomedclip.inference import Predictor, rank_labels
from biomedclip.serving.artifacts import ArtifactUnavailable, fetch_artifact
from biomedclip.serving.config import ROLLOUT_OPTIONS, ServingConfig
from biomedclip.serving.prompt_cache import PromptCache

logger = logging.getLogger("ray.serve")


class ClipModel:
    async def __init__(self, config: ServingConfig):
        self.config = config
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"  # GPUs Serve gave it
        self.prompt_cache = PromptCache(config.prompt_cache_size)
        self.fatal_error: str | None = None
        self.batch_sizes: Counter[int] = Counter()
        self.loads: Counter[str] = Counter()  # model id -> loads this replica began
        # Wrapped here rather than at class level so that the config sets the limit; Serve wants a plain function.
        self.engine = serve.multiplexed(max_num_models_per_replica=config.max_models_per_replica)(self._loader())
        batching = config.batching
        self._encode_batch = serve.batch(max_batch_size=batching.max_batch_size,
                                         batch_wait_timeout_s=batching.batch_wait_timeout_s)(self._encode_images)
        # Ready only with the default model loaded: a rollout's new replica takes traffic warm, and one whose default
        # model cannot be loaded never replaces a working one (Serve keeps the old replicas when the new ones fail).
        await self.engine(config.default_model_id)

    def _loader(self):
        models, device, loads = self.config.models, self.device, self.loads

        async def load(model_id: str) -> Predictor:
            location = models[model_id]
            logger.info("loading model %r from %s on %s", model_id, location, device)
            loads[model_id] += 1
            directory = await asyncio.to_thread(fetch_artifact, f"model {model_id!r}", location)
            try:
                return await asyncio.to_thread(Predictor.load, directory, device, model_id)
            except Exception as err:  # whatever the artifact held (missing file, wrong shapes): named, not hidden
                raise ArtifactUnavailable(f"model {model_id!r} at {location}: cannot load it "
                                          f"({type(err).__name__}: {err})") from err

        return load

    def _model_id(self) -> str:
        model_id = serve.get_multiplexed_model_id() or self.config.default_model_id
        if model_id not in self.config.models:
            raise KeyError(f"unknown model id {model_id!r}")
        return model_id

    async def _encode_images(self, images: list[Image.Image]) -> list[np.ndarray]:
        """One batch of images, all for the same model (Serve splits batches by model id)."""
        engine = await self.engine(self._model_id())
        self.batch_sizes[len(images)] += 1
        return list(self._guarded(engine.encode_images, images))

    def _guarded(self, fn, *args):
        """Runs model work; a failure there (device lost, out of memory) marks the replica unhealthy so that Serve
        replaces it."""
        try:
            return fn(*args)
        except RuntimeError as err:
            self.fatal_error = f"{type(err).__name__}: {err}"
            raise

    async def zero_shot(self, images: list[Image.Image], labels: list[str], templates: list[str] | None) -> dict:
        """Per image, the labels ranked by probability; the images join batches with other requests' images."""
        model_id = self._model_id()
        engine = await self.engine(model_id)
        templates = templates or self.config.templates
        image_features = np.stack(await asyncio.gather(*(self._encode_batch(image) for image in images)))
        probabilities = engine.zero_shot(image_features, self._label_features(engine, labels, templates))
        return {"model": model_id, "rankings": [rank_labels(row, labels) for row in probabilities]}

    def _label_features(self, engine: Predictor, labels: list[str], templates: list[str]) -> np.ndarray:
        key = (engine.model_id, tuple(labels), tuple(templates))
        features = self.prompt_cache.get(key)
        if features is None:
            features = self._guarded(engine.label_features, labels, templates)
            self.prompt_cache.put(key, features)
        return features

    async def embed(self, images: list[Image.Image], texts: list[str]) -> dict:
        model_id = self._model_id()
        engine = await self.engine(model_id)
        image_features = await asyncio.gather(*(self._encode_batch(image) for image in images))
        text_features = self._guarded(engine.encode_texts, texts) if texts else []
        pad_id = engine.model.config.text.pad_token_id
        return {"model": model_id, "dim": engine.embed_dim,
                "image_embeddings": [f.tolist() for f in image_features],
                "text_embeddings": [f.tolist() for f in text_features],
                "text_tokens": int((engine.tokens(texts) != pad_id).sum()) if texts else 0}

    async def describe(self) -> dict:
        engine = await self.engine(self._model_id())
        return {**engine.describe(), "default": engine.model_id == self.config.default_model_id}

    def stats(self) -> dict:
        """Prompt-cache counters, how many batches of each size this replica ran, the models it loaded and its CPU
        time so far."""
        return {"prompt_cache": self.prompt_cache.stats(), "batch_sizes": dict(self.batch_sizes),
                "loads": dict(self.loads), "cpu_seconds": time.process_time()}

    def check_health(self) -> None:
        if self.fatal_error is not None:
            raise RuntimeError(f"model replica failed and needs replacing: {self.fatal_error}")
        if self.device == "cuda":
            torch.cuda.synchronize()  # raises when the device is lost


# Serve's own options; `deployments:` in serve/config.yaml (or build_app's `deployments`) override them.
DEPLOYMENT_OPTIONS = {
    **ROLLOUT_OPTIONS,
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1,
                           "target_ongoing_requests": 16},
    "max_ongoing_requests": 64,
    "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0},
}
clip_deployment = serve.deployment(ClipModel, name="ClipModel", **DEPLOYMENT_OPTIONS)
