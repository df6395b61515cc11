"""The one inference path (`biomedclip.inference.Predictor`) against the model's own ops, computed by hand."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from biomedclip.inference import Predictor, rank_labels
from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model
from biomedclip.model.artifact import save_artifact
from biomedclip.model.transforms import eval_transform
from biomedclip.text import Tokenizer
from tests.test_serve_units import CAPTIONS, jpeg_bytes


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    tokenizer = Tokenizer.train(CAPTIONS, vocab_size=300, context_length=77, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=64, vision=VisionConfig("vit-tiny", 224),
                                    text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size)))
    directory = save_artifact(model, tokenizer, tmp_path_factory.mktemp("artifact") / "model")
    return directory, model.eval(), tokenizer


def test_zero_shot_is_softmax_of_scaled_cosine_and_ranking_sorts_it(tiny_artifact):
    directory, model, _ = tiny_artifact
    predictor = Predictor.load(directory)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 64))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    labels = rng.normal(size=(4, 64))
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    probabilities = predictor.zero_shot(images.astype(np.float32), labels.astype(np.float32))
    scale = float(model.logit_scale.detach().exp())
    for image, row in zip(images, probabilities):
        logits = [scale * float(np.dot(label, image)) for label in labels]
        expected = np.exp(logits) / np.sum(np.exp(logits))
        np.testing.assert_allclose(row, expected, rtol=1e-5)
        ranked = rank_labels(row, ["w", "x", "y", "z"])
        assert [r["label"] for r in ranked] == [("w", "x", "y", "z")[i] for i in np.argsort(-expected)]


def test_label_features_are_prompt_ensembles_and_images_use_the_eval_transform(tiny_artifact):
    directory, model, tokenizer = tiny_artifact
    predictor = Predictor.load(directory)
    labels, templates = ["chest x-ray", "brain mri"], ["a photo of {}", "{} scan"]
    features = predictor.label_features(labels, templates)
    with torch.no_grad():
        for row, label in zip(features, labels):
            prompts = torch.stack([model.encode_text(tokenizer([t.replace("{}", label)]))[0] for t in templates])
            mean = prompts.mean(0)
            np.testing.assert_allclose(row, (mean / mean.norm()).numpy(), atol=1e-5)
    image = Image.open(io.BytesIO(jpeg_bytes((300, 240)))).convert("RGB")
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(eval_transform(224)(image))[None])[0].numpy()
    np.testing.assert_allclose(predictor.encode_images([image])[0], expected, atol=1e-5)
    assert predictor.logit_scale == pytest.approx(float(model.logit_scale.exp()))


def test_templates_with_other_braces_are_filled_literally(tiny_artifact):
    predictor = Predictor.load(tiny_artifact[0])
    literal = predictor.label_features(["x-ray"], ["{a} {} scan"])
    by_hand = predictor.encode_texts(["{a} x-ray scan"])
    np.testing.assert_allclose(literal, by_hand / np.linalg.norm(by_hand, axis=1, keepdims=True), atol=1e-6)
