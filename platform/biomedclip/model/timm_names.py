"""timm model names for every (preset, image size), so that open_clip can build the same trunk by name.

open_clip builds a timm trunk at the name's default size and ignores `image_size`. The paper's trunks at 224 have
standard timm names (loadable by open_clip alone); other sizes are registered here and need `import biomedclip.model`.
"""
from __future__ import annotations

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from biomedclip.model.config import IMAGE_SIZES, PATCH_SIZE, VISION_PRESETS

STANDARD_NAMES = {
    ("vit-small", 224): "vit_small_patch16_224",
    ("vit-base", 224): "vit_base_patch16_224",
    ("vit-large", 224): "vit_large_patch16_224",
}


def timm_model_name(preset: str, image_size: int) -> str:
    return STANDARD_NAMES.get((preset, image_size)) or f"biomedclip_{preset.replace('-', '_')}_{image_size}"


def preset_for_timm_name(name: str) -> str:
    """Our vision preset for a timm trunk name written by `timm_model_name`."""
    for (preset, _size), standard in STANDARD_NAMES.items():
        if name == standard:
            return preset
    for preset in VISION_PRESETS:
        if name.startswith(f"biomedclip_{preset.replace('-', '_')}_"):
            return preset
    raise ValueError(f"timm trunk {name!r} matches no BiomedCLIP vision preset")


def _register(preset: str, image_size: int) -> None:
    width, depth, heads = VISION_PRESETS[preset]

    def build(pretrained: bool = False, **kwargs) -> VisionTransformer:
        if pretrained:
            raise ValueError(f"{preset} at {image_size}: no pretrained weights are published for this trunk")
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
        model = VisionTransformer(img_size=image_size, patch_size=PATCH_SIZE, embed_dim=width, depth=depth,
                                  num_heads=heads, **kwargs)
        model.pretrained_cfg = model.default_cfg = {"input_size": (3, image_size, image_size)}  # open_clip reads it
        return model

    build.__name__ = timm_model_name(preset, image_size)
    build.__module__ = __name__
    register_model(build)


for _preset in VISION_PRESETS:
    for _size in IMAGE_SIZES:
        if (_preset, _size) not in STANDARD_NAMES:
            _register(_preset, _size)
