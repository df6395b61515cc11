"""The fusion model, its artifact (save/load) and the predictor contract that the Serve endpoint calls."""
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from biomedclip.model.artifact import load_artifact
from biomedclip.model.checkpoint import CheckpointError
from biomedclip.train.optim import build_optimizer
from biomedclip.vqa import AnswerVocab, FusionConfig, VQAModel, load_vqa_predictor, save_vqa_artifact
from biomedclip.vqa.artifact import load_vqa_artifact
from biomedclip.vqa.model import CoAttentionFusion
from biomedclip.vqa.train import VQAOptimConfig
from tests.vqa_helpers import tiny_encoder, tiny_fusion, vqa_rad_dir, vqa_rad_public

VOCAB = AnswerVocab(["yes", "no", "axial", "2"])


@pytest.fixture(scope="module")
def encoder(realdata):
    return tiny_encoder(realdata)


@pytest.fixture(scope="module")
def samples(realdata):
    records = list(vqa_rad_public(realdata))[:6]
    images = [Image.open(vqa_rad_dir(realdata) / "images" / r["image_name"]).convert("RGB") for r in records]
    return images, [r["question"] for r in records]


def _vqa_model(encoder, seed=1):
    model, _ = encoder
    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    return VQAModel(fresh, tiny_fusion(), len(VOCAB)).eval()


def test_padded_question_tokens_do_not_reach_the_fusion_output():
    torch.manual_seed(0)
    fusion = CoAttentionFusion(FusionConfig(width=16, layers=2, heads=2, dropout=0.0)).eval()
    image, text = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[:, 4:] = True
    changed_pad, changed_word = text.clone(), text.clone()
    changed_pad[:, 5] = 10 * torch.randn(2, 16)  # random, not a constant shift that LayerNorm would undo
    changed_word[:, 2] = 10 * torch.randn(2, 16)
    reference = fusion(image, text, padding)
    assert torch.allclose(fusion(image, changed_pad, padding), reference, atol=1e-6)
    assert not torch.allclose(fusion(image, changed_word, padding), reference, atol=1e-3)


def test_forward_and_gradients_with_trainable_and_frozen_encoders(encoder, samples):
    model = _vqa_model(encoder).train()
    tokenizer = encoder[1]
    pixels = torch.randn(3, 3, 224, 224)
    logits = model(pixels, tokenizer(samples[1][:3]))
    assert logits.shape == (3, len(VOCAB))
    logits.sum().backward()
    trunk_grad = model.encoder.visual.trunk.blocks[0].attn.qkv.weight.grad
    assert trunk_grad is not None and trunk_grad.abs().sum() > 0
    assert model.encoder.visual.patch_dropout == 0.0
    assert not any(p.requires_grad for n, p in model.encoder.named_parameters()
                   if n.startswith(("visual.head.", "text.proj.", "logit_scale")))
    groups = build_optimizer(model, VQAOptimConfig(lr=1e-3, module_lrs={"encoder": 1e-5})).param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.01), (1e-3, 0.0), (1e-5, 0.01), (1e-5, 0.0)]
    encoder_ids = {id(p) for p in model.encoder_parameters()}
    assert {id(p) for g in groups[2:] for p in g["params"]} == encoder_ids
    assert {id(p) for g in groups[:2] for p in g["params"]} == {id(p) for p in model.head_parameters()}

    frozen = _vqa_model(encoder)
    frozen.freeze_encoders()
    frozen(pixels, tokenizer(samples[1][:3])).sum().backward()
    assert all(p.grad is None for p in frozen.encoder.parameters())
    assert all(p.grad is not None for p in frozen.classifier.parameters())
    assert [g["lr"] for g in build_optimizer(frozen, VQAOptimConfig()).param_groups] == [1e-4, 1e-4]


def test_artifact_round_trip_gives_identical_predictions(encoder, samples, tmp_path):
    model, tokenizer = _vqa_model(encoder), encoder[1]
    directory = save_vqa_artifact(model, tokenizer, VOCAB, tmp_path / "vqa")
    assert sorted(p.name for p in directory.iterdir()) == ["answers.json", "encoder", "head.safetensors",
                                                           "vqa_config.json"]
    assert not any(name.startswith("encoder.") for name in load_file(directory / "head.safetensors"))
    core_encoder, _ = load_artifact(directory / "encoder")  # the core format, open_clip names
    assert all(torch.equal(v, core_encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())

    loaded, _, vocab = load_vqa_artifact(directory)
    assert vocab.answers == VOCAB.answers
    images, questions = samples
    pixels = load_vqa_predictor(directory).inputs.pixels(images)
    with torch.no_grad():
        assert torch.equal(model(pixels, tokenizer(questions)), loaded(pixels, tokenizer(questions)))


def test_predictor_contract_and_answer_type_rule(encoder, samples, tmp_path):
    model = _vqa_model(encoder)
    final = model.classifier[-1]
    torch.nn.init.zeros_(final.weight)
    with torch.no_grad():
        final.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))  # always "axial"
    predictor = load_vqa_predictor(save_vqa_artifact(model, encoder[1], VOCAB, tmp_path / "vqa"))
    images, questions = samples
    out = predictor.predict(images, questions)
    assert len(out) == len(images) and all(set(o) == {"answer", "confidence", "answer_type"} for o in out)
    expected_confidence = torch.softmax(final.bias, 0)[2].item()
    assert all(o["answer"] == "axial" and o["answer_type"] == "open" for o in out)
    assert all(o["confidence"] == pytest.approx(expected_confidence, rel=1e-5) for o in out)

    with torch.no_grad():
        final.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))  # always "no"
    predictor = load_vqa_predictor(save_vqa_artifact(model, encoder[1], VOCAB, tmp_path / "vqa2"))
    assert predictor.predict(images[:1], questions[:1])[0]["answer_type"] == "closed"
    assert predictor.predict([], []) == []
    with pytest.raises(ValueError, match="questions"):
        predictor.predict(images[:2], questions[:1])
    with pytest.raises(ValueError, match="non-empty"):
        predictor.predict(images[:1], ["  "])


def test_broken_artifacts_are_refused_with_the_file_named(encoder, tmp_path):
    directory = save_vqa_artifact(_vqa_model(encoder), encoder[1], VOCAB, tmp_path / "vqa")
    AnswerVocab(["yes"]).save(directory / "answers.json")
    with pytest.raises(CheckpointError, match="answers.json"):
        load_vqa_artifact(directory)
    (directory / "head.safetensors").unlink()
    with pytest.raises(CheckpointError, match="head.safetensors missing"):
        load_vqa_artifact(directory)
    with pytest.raises(ValueError, match="vocabulary"):
        save_vqa_artifact(_vqa_model(encoder), encoder[1], AnswerVocab(["yes"]), tmp_path / "other")


def test_dynamic_padding_leaves_the_answer_logits_unchanged(encoder, samples):
    """The question stream is cut to the longest question before BERT and the fusion; the logits do not move."""
    model, tokenizer = _vqa_model(encoder), encoder[1]
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer(samples[1][:4])
    with torch.no_grad():
        dynamic = model(pixels, tokens)
        model.encoder.text.dynamic_padding = False
        full = model(pixels, tokens)
    assert (tokens[:, 32:] == tokenizer.pad_token_id).all()  # the questions are short: the cut is real
    assert (dynamic - full).abs().max().item() < 1e-5
