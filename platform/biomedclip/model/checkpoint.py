"""Checkpoint I/O: safetensors with the model config in its metadata; open_clip .bin/.pt checkpoints load too.

State-dict names are open_clip's for BiomedCLIP, so weights move both ways without renaming. A checkpoint trained
at one image size loads at another: the position embedding is resampled to the new patch grid.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

from biomedclip.config import ConfigError, from_dict
from biomedclip.model.clip import BiomedCLIP
from biomedclip.model.config import PATCH_SIZE, ModelConfig, architecture

CONFIG_METADATA_KEY = "biomedclip_model_config"
POS_EMBED_KEY = "visual.trunk.pos_embed"
WORD_EMBEDDINGS_KEY = "text.transformer.embeddings.word_embeddings.weight"
# Buffers that some transformers versions saved and others rebuild; harmless to drop.
REBUILT_BUFFERS = ("text.transformer.embeddings.position_ids",)


class CheckpointError(ValueError):
    pass


def save_checkpoint(model: BiomedCLIP, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(asdict(architecture(model.config)))})
    return path


def read_config(path: str | Path) -> ModelConfig | None:
    """The model config stored in one of our safetensors checkpoints, or None for a foreign checkpoint."""
    if Path(path).suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(CONFIG_METADATA_KEY)
    return from_dict(ModelConfig, json.loads(raw)) if raw else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads safetensors, or a torch .bin/.pt (open_clip layout, optionally wrapped in 'state_dict' / 'module.')."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of many kinds: report which file
        raise CheckpointError(f"{path}: not a loadable weights-only torch checkpoint ({err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {name.removeprefix("module."): tensor for name, tensor in state.items()}


def load_weights(model: BiomedCLIP, state: dict[str, torch.Tensor]) -> BiomedCLIP:
    """Loads open_clip-named weights strictly, resampling the position embedding when the image size differs."""
    state = {name: tensor for name, tensor in state.items() if name not in REBUILT_BUFFERS}
    target = model.visual.trunk.pos_embed
    if POS_EMBED_KEY in state and state[POS_EMBED_KEY].shape != target.shape:
        grid = model.config.vision.image_size // PATCH_SIZE
        state[POS_EMBED_KEY] = resample_abs_pos_embed(
            state[POS_EMBED_KEY], new_size=(grid, grid), num_prefix_tokens=model.visual.trunk.num_prefix_tokens)
    check_state_dict(model, state, "checkpoint")
    model.load_state_dict(state)
    return model


def check_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuses weights that do not fit `module` exactly, listing every missing, unexpected and mis-shaped name."""
    expected = module.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    mis_shaped = [f"{name} {tuple(state[name].shape)} != {tuple(tensor.shape)}"
                  for name, tensor in expected.items() if name in state and state[name].shape != tensor.shape]
    problems = [(what, names) for what, names in (("missing", missing), ("unexpected", unexpected),
                                                  ("shape (theirs != ours)", mis_shaped)) if names]
    if problems:
        listed = "; ".join(f"{what} ({len(names)}): {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
                           for what, names in problems)
        raise CheckpointError(f"{source} does not match the model: {listed}")


def check_vocabulary(state: dict[str, torch.Tensor], tokenizer_size: int, source: str) -> None:
    """Refuses weights trained with another vocabulary than the run's tokenizer (a silently corrupted model
    otherwise: every token id would look up another token's embedding)."""
    rows = state.get(WORD_EMBEDDINGS_KEY)
    if rows is not None and rows.shape[0] != tokenizer_size:
        raise ConfigError(f"{source}: its text embeddings have {rows.shape[0]} rows but the run's tokenizer has "
                          f"{tokenizer_size} tokens; use the tokenizer that model was trained with")


def load_model(path: str | Path, config: ModelConfig | None = None) -> BiomedCLIP:
    """Builds the model from `config` (or the config stored in the checkpoint) and loads the weights. The model
    comes in eval mode (patch dropout off): training calls `.train()` itself."""
    config = config or read_config(path)
    if config is None:
        raise CheckpointError(f"{path}: the checkpoint carries no model config; pass one")
    return load_weights(BiomedCLIP(config), read_state_dict(path)).eval()
