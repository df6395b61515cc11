"""Export a BiomedCLIP model in open_clip's local-dir layout (`open_clip.create_model_and_transforms('local-dir:DIR')`).

    python jobs/export_open_clip.py --config jobs/configs/tiny.yaml --checkpoint demo_out/pretrain/final \
        --output demo_out/open_clip
    python jobs/export_open_clip.py --config jobs/configs/paper.yaml --set model.text.pretrained=PUBMEDBERT_DIR \
        --output paper_open_clip   # BiomedCLIP's exact layout: PubMedBERT's 30522-token vocabulary

--checkpoint is a model artifact directory (model.safetensors + tokenizer/, e.g. a pretraining checkpoint or its
`final/`) or a bare .safetensors file. Without a checkpoint the model is built from the config's `model:` section: its
towers from `model.text.pretrained` / `model.vision.pretrained` when given (the BERT directory's tokenizer then fixes
the vocabulary), else randomly initialised. Without any tokenizer (no artifact, no pretrained BERT) a small vocabulary
is trained on a few built-in captions.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from biomedclip import cli

if TYPE_CHECKING:
    from biomedclip.text import Tokenizer
    from biomedclip.train.config import PretrainConfig

BUILT_IN_CAPTIONS = [
    "Chest radiograph showing a right lower lobe consolidation.",
    "Axial CT of the abdomen with contrast demonstrating a hepatic lesion.",
    "Histopathology section stained with hematoxylin and eosin at high magnification.",
    "Brain MRI T2 weighted image with a hyperintense lesion in the left temporal lobe.",
    "Ultrasound of the thyroid gland showing a hypoechoic nodule.",
    "Kaplan-Meier survival curves of the two treatment groups.",
] * 4


def built_in_tokenizer(context_length: int) -> Tokenizer:
    from biomedclip.text import Tokenizer

    return Tokenizer.train(BUILT_IN_CAPTIONS, vocab_size=512, context_length=context_length, min_frequency=1)


def load(cfg: PretrainConfig, checkpoint: Path | None):
    """(model, tokenizer, description of where each came from)."""
    from biomedclip.model import load_model
    from biomedclip.model.artifact import load_artifact
    from biomedclip.model.pretrained import initial_model
    from biomedclip.text import Tokenizer

    if checkpoint is not None and checkpoint.is_dir():
        model, tokenizer = load_artifact(checkpoint)
        return model, tokenizer, f"model and tokenizer from {checkpoint}"
    text = cfg.model.text
    if checkpoint is None and text.pretrained:
        tokenizer = Tokenizer.load(text.pretrained, text.context_length)
        return (initial_model(with_vocabulary(cfg, tokenizer).model), tokenizer,
                f"model and tokenizer initialised from {text.pretrained}")
    tokenizer = built_in_tokenizer(text.context_length)
    if checkpoint is not None:
        model = load_model(checkpoint)  # a bare .safetensors carries its config and vocabulary size
        return model, tokenizer, (f"model from {checkpoint}; NO tokenizer in a bare weights file: a "
                                  f"{tokenizer.vocab_size}-token vocabulary trained on built-in captions stands in")
    return initial_model(with_vocabulary(cfg, tokenizer).model), tokenizer, (
        f"randomly initialised model; tokenizer trained on built-in captions ({tokenizer.vocab_size} tokens)")


def with_vocabulary(cfg: PretrainConfig, tokenizer: Tokenizer) -> PretrainConfig:
    text = dataclasses.replace(cfg.model.text, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text=text))


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="artifact directory or .safetensors file (none: random "
                                                        "weights from the config's model: section)")
    parser.add_argument("--output", type=Path, required=True, help="directory to write")


def run(args: argparse.Namespace) -> Path:
    if args.checkpoint is not None:
        cli.existing(args.checkpoint, "--checkpoint")
    # Libraries are imported here, not at the top: --help and usage errors answer at once.
    from biomedclip.model.export import export_open_clip
    from biomedclip.train.config import PretrainConfig, check_initialisation

    cfg = cli.load(PretrainConfig, args)
    if args.checkpoint is None:
        check_initialisation(cfg)
    model, tokenizer, source = load(cfg, args.checkpoint)
    print(source)
    if args.checkpoint is not None and args.checkpoint.is_file() and model.config.text.vocab != tokenizer.vocab_size:
        print(f"warning: the model's vocabulary ({model.config.text.vocab}) differs from the stand-in tokenizer's "
              f"({tokenizer.vocab_size}); token ids beyond it will not be produced")
    starts = {"model.text.pretrained": cfg.model.text.pretrained,
              "model.vision.pretrained": cfg.model.vision.pretrained}
    facts = {"recipe": {f"initialised from ({key})": Path(value).name for key, value in starts.items() if value}}
    directory = export_open_clip(model.eval(), tokenizer, args.output, facts if args.checkpoint is None else None)
    print(f"wrote {directory} (open_clip, from inside it: create_model_and_transforms('local-dir:.'))")
    return directory


def user_errors() -> tuple[type[Exception], ...]:
    from biomedclip.model import CheckpointError
    from biomedclip.text import TokenizerError

    return CheckpointError, TokenizerError


JOB = cli.Job(__doc__, arguments, run, config_required=True, ray=False, user_errors=user_errors)

if __name__ == "__main__":
    sys.exit(JOB.main())
