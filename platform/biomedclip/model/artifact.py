"""The model artifact every job and the server load the same way: a directory with weights and tokenizer.

Layout written by `save_artifact`: `model.safetensors` (config in its metadata) and `tokenizer/`. `load_artifact`
also takes an open_clip BiomedCLIP directory (open_clip_config.json + weights + tokenizer files), e.g. a downloaded
`microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224` or one written by `export_open_clip`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from biomedclip.config import from_dict
from biomedclip.model.checkpoint import CheckpointError, load_model, load_weights, read_state_dict, save_checkpoint
from biomedclip.model.clip import BiomedCLIP
from biomedclip.model.config import TEXT_PRESETS, ModelConfig
from biomedclip.model.timm_names import preset_for_timm_name
from biomedclip.text import Tokenizer

WEIGHTS = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")


def save_artifact(model: BiomedCLIP, tokenizer: Tokenizer, directory: str | Path) -> Path:
    directory = Path(directory)
    save_checkpoint(model, directory / WEIGHTS)
    tokenizer.save(directory / TOKENIZER_DIR)
    return directory


def load_artifact(directory: str | Path) -> tuple[BiomedCLIP, Tokenizer]:
    """Loads (model in eval mode, tokenizer) from one of our artifacts or an open_clip BiomedCLIP directory."""
    directory = Path(directory)
    if (directory / WEIGHTS).is_file():
        model = load_model(directory / WEIGHTS)
        tokenizer = Tokenizer.load(directory / TOKENIZER_DIR, model.config.text.context_length)
    elif (directory / OPEN_CLIP_CONFIG).is_file():
        model, tokenizer = _load_open_clip_dir(directory)
    else:
        raise CheckpointError(f"{directory}: neither {WEIGHTS} nor {OPEN_CLIP_CONFIG} found")
    return model.eval(), tokenizer


def artifact_fingerprint(directory: str | Path) -> str:
    """sha256 of the artifact's weights file: names the model that made a set of embeddings (a search index)."""
    directory = Path(directory)
    candidates = [directory / WEIGHTS, *(directory / name for name in OPEN_CLIP_WEIGHTS)]
    weights = next((path for path in candidates if path.is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory}: no weights file ({WEIGHTS} or {', '.join(OPEN_CLIP_WEIGHTS)})")
    digest = hashlib.sha256()
    with weights.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _load_open_clip_dir(directory: Path) -> tuple[BiomedCLIP, Tokenizer]:
    model_cfg = json.loads((directory / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    config = model_config_from_open_clip(model_cfg, directory)
    weights = next((directory / name for name in OPEN_CLIP_WEIGHTS if (directory / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory}: no open_clip weights ({', '.join(OPEN_CLIP_WEIGHTS)})")
    model = load_weights(BiomedCLIP(config), read_state_dict(weights))
    return model, Tokenizer.load(directory, config.text.context_length)


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def weights_of(path: str | Path) -> Path:
    """The weights file of an artifact directory, an open_clip directory (export or hub snapshot), or the file."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = [path / WEIGHTS, *(path / name for name in OPEN_CLIP_WEIGHTS)]
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise CheckpointError(f"{path}: no model weights ({', '.join(c.name for c in candidates)})")
    return found


def tokenizer_dir_of(path: str | Path) -> Path | None:
    """Where the tokenizer of a model directory lives (`tokenizer/` of an artifact, the open_clip directory itself),
    or None when it carries none."""
    path = Path(path)
    for directory in (path / TOKENIZER_DIR, path):
        if directory.is_dir() and any((directory / name).is_file() for name in TOKENIZER_FILES):
            return directory
    return None


def model_config_from_open_clip(model_cfg: dict, directory: Path) -> ModelConfig:
    """Maps an open_clip BiomedCLIP model_cfg (timm trunk + HF BERT) onto our presets."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    bert = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    shape = (bert.get("hidden_size", 768), bert.get("num_hidden_layers", 12))
    preset = next((name for name, dims in TEXT_PRESETS.items() if dims[:2] == shape), None)
    if preset is None:
        raise CheckpointError(f"{directory}/config.json: no text preset has (width, layers) = {shape}")
    return from_dict(ModelConfig, {
        "embed_dim": model_cfg["embed_dim"],
        "vision": {"preset": preset_for_timm_name(vision["timm_model_name"]),
                   "image_size": vision.get("image_size", 224)},
        "text": {"preset": preset, "context_length": text.get("context_length", 256),
                 "vocab_size": bert.get("vocab_size"), "pad_token_id": bert.get("pad_token_id", 0)},
    })

