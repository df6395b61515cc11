"""Export as an open_clip local model directory: `open_clip.create_model_and_transforms('local-dir:DIR')` loads it.

The directory holds open_clip_config.json (model_cfg + preprocess_cfg), the weights, the BERT config and the
tokenizer files. open_clip resolves the text tower by `hf_model_name`, so it records the directory's absolute path;
rewrite `hf_model_name`/`hf_tokenizer_name` if the directory moves.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from biomedclip.model.clip import BiomedCLIP
from biomedclip.model.text_tower import bert_config
from biomedclip.model.timm_names import timm_model_name
from biomedclip.model.transforms import OPENAI_MEAN, OPENAI_STD
from biomedclip.text import Tokenizer

WEIGHTS_FILE = "open_clip_model.safetensors"


def open_clip_config(model: BiomedCLIP, directory: Path) -> dict:
    cfg = model.config
    return {
        "model_cfg": {
            "embed_dim": cfg.embed_dim,
            "vision_cfg": {
                "timm_model_name": timm_model_name(cfg.vision.preset, cfg.vision.image_size),
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": cfg.vision.image_size,
            },
            "text_cfg": {
                "hf_model_name": str(directory),
                "hf_tokenizer_name": str(directory),
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": cfg.text.context_length,
            },
        },
        "preprocess_cfg": {
            "image_size": cfg.vision.image_size,
            "mean": list(OPENAI_MEAN),
            "std": list(OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def export_open_clip(model: BiomedCLIP, tokenizer: Tokenizer, directory: str | Path) -> Path:
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    bert_config(model.config.text).save_pretrained(directory)
    tokenizer.save(directory)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / "open_clip_config.json").write_text(json.dumps(open_clip_config(model, directory), indent=2))
    return directory
