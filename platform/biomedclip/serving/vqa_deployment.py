"""The VQA model deployment, batched across requests. Built only when a VQA artifact is configured.

It holds a predictor from `biomedclip.vqa.artifact.load_vqa_predictor(dir, device)`, whose
`predict(images, questions) -> [{"answer", "confidence", "answer_type"}]` answers a batch. The import happens in the
replica, so the rest of the service runs without the VQA package. A remote artifact is copied to the node's cache
first (see artifacts.py).
"""
from __future__ import annotations

import ray
import torch
from PIL import Image
from ray import serve

from biomedclip.serving.artifacts import fetch_artifact
from biomedclip.serving.config import ROLLOUT_OPTIONS, ServingConfig


class VqaModel:
    def __init__(self, config: ServingConfig):
        from biomedclip.vqa.artifact import load_vqa_predictor

        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.predictor = load_vqa_predictor(fetch_artifact("VQA model", config.vqa_artifact), device=device)
        self.fatal_error: str | None = None
        batching = config.batching
        self._answer_batch = serve.batch(max_batch_size=batching.max_batch_size,
                                         batch_wait_timeout_s=batching.batch_wait_timeout_s)(self._predict)

    async def _predict(self, items: list[tuple[Image.Image, str]]) -> list[dict]:
        images, questions = (list(column) for column in zip(*items))
        try:
            answers = self.predictor.predict(images, questions)  # on the event loop: see clip_deployment.py
        except RuntimeError as err:
            self.fatal_error = f"{type(err).__name__}: {err}"
            raise
        return [{"answer": str(a["answer"]), "confidence": float(a["confidence"]),
                 "answer_type": str(a["answer_type"])} for a in answers]

    async def answer(self, image: Image.Image, question: str) -> dict:
        return await self._answer_batch((image, question))

    def check_health(self) -> None:
        if self.fatal_error is not None:
            raise RuntimeError(f"VQA replica failed and needs replacing: {self.fatal_error}")


DEPLOYMENT_OPTIONS = {
    **ROLLOUT_OPTIONS,
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1,
                           "target_ongoing_requests": 8},
    "max_ongoing_requests": 64,
    "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0},
}
vqa_deployment = serve.deployment(VqaModel, name="VqaModel", **DEPLOYMENT_OPTIONS)
