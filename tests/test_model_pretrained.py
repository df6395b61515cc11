"""Pretrained towers against their oracles: a stand-in PubMedBERT (transformers' BertModel with random weights, saved
with save_pretrained) gives the text tower HF's own [CLS] state and tokens; timm ViT weights load at another image
size with the position embedding resampled; the export of paper.yaml has open_clip's BiomedCLIP layout."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

from biomedclip.config import ConfigError, load_config
from biomedclip.model import CheckpointError, ModelConfig, TextConfig, VisionConfig
from biomedclip.model.checkpoint import read_config, save_checkpoint
from biomedclip.model.pretrained import initial_model
from biomedclip.text import Tokenizer
from biomedclip.train.config import PretrainConfig, check_initialisation
from tests.helpers import load_job, roco_captions, train_tokenizer

REPO = Path(__file__).resolve().parent.parent
PUBMEDBERT_VOCAB = 30522
# The model_cfg of the released BiomedCLIP's open_clip_config.json, its BERT read from a local directory.
BIOMEDCLIP_MODEL_CFG = {
    "embed_dim": 512,
    "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": 224},
    "text_cfg": {"hf_model_pretrained": False, "hf_proj_type": "mlp",
                 "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
}


def save_bert_dir(directory: Path, vocab: list[str], bert: BertConfig, masked_lm: bool = False) -> Path:
    """A Hugging Face BERT directory as save_pretrained writes it: config, weights and a fast tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    BertTokenizerFast.from_pretrained(directory, do_lower_case=True).save_pretrained(directory)
    torch.manual_seed(1)
    (BertForMaskedLM if masked_lm else BertModel)(bert).save_pretrained(directory)
    return directory


def caption_vocab(captions: list[str], size: int | None = None) -> list[str]:
    """WordPiece vocabulary learnt on the captions, padded with [unusedN] entries to `size` (PubMedBERT's shape)."""
    learnt = sorted(train_tokenizer(captions).backend.get_vocab().items(), key=lambda item: item[1])
    tokens = [token for token, _ in learnt]
    return tokens + [f"[unused{i}]" for i in range((size or len(tokens)) - len(tokens))]


@pytest.fixture(scope="module")
def small_bert(realdata, tmp_path_factory) -> Path:
    """bert-tiny's shape (the [CLS] comparison does not need 110M parameters to mean something)."""
    vocab = caption_vocab(roco_captions(realdata))
    bert = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, max_position_embeddings=512)
    return save_bert_dir(tmp_path_factory.mktemp("bert_small"), vocab, bert)


def tiny_text(pretrained: Path, tokenizer: Tokenizer) -> ModelConfig:
    return ModelConfig(embed_dim=32, vision=VisionConfig(preset="vit-tiny"),
                       text=TextConfig(preset="bert-tiny", context_length=256, vocab_size=tokenizer.vocab_size,
                                       pad_token_id=tokenizer.pad_token_id, pretrained=str(pretrained)))


def test_text_tower_cls_state_and_tokens_equal_hugging_faces(small_bert, realdata):
    captions = roco_captions(realdata)
    tokenizer = Tokenizer.load(small_bert, 256)
    reference = BertTokenizerFast.from_pretrained(small_bert)(captions, padding="max_length", truncation=True,
                                                              max_length=256, return_tensors="pt")
    tokens = tokenizer(captions)
    assert torch.equal(tokens, reference["input_ids"])
    unknown = tokenizer.backend.token_to_id("[UNK]")
    assert (tokens[:, 1:5] != unknown).float().mean() > 0.9  # real word pieces, not [UNK]s

    model = initial_model(tiny_text(small_bert, tokenizer)).eval()
    hf = BertModel.from_pretrained(small_bert, add_pooling_layer=False).eval()
    with torch.no_grad():
        ours = model.text.transformer(input_ids=tokens, attention_mask=(tokens != 0).long()).last_hidden_state[:, 0]
        theirs = hf(**reference).last_hidden_state[:, 0]
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_projection_stays_fresh_and_the_checkpoint_records_no_source_path(small_bert, tmp_path):
    tokenizer = Tokenizer.load(small_bert, 256)
    cfg = tiny_text(small_bert, tokenizer)
    torch.manual_seed(0)
    pretrained = initial_model(cfg)
    torch.manual_seed(0)
    random = initial_model(ModelConfig(embed_dim=32, vision=cfg.vision, text=TextConfig(
        preset="bert-tiny", context_length=256, vocab_size=tokenizer.vocab_size)))
    assert torch.equal(pretrained.text.proj[0].weight, random.text.proj[0].weight)
    assert not torch.equal(pretrained.text.transformer.embeddings.word_embeddings.weight,
                           random.text.transformer.embeddings.word_embeddings.weight)
    stored = read_config(save_checkpoint(pretrained, tmp_path / "m.safetensors"))
    assert stored.text.pretrained is None and stored.text.vocab == tokenizer.vocab_size


def test_mismatched_bert_is_refused_with_the_offending_fields_and_names(small_bert, tmp_path):
    tokenizer = Tokenizer.load(small_bert, 256)
    cfg = tiny_text(small_bert, tokenizer)
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=999))
    with pytest.raises(CheckpointError, match=r"config.json does not match .*vocab_size \d+ != 999"):
        initial_model(cfg)
    # Same config, weights of another shape: every mis-shaped name is listed, nothing is skipped.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((small_bert / "config.json").read_text())
    bert = BertModel.from_pretrained(small_bert)
    state = {name: tensor for name, tensor in bert.state_dict().items() if "layer.1." not in name}
    state["embeddings.LayerNorm.weight"] = torch.ones(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(16\): encoder.layer.1.*shape .*: "
                                              r"embeddings.LayerNorm.weight \(3,\) != \(64,\)"):
        initial_model(tiny_text(broken, tokenizer))


def test_vision_weights_from_timm_resample_to_336(tmp_path):
    torch.manual_seed(0)
    trunk = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=64, depth=2, num_heads=2)
    save_file(trunk.state_dict(), str(tmp_path / "model.safetensors"))  # with its ImageNet head, as timm publishes
    torch.save(trunk.state_dict(), tmp_path / "vit.pth")
    cfg = ModelConfig(embed_dim=32, vision=VisionConfig(preset="vit-tiny", image_size=336, pretrained=str(tmp_path)),
                      text=TextConfig(preset="bert-tiny", context_length=77, vocab_size=100))
    model = initial_model(cfg)
    ours = model.visual.trunk.state_dict()
    assert ours["pos_embed"].shape == (1, 1 + 21 * 21, 64)
    expected = resample_abs_pos_embed(trunk.pos_embed.detach(), new_size=(21, 21), num_prefix_tokens=1)
    assert torch.allclose(ours["pos_embed"], expected)
    for name, tensor in trunk.state_dict().items():
        if name not in ("pos_embed", "head.weight", "head.bias"):
            assert torch.equal(ours[name], tensor), name
    from_pth = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, pretrained=str(tmp_path / "vit.pth")))
    assert torch.equal(initial_model(from_pth).visual.trunk.blocks[1].mlp.fc2.weight, trunk.blocks[1].mlp.fc2.weight)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "other.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds 2 weight files"):
        initial_model(cfg)


def test_paper_config_refuses_to_start_without_pubmedbert(capsys):
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/paper.yaml")
    with pytest.raises(ConfigError, match="model.text.pretrained: .*PubMedBERT.*paper_scratch.yaml"):
        check_initialisation(cfg)
    check_initialisation(load_config(PretrainConfig, REPO / "jobs/configs/paper.yaml",
                                     ["model.text.pretrained=/models/BiomedBERT"]))
    check_initialisation(load_config(PretrainConfig, REPO / "jobs/configs/paper_scratch.yaml"))
    assert load_job("export_open_clip").JOB.main(["--config", str(REPO / "jobs/configs/paper.yaml"),
                                                  "--output", "unused"]) == 2
    assert "PubMedBERT" in capsys.readouterr().err


@pytest.mark.slow
def test_paper_export_with_pubmedbert_has_biomedclips_exact_layout(realdata, tmp_path):
    """The stand-in at the real shape: BertForMaskedLM (as PubMedBERT is published) with a 30522-entry vocabulary."""
    import open_clip

    bert_dir = save_bert_dir(tmp_path / "pubmedbert", caption_vocab(roco_captions(realdata), PUBMEDBERT_VOCAB),
                             BertConfig(), masked_lm=True)
    export = load_job("export_open_clip").JOB(["--config", str(REPO / "jobs/configs/paper.yaml"), "--output",
                                                str(tmp_path / "export"), "--set", f"model.text.pretrained={bert_dir}"])
    model_cfg = json.loads(json.dumps(BIOMEDCLIP_MODEL_CFG))
    model_cfg["text_cfg"].update(hf_model_name=str(bert_dir), hf_tokenizer_name=str(bert_dir))
    reference = open_clip.CustomTextCLIP(**model_cfg).state_dict()
    with safe_open(str(export / "open_clip_model.safetensors"), framework="pt") as handle:
        names = handle.keys()  # safe_open is not iterable itself
        exported = {name: tuple(handle.get_slice(name).get_shape()) for name in names}
        word_embeddings = handle.get_tensor("text.transformer.embeddings.word_embeddings.weight")
    assert exported == {name: tuple(tensor.shape) for name, tensor in reference.items()}
    assert exported["text.transformer.embeddings.word_embeddings.weight"] == (PUBMEDBERT_VOCAB, 768)
    bert = BertForMaskedLM.from_pretrained(bert_dir)
    assert torch.equal(word_embeddings, bert.bert.embeddings.word_embeddings.weight)  # the masked-LM `bert.` prefix
    assert str(tmp_path) not in "".join(p.read_text() for p in export.iterdir() if p.suffix in (".json", ".md"))
    assert np.array_equal(Tokenizer.load(export, 256).encode(["Chest CT."]),
                          Tokenizer.load(bert_dir, 256).encode(["Chest CT."]))
