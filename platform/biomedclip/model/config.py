"""Model configuration and the named presets for the vision and text towers."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from biomedclip.config import ConfigError

# ViT trunks at patch 16: (width, depth, heads). vit-tiny exists for tests; the rest follow timm's ViT family.
VISION_PRESETS: dict[str, tuple[int, int, int]] = {
    "vit-tiny": (64, 2, 2),
    "vit-small": (384, 12, 6),
    "vit-medium": (512, 12, 8),
    "vit-base": (768, 12, 12),
    "vit-large": (1024, 24, 16),
}

# BERT encoders: (width, layers, heads, intermediate, vocab). bert-tiny exists for tests.
TEXT_PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "bert-tiny": (64, 2, 2, 128, 2048),
    "pubmedbert-base": (768, 12, 12, 3072, 30522),
}

IMAGE_SIZES = (224, 336, 448)
CONTEXT_LENGTHS = (77, 256)
PATCH_SIZE = 16


@dataclass(frozen=True)
class VisionConfig:
    preset: str = "vit-base"
    image_size: int = 224
    patch_dropout: float = 0.0
    pretrained: str | None = None  # timm ViT weights (.safetensors/.pth/.bin/.npz, or a directory holding one)

    def __post_init__(self) -> None:
        _check_choice("vision.preset", self.preset, VISION_PRESETS)
        _check_choice("vision.image_size", self.image_size, IMAGE_SIZES)
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ConfigError(f"vision.patch_dropout: {self.patch_dropout} is not in [0, 1)")

    @property
    def width(self) -> int:
        return VISION_PRESETS[self.preset][0]


@dataclass(frozen=True)
class TextConfig:
    preset: str = "pubmedbert-base"
    context_length: int = 256
    vocab_size: int | None = None  # None: the preset's vocabulary size
    pad_token_id: int = 0
    # A Hugging Face BERT directory (save_pretrained layout): its weights start the encoder, its tokenizer is the run's.
    pretrained: str | None = None
    require_pretrained: bool = False  # the recipe needs `pretrained` (paper.yaml): jobs refuse to start without it

    def __post_init__(self) -> None:
        _check_choice("text.preset", self.preset, TEXT_PRESETS)
        _check_choice("text.context_length", self.context_length, CONTEXT_LENGTHS)

    @property
    def width(self) -> int:
        return TEXT_PRESETS[self.preset][0]

    @property
    def vocab(self) -> int:
        return self.vocab_size or TEXT_PRESETS[self.preset][4]


@dataclass(frozen=True)
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim <= 0:
            raise ConfigError(f"embed_dim: must be positive, got {self.embed_dim}")


def architecture(cfg: ModelConfig) -> ModelConfig:
    """The config without its initialisation sources: what a checkpoint records (no paths of the machine that
    trained it), and all that is needed to rebuild the model."""
    return replace(cfg, vision=replace(cfg.vision, pretrained=None),
                   text=replace(cfg.text, pretrained=None, require_pretrained=False))


def _check_choice(key: str, value: object, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not supported (choose from {', '.join(map(str, choices))})")
