"""Small builders shared by tests: a tiny model config and real captions/images from the shared samples."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path

from biomedclip.model import ModelConfig, TextConfig, VisionConfig
from biomedclip.text import Tokenizer

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}


def roco_captions(realdata: Path) -> list[str]:
    captions = []
    for path in sorted((realdata / "captions" / "roco").rglob("captions.head50.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            _, _, caption = line.partition("\t")
            if caption.strip():
                captions.append(caption.strip())
    return captions


def jats_captions(realdata: Path) -> list[str]:
    """Figure captions of the real PMC/JATS articles, as the extraction's parser reads them."""
    from biomedclip.pmc.jats import parse_article

    captions = []
    for path in sorted((realdata / "pmc").rglob("*")):
        if path.suffix in (".xml", ".nxml") and path.name != "manifest.xml":
            captions += [figure.caption for figure in parse_article(path.read_bytes()).figures if figure.caption]
    return captions


def real_images(realdata: Path) -> list[Path]:
    return sorted(p for p in (realdata / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def tiny_config(tokenizer: Tokenizer, image_size: int = 224, patch_dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(
        embed_dim=32,
        vision=VisionConfig(preset="vit-tiny", image_size=image_size, patch_dropout=patch_dropout),
        text=TextConfig(preset="bert-tiny", context_length=77, vocab_size=tokenizer.vocab_size,
                        pad_token_id=tokenizer.pad_token_id),
    )


def train_tokenizer(captions: list[str], context_length: int = 77) -> Tokenizer:
    return Tokenizer.train(captions, vocab_size=1000, context_length=context_length, min_frequency=1)


def load_job(name: str):
    """The module of `jobs/<name>.py`, so that a test calls its `main` as the command line would."""
    path = Path(__file__).resolve().parent.parent / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_job", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in the job look their module up
    spec.loader.exec_module(module)
    return module


def make_public_bucket(client, bucket: str) -> None:
    """Creates `bucket`, world-readable like pmc-oa-opendata. AWS authorises HEAD with s3:GetObject; moto checks it
    as s3:HeadObject, so the policy names both."""
    client.create_bucket(Bucket=bucket)
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def open_clip_model(directory: Path):
    """open_clip's (model, train preprocess, eval preprocess) from an export. open_clip builds the BERT from the
    export's `hf_model_name` ".", which transformers resolves against the working directory: load from inside it."""
    import open_clip

    with contextlib.chdir(directory):
        return open_clip.create_model_and_transforms(f"local-dir:{Path(directory).resolve()}")
