"""Serve entrypoint: `serve run serve/config.yaml` calls `build` with the config's `args:`.

Relative artifact paths are taken from the repository root; $BIOMEDCLIP_MODEL_DIR / $BIOMEDCLIP_VQA_DIR override them.
"""
from pathlib import Path

from biomedclip.serving.app import build_app_from_args

REPO_ROOT = Path(__file__).resolve().parent.parent


def build(args: dict):
    return build_app_from_args(args, base_dir=REPO_ROOT)
