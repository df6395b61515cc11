"""Export as an open_clip local model directory: `open_clip.create_model_and_transforms('local-dir:DIR')` loads it.

The directory holds open_clip_config.json (model_cfg + preprocess_cfg), the weights, the BERT config, the tokenizer
files and a model card (README.md with the Hugging Face card header). It records no path of the machine that wrote
it, so it can be moved or uploaded. open_clip finds the tokenizer inside a `local-dir:` by itself, but builds the
BERT from `hf_model_name` through transformers, which resolves it against the working directory: the export names
itself ".", so open_clip loads it with the directory as working directory (`local-dir:.`), and our
`load_artifact(DIR)` loads it from anywhere.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from biomedclip.model.clip import BiomedCLIP, count_parameters
from biomedclip.model.text_tower import bert_config
from biomedclip.model.timm_names import timm_model_name
from biomedclip.model.transforms import OPENAI_MEAN, OPENAI_STD
from biomedclip.text import Tokenizer

HF_MODEL_NAME = "."  # the export directory itself, see above
CARD_FILE = "README.md"
WEIGHTS_FILE = "open_clip_model.safetensors"


def open_clip_config(model: BiomedCLIP) -> dict:
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
                "hf_model_name": HF_MODEL_NAME,
                "hf_tokenizer_name": HF_MODEL_NAME,
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


def export_open_clip(model: BiomedCLIP, tokenizer: Tokenizer, directory: str | Path, facts: dict | None = None) -> Path:
    """`facts` fill the model card: {"data": str, "recipe": {name: value}, "metrics": {name: float}}."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    bert_config(model.config.text).save_pretrained(directory)
    tokenizer.save(directory)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / "open_clip_config.json").write_text(json.dumps(open_clip_config(model), indent=2))
    (directory / CARD_FILE).write_text(model_card(model, facts or {}))
    return directory


CARD_HEADER = """---
library_name: open_clip
pipeline_tag: zero-shot-image-classification
language: en
license: other  # set the license your training data allows
tags:
- clip
- biomedclip
- biomedical
- image-text
---
"""
CARD_USE = """## Intended use
Research on biomedical image-text retrieval, zero-shot classification and as a feature extractor. Not a medical
device: not for diagnosis or any clinical decision.

## How to load
```python
import open_clip  # run from this directory: the BERT config is found relative to the working directory
model, _, preprocess = open_clip.create_model_and_transforms('local-dir:.')
tokenizer = open_clip.get_tokenizer('local-dir:.')
# or, from anywhere, with the biomedclip library:
# from biomedclip.model.artifact import load_artifact; model, tokenizer = load_artifact('PATH/TO/THIS/DIR')
```
"""


def model_card(model: BiomedCLIP, facts: dict) -> str:
    """A Hugging Face model card: YAML header, then architecture, data, recipe, evaluation and intended use."""
    cfg = model.config
    trunk = timm_model_name(cfg.vision.preset, cfg.vision.image_size)
    architecture = [
        (f"- image tower: {cfg.vision.preset} (timm `{trunk}`), patch 16 at {cfg.vision.image_size} px, "
         f"{count_parameters(model.visual):,} parameters"),
        (f"- text tower: {cfg.text.preset} BERT, context {cfg.text.context_length}, vocabulary {cfg.text.vocab}, "
         f"[CLS] pooling + MLP projection, {count_parameters(model.text):,} parameters"),
        f"- shared embedding: {cfg.embed_dim} dimensions, logit scale {model.logit_scale.exp().item():.2f}",
    ]
    recipe = [f"- {key}: {value}" for key, value in (facts.get("recipe") or {}).items()] or ["Not recorded."]
    metrics = facts.get("metrics") or {}
    evaluation = (["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in metrics.items())]
                  if metrics else ["No evaluation figures were recorded with this export."])
    sections = [("Architecture", architecture), ("Training data", [facts.get("data") or "Not recorded."]),
                ("Training recipe", recipe), ("Evaluation", evaluation)]
    body = "".join(f"## {title}\n" + "\n".join(lines) + "\n\n" for title, lines in sections)
    return f"{CARD_HEADER}\n# BiomedCLIP-style CLIP model\n\n{body}{CARD_USE}"
