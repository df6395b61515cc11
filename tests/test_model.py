"""Model behaviour: presets, image-size transfer, patch dropout, gradient checkpointing, parameter counts."""
import open_clip
import pytest
import torch

from biomedclip.model import ModelConfig, build_model, count_parameters, load_model, save_checkpoint
from biomedclip.model.text_tower import bert_config
from tests.helpers import tiny_config, train_tokenizer

CAPTIONS = ["axial ct of the chest", "h&e stain of lung tissue", "fluorescent green cells", "a bar chart"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CAPTIONS * 5)


def test_checkpoint_loads_at_another_image_size(tokenizer, tmp_path):
    torch.manual_seed(0)
    small = build_model(tiny_config(tokenizer, image_size=224)).eval()
    path = save_checkpoint(small, tmp_path / "m.safetensors")
    large = load_model(path, tiny_config(tokenizer, image_size=336)).eval()
    assert large.visual.trunk.pos_embed.shape == (1, 1 + (336 // 16) ** 2, 64)
    assert torch.equal(large.visual.trunk.pos_embed[:, 0], small.visual.trunk.pos_embed[:, 0])  # class token kept
    assert large.encode_image(torch.randn(1, 3, 336, 336)).shape == (1, 32)
    tokens = tokenizer(CAPTIONS)
    assert torch.equal(large.encode_text(tokens), small.encode_text(tokens))


def test_patch_dropout_only_in_training(tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_config(tokenizer, patch_dropout=0.5))
    pixels = torch.randn(2, 3, 224, 224)
    model.eval()
    reference = model.encode_image(pixels)
    model.visual.set_patch_dropout(0.0)
    assert torch.equal(model.encode_image(pixels), reference)
    model.train()
    assert torch.allclose(model.encode_image(pixels), reference, atol=1e-6)  # ViT has no other dropout
    model.visual.set_patch_dropout(0.5)
    assert model.visual.patch_dropout == 0.5
    assert not torch.allclose(model.encode_image(pixels), reference, atol=1e-3)


def test_gradient_checkpointing_keeps_gradients(tokenizer):
    torch.manual_seed(0)
    plain = build_model(tiny_config(tokenizer)).eval()
    checkpointed = build_model(tiny_config(tokenizer)).eval()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    checkpointed.train()
    plain.train()
    for module in (plain, checkpointed):  # BERT's dropout off so both compute the same function
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    pixels, tokens = torch.randn(2, 3, 224, 224), tokenizer(CAPTIONS[:2])
    for module in (plain, checkpointed):
        out = module(pixels, tokens)
        (out["image_features"] @ out["text_features"].T).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if name != "logit_scale":  # unused by this objective
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_logit_scale_init_and_clamp(tokenizer):
    model = build_model(tiny_config(tokenizer))
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(100.0)


@pytest.mark.slow
def test_paper_model_parameter_counts_equal_open_clip(tmp_path):
    cfg = ModelConfig()  # ViT-B/16 224, PubMedBERT-base, context 256, embed 512
    ours = build_model(cfg)
    bert_config(cfg.text).save_pretrained(tmp_path)
    theirs = open_clip.CustomTextCLIP(
        embed_dim=512,
        vision_cfg={"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                    "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        text_cfg={"hf_model_name": str(tmp_path), "hf_model_pretrained": False, "hf_proj_type": "mlp",
                  "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256})
    counts = {
        "vision": (count_parameters(ours.visual), count_parameters(theirs.visual)),
        "text": (count_parameters(ours.text), count_parameters(theirs.text)),
        "total": (count_parameters(ours), count_parameters(theirs)),
    }
    print("paper-model parameters (ours, open_clip):", counts)
    assert all(a == b for a, b in counts.values())
    assert 85e6 < counts["vision"][0] < 88e6 and 108e6 < counts["text"][0] < 111e6


def test_loaded_model_is_deterministic_until_training_asks_for_patch_dropout(tokenizer, tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(build_model(tiny_config(tokenizer, patch_dropout=0.5)), tmp_path / "m.safetensors")
    model = load_model(path)
    pixels = torch.randn(2, 3, 224, 224)
    assert torch.equal(model.encode_image(pixels), model.encode_image(pixels))
    model.visual.set_patch_dropout(0.25)  # a new rate on an eval-mode model stays off until .train()
    assert torch.equal(model.encode_image(pixels), model.encode_image(pixels))
    model.train()
    assert not torch.allclose(model.encode_image(pixels), model.encode_image(pixels), atol=1e-3)
