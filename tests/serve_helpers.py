"""Helpers for the Serve tests.

- `fitted_artifact`: a model artifact that retrieves without pretraining, for the search tests: random tiny towers
  (frozen) whose projection heads are fitted to paired training figures by CCA (seconds with numpy, where training
  would take minutes). The fitted heads map an image and its caption close together, so text-to-image search has
  something to find.
- `requests_during`: clients that keep sending requests while a rollout (`serve deploy` of a changed config) runs,
  recording every answer, for the tests that a rollout fails no request.
"""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model
from biomedclip.model.artifact import save_artifact
from biomedclip.text import Tokenizer

GELU_SCALE = 1e-3  # the text head's GELU is used in its linear range: GELU(a*z)*2/a ~ z for small a


def _cca(x: np.ndarray, y: np.ndarray, dim: int, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Projections (Dx x dim, Dy x dim) of centred x and y onto their canonical directions, weighted by the square
    root of each direction's correlation so that weak directions count less in cosine similarity."""
    def inverse_sqrt(c: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(c + ridge * np.trace(c) / len(c) * np.eye(len(c)))
        return vectors @ np.diag(values ** -0.5) @ vectors.T

    wx, wy = inverse_sqrt(x.T @ x / len(x)), inverse_sqrt(y.T @ y / len(y))
    u, s, vt = np.linalg.svd(wx @ (x.T @ y / len(x)) @ wy)
    weights = np.sqrt(np.clip(s[:dim], 0, None))
    return (wx @ u[:, :dim]) * weights, (wy @ vt.T[:, :dim]) * weights


@torch.no_grad()
def fitted_artifact(pairs_dir: Path, directory: Path, seed: int = 0) -> Path:
    table = pq.read_table(pairs_dir).to_pydict()
    captions = table["caption"]
    tokenizer = Tokenizer.train(captions, vocab_size=300, context_length=77, min_frequency=1)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(embed_dim=64, vision=VisionConfig("vit-tiny", 224),
                                    text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size))).eval()
    from biomedclip.inference import Predictor

    predictor = Predictor(model, tokenizer)
    pixels = predictor.pixels([Image.open(io.BytesIO(data)).convert("RGB") for data in table["image"]])
    image_features = model.visual.trunk(pixels).numpy()
    text = model.text
    hidden = text.transformer(input_ids=(ids := predictor.tokens(captions)),
                              attention_mask=(ids != text.pad_token_id).long()).last_hidden_state[:, 0].numpy()
    # Centre both towers' features by shifting the bias of the LayerNorm each ends with.
    model.visual.trunk.norm.bias -= torch.from_numpy(image_features.mean(0))
    text.transformer.encoder.layer[-1].output.LayerNorm.bias -= torch.from_numpy(hidden.mean(0))
    image_head, text_head = _cca(image_features - image_features.mean(0), hidden - hidden.mean(0), dim=64)
    model.visual.head.proj.weight.copy_(torch.from_numpy(image_head.T))
    text.proj[0].weight.copy_(torch.eye(text.proj[0].weight.shape[0]) * GELU_SCALE)
    text.proj[2].weight.copy_(torch.from_numpy(text_head.T) * 2 / GELU_SCALE)
    model.logit_scale.fill_(np.log(50.0))
    return save_artifact(model, tokenizer, directory)


@dataclass
class Answer:
    sent_at: float  # seconds since the rollout began (negative: before it)
    seconds: float
    status: int | None  # None: no HTTP response (connection refused or reset, timeout)
    body: dict | str  # the JSON answer, else the response text or the client's exception


@dataclass
class RolloutRecord:
    answers: list[Answer] = field(default_factory=list)
    rollout_seconds: float = 0.0  # how long `redeploy` took

    @property
    def failures(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.status != 200]

    @property
    def during(self) -> list[Answer]:
        """The answers to requests sent while `redeploy` ran."""
        return [answer for answer in self.answers if 0 <= answer.sent_at < self.rollout_seconds]


def requests_during(redeploy: Callable[[], object], send: Callable[[httpx.Client], httpx.Response], base_url: str,
                    headers: dict | None = None, clients: int = 2, answers_after: int = 4,
                    timeout_s: float = 180.0) -> RolloutRecord:
    """Runs `redeploy()` (e.g. `serve.run` of the rebuilt app under the same name, or `serve deploy`) while `clients`
    threads each keep calling `send(client)` one request after another, and returns every answer.

    The rollout starts once every client has had an answer (so requests are in flight when it begins); the clients
    stop once each has had `answers_after` answers to requests sent after `redeploy` returned, so the last answers
    come from the new version. `redeploy` runs in the calling thread (Ray's cluster utilities want the main one)."""
    answers: list[tuple[float, float, int | None, dict | str]] = []  # (sent, seconds, status, body)
    lock, rolled_out, stop = threading.Lock(), threading.Event(), threading.Event()
    answered = [threading.Event() for _ in range(clients)]
    after = [0] * clients

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers or {}, timeout=timeout_s) as client:
            while not stop.is_set():
                sent, sent_after = time.monotonic(), rolled_out.is_set()
                try:
                    response = send(client)
                    status, body = response.status_code, _body(response)
                except httpx.HTTPError as err:
                    status, body = None, f"{type(err).__name__}: {err}"
                with lock:
                    answers.append((sent, time.monotonic() - sent, status, body))
                    after[index] += sent_after
                    if all(count >= answers_after for count in after):
                        stop.set()
                answered[index].set()

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        if not all(event.wait(timeout_s) for event in answered):
            raise TimeoutError(f"a client had no answer within {timeout_s} s before the rollout")
        began = time.monotonic()
        redeploy()
        ended = time.monotonic()
        rolled_out.set()
        for thread in threads:
            thread.join(timeout_s)
    finally:
        stop.set()
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"clients still waiting for answers {timeout_s} s after the rollout")
    ordered = sorted(answers, key=lambda answer: answer[0])
    return RolloutRecord([Answer(sent - began, *rest) for sent, *rest in ordered], rollout_seconds=ended - began)


def _body(response: httpx.Response) -> dict | str:
    try:
        return response.json()
    except ValueError:
        return response.text
