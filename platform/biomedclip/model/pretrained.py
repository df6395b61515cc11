"""Pretrained towers: a Hugging Face BERT directory for the text encoder (e.g. a download of
microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract) and timm ViT weights for the image trunk.

Both are loaded strictly: names are mapped (a masked-LM checkpoint's `bert.` prefix, TF-era LayerNorm gamma/beta),
the pretraining heads a CLIP tower has no use for (BERT's pooler and `cls.*`, the ViT's classifier) are dropped by
name, and anything else that does not fit is refused with the list of offending names. The projection heads stay
freshly initialised.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from biomedclip.model.checkpoint import CheckpointError, check_state_dict, load_weights, read_state_dict
from biomedclip.model.clip import BiomedCLIP
from biomedclip.model.config import ModelConfig, TextConfig
from biomedclip.model.text_tower import TextTower, bert_config
from biomedclip.model.vision import VisionTower

BERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
BERT_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# BertConfig fields that shape the encoder or its numerics; the preset must agree with the directory on each.
BERT_ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps")
BERT_HEADS = ("pooler.", "cls.")  # BertModel's pooler and the masked-LM / next-sentence heads
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.npz")
TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
TIMM_HEAD = "head."  # the ImageNet classifier; the CLIP trunk pools the class token without one


def read_bert_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"model.text.pretrained: {path} not found (expected a save_pretrained directory)")
    return json.loads(path.read_text())


def check_bert_architecture(directory: str | Path, cfg: TextConfig) -> None:
    """Refuses a BERT directory whose architecture differs from the configured preset, naming each field."""
    theirs, ours = read_bert_config(directory), bert_config(cfg).to_dict()
    different = [f"{key} {theirs.get(key)!r} != {ours[key]!r}" for key in BERT_ARCHITECTURE
                 if theirs.get(key) != ours[key]]
    if different:
        raise CheckpointError(f"model.text.pretrained: {directory}/config.json does not match text.preset "
                              f"{cfg.preset!r} with this tokenizer (directory != model): {'; '.join(different)}")


def read_bert_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The encoder's weights under BertModel's names, pretraining heads dropped."""
    state = {}
    for path in _bert_weight_files(Path(directory)):
        state.update(read_state_dict(path))
    return {_bert_name(name): tensor for name, tensor in state.items()
            if not _bert_name(name).startswith(BERT_HEADS) and not name.endswith("position_ids")}


def _bert_weight_files(directory: Path) -> list[Path]:
    for name in BERT_WEIGHTS:
        if (directory / name).is_file():
            return [directory / name]
    for name in BERT_SHARD_INDEXES:
        if (directory / name).is_file():
            shards = json.loads((directory / name).read_text())["weight_map"].values()
            return sorted({directory / shard for shard in shards})
    raise CheckpointError(f"model.text.pretrained: {directory} holds no weights "
                          f"({', '.join(BERT_WEIGHTS + BERT_SHARD_INDEXES)})")


def _bert_name(name: str) -> str:
    name = name.removeprefix("bert.")
    if ".LayerNorm." in name:  # checkpoints converted from TensorFlow
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name


def load_text_pretrained(tower: TextTower, cfg: TextConfig) -> TextTower:
    check_bert_architecture(cfg.pretrained, cfg)
    state = read_bert_weights(cfg.pretrained)
    check_state_dict(tower.transformer, state, f"model.text.pretrained {cfg.pretrained}")
    tower.transformer.load_state_dict(state)
    return tower


def timm_weights_file(path: str | Path) -> Path:
    """The weights file itself, or the one weights file of a directory (timm's hub layout or a single file)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"model.vision.pretrained: {path} not found")
    known = [path / name for name in TIMM_WEIGHTS if (path / name).is_file()]
    candidates = known or sorted(p for p in path.iterdir() if p.suffix in TIMM_SUFFIXES)
    if len(candidates) != 1:
        raise CheckpointError(f"model.vision.pretrained: {path} holds {len(candidates)} weight files "
                              f"({', '.join(p.name for p in candidates) or 'none'}); name the file")
    return candidates[0]


def load_vision_pretrained(tower: VisionTower, path: str | Path) -> VisionTower:
    """timm ViT weights into the trunk; timm's own filter resamples the position embedding to this image size."""
    weights = timm_weights_file(path)
    if weights.suffix == ".npz":  # big_vision / JAX layout: timm's loader maps and resamples it
        tower.trunk.load_pretrained(str(weights))
        return tower
    state = checkpoint_filter_fn(read_state_dict(weights), tower.trunk)
    state = {name: tensor for name, tensor in state.items() if not name.startswith(TIMM_HEAD)}
    check_state_dict(tower.trunk, state, f"model.vision.pretrained {weights}")
    tower.trunk.load_state_dict(state)
    return tower


def initial_model(cfg: ModelConfig, init_state: dict[str, torch.Tensor] | None = None) -> BiomedCLIP:
    """The model a new run starts from: random, then the configured pretrained towers, then (`train.init_from`)
    a whole trained model's weights, which take precedence."""
    model = BiomedCLIP(cfg)
    if init_state is not None:
        return load_weights(model, init_state)
    if cfg.text.pretrained:
        load_text_pretrained(model.text, cfg.text)
    if cfg.vision.pretrained:
        load_vision_pretrained(model.visual, cfg.vision.pretrained)
    return model
