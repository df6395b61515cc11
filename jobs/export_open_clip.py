"""Export a BiomedCLIP model in open_clip's local-dir layout (`open_clip.create_model_and_transforms('local-dir:DIR')`).

    python jobs/export_open_clip.py --config jobs/configs/tiny.yaml [--checkpoint CKPT] --output DIR [--set k=v ...]

CKPT is a model artifact directory (model.safetensors + tokenizer/, e.g. a pretraining checkpoint or its `final/`)
or a bare .safetensors file. Without a checkpoint the model is built from the config's `model:` section: its towers
from `model.text.pretrained` / `model.vision.pretrained` when given (the BERT directory's tokenizer then fixes the
vocabulary), else randomly initialised. Without any tokenizer (no artifact, no pretrained BERT) a small vocabulary is
trained on a few built-in captions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biomedclip.config import ConfigError, load_config
from biomedclip.model import CheckpointError, load_model
from biomedclip.model.artifact import load_artifact
from biomedclip.model.export import export_open_clip
from biomedclip.model.pretrained import initial_model
from biomedclip.text import Tokenizer, TokenizerError
from biomedclip.train.config import PretrainConfig, check_initialisation

BUILT_IN_CAPTIONS = [
    "Chest radiograph showing a right lower lobe consolidation.",
    "Axial CT of the abdomen with contrast demonstrating a hepatic lesion.",
    "Histopathology section stained with hematoxylin and eosin at high magnification.",
    "Brain MRI T2 weighted image with a hyperintense lesion in the left temporal lobe.",
    "Ultrasound of the thyroid gland showing a hypoechoic nodule.",
    "Kaplan-Meier survival curves of the two treatment groups.",
] * 4


def built_in_tokenizer(context_length: int) -> Tokenizer:
    return Tokenizer.train(BUILT_IN_CAPTIONS, vocab_size=512, context_length=context_length, min_frequency=1)


def load(cfg: PretrainConfig, checkpoint: Path | None):
    """(model, tokenizer, description of where each came from)."""
    if checkpoint is not None and checkpoint.is_dir():
        model, tokenizer = load_artifact(checkpoint)
        return model, tokenizer, f"model and tokenizer from {checkpoint}"
    text = cfg.model.text
    if checkpoint is None and text.pretrained:
        tokenizer = Tokenizer.load(text.pretrained, text.context_length)
        text.vocab_size, text.pad_token_id = tokenizer.vocab_size, tokenizer.pad_token_id
        return initial_model(cfg.model), tokenizer, f"model and tokenizer initialised from {text.pretrained}"
    tokenizer = built_in_tokenizer(text.context_length)
    if checkpoint is not None:
        model = load_model(checkpoint)  # a bare .safetensors carries its config and vocabulary size
        return model, tokenizer, (f"model from {checkpoint}; NO tokenizer in a bare weights file: a "
                                  f"{tokenizer.vocab_size}-token vocabulary trained on built-in captions stands in")
    cfg.model.text.vocab_size, cfg.model.text.pad_token_id = tokenizer.vocab_size, tokenizer.pad_token_id
    return initial_model(cfg.model), tokenizer, (f"randomly initialised model; tokenizer trained on built-in captions "
                                               f"({tokenizer.vocab_size} tokens)")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config whose model: section builds the model")
    parser.add_argument("--checkpoint", type=Path, default=None, help="artifact directory or .safetensors file")
    parser.add_argument("--output", type=Path, required=True, help="directory to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.text.pretrained=DIR (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
        if args.checkpoint is None:
            check_initialisation(cfg)
        model, tokenizer, source = load(cfg, args.checkpoint)
    except (ConfigError, CheckpointError, TokenizerError) as err:
        sys.exit(f"error: {err}")
    print(source)
    if args.checkpoint is not None and args.checkpoint.is_file() and model.config.text.vocab != tokenizer.vocab_size:
        print(f"warning: the model's vocabulary ({model.config.text.vocab}) differs from the stand-in tokenizer's "
              f"({tokenizer.vocab_size}); token ids beyond it will not be produced")
    starts = {"model.text.pretrained": cfg.model.text.pretrained, "model.vision.pretrained": cfg.model.vision.pretrained}
    facts = {"recipe": {f"initialised from ({key})": Path(value).name for key, value in starts.items() if value}}
    directory = export_open_clip(model.eval(), tokenizer, args.output, facts if args.checkpoint is None else None)
    print(f"wrote {directory} (open_clip, from inside it: create_model_and_transforms('local-dir:.'))")
    return directory


if __name__ == "__main__":
    main()
