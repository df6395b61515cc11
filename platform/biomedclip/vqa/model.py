"""VQA model: BiomedCLIP's two encoders, a METER-style co-attention fusion transformer, and an answer classifier.

Image stream: the ViT trunk's tokens ([CLS] + patches, after its final norm). Question stream: BERT's last hidden
states, with padding masked everywhere it is attended to. Both are projected to the fusion width and tagged with a
stream embedding. Each fusion layer runs, in each stream, self-attention, then cross-attention to the other stream's
self-attended tokens, then an MLP (pre-norm residual blocks). The first token of each stream is pooled (linear +
tanh), the two are concatenated and classified over the answer vocabulary, as METER's VQA head does.

Patch dropout is switched off: the answer may sit in any patch, and serving must be deterministic. The contrastive
projection heads and the temperature are not used here and are frozen, so DDP sees no parameter without a gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from biomedclip.config import ConfigError
from biomedclip.model import BiomedCLIP

IMAGE_STREAM, TEXT_STREAM = 0, 1
UNUSED_ENCODER_PARTS = ("visual.head.", "text.proj.", "logit_scale")


@dataclass(frozen=True)
class FusionConfig:
    width: int = 768
    layers: int = 6
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.width <= 0 or self.layers <= 0 or self.heads <= 0:
            raise ConfigError("fusion: width, layers and heads must be positive")
        if self.width % self.heads:
            raise ConfigError(f"fusion.heads: width {self.width} is not divisible by {self.heads} heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"fusion.dropout: {self.dropout} is not in [0, 1)")


class Attention(nn.Module):
    """Pre-norm residual attention: of the queries over themselves, or (cross) over another stream's tokens."""

    def __init__(self, cfg: FusionConfig, cross: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.width)
        self.context_norm = nn.LayerNorm(cfg.width) if cross else None
        self.attn = nn.MultiheadAttention(cfg.width, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor | None = None,
                context_padding: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.norm(queries)
        context = normed if self.context_norm is None else self.context_norm(context)
        out, _ = self.attn(normed, context, context, key_padding_mask=context_padding, need_weights=False)
        return queries + self.drop(out)


class MLP(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.width)
        self.net = nn.Sequential(nn.Linear(cfg.width, hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(hidden, cfg.width), nn.Dropout(cfg.dropout))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.net(self.norm(tokens))


class StreamBlock(nn.Module):
    """One stream's half of a co-attention layer."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.cross_attn = Attention(cfg, cross=True)
        self.mlp = MLP(cfg)


class CoAttentionLayer(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.image = StreamBlock(cfg)
        self.text = StreamBlock(cfg)

    def forward(self, image: torch.Tensor, text: torch.Tensor, text_padding: torch.Tensor):
        image = self.image.self_attn(image)
        text = self.text.self_attn(text, context_padding=text_padding)
        # Both cross-attentions read the other stream as it was after self-attention (a symmetric update).
        image, text = (self.image.cross_attn(image, text, context_padding=text_padding),
                       self.text.cross_attn(text, image))
        return self.image.mlp(image), self.text.mlp(text)


class CoAttentionFusion(nn.Module):
    """Fuses projected image tokens [N, I, W] and question tokens [N, T, W]; returns the pooled pair [N, 2W]."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.stream_embed = nn.Embedding(2, cfg.width)
        self.layers = nn.ModuleList(CoAttentionLayer(cfg) for _ in range(cfg.layers))
        self.image_norm = nn.LayerNorm(cfg.width)
        self.text_norm = nn.LayerNorm(cfg.width)
        self.image_pool = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.Tanh())
        self.text_pool = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.Tanh())

    def forward(self, image: torch.Tensor, text: torch.Tensor, text_padding: torch.Tensor) -> torch.Tensor:
        image = image + self.stream_embed.weight[IMAGE_STREAM]
        text = text + self.stream_embed.weight[TEXT_STREAM]
        for layer in self.layers:
            image, text = layer(image, text, text_padding)
        pooled_image = self.image_pool(self.image_norm(image)[:, 0])
        pooled_text = self.text_pool(self.text_norm(text)[:, 0])
        return torch.cat([pooled_image, pooled_text], dim=-1)


class VQAModel(nn.Module):
    def __init__(self, encoder: BiomedCLIP, fusion: FusionConfig, num_answers: int):
        super().__init__()
        if num_answers < 1:
            raise ValueError("the answer vocabulary is empty")
        self.fusion_config = fusion
        self.num_answers = num_answers
        self.encoder = encoder
        encoder.visual.set_patch_dropout(0.0)
        for name, param in encoder.named_parameters():
            if name.startswith(UNUSED_ENCODER_PARTS):
                param.requires_grad_(False)
        self.image_proj = nn.Linear(encoder.config.vision.width, fusion.width)
        self.text_proj = nn.Linear(encoder.config.text.width, fusion.width)
        self.fusion = CoAttentionFusion(fusion)
        self.classifier = nn.Sequential(nn.Linear(2 * fusion.width, 2 * fusion.width), nn.LayerNorm(2 * fusion.width),
                                        nn.GELU(), nn.Linear(2 * fusion.width, num_answers))

    def freeze_encoders(self) -> None:
        self.encoder.requires_grad_(False)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]

    def forward(self, pixels: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Answer logits [N, num_answers] for images [N, 3, H, W] and question token ids [N, L]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.encoder_parameters())):
            image_tokens = self.encoder.visual.trunk.forward_features(pixels)
            text_tokens, text_padding = self.encoder.text.hidden_states(token_ids)
        return self.classifier(self.fusion(self.image_proj(image_tokens), self.text_proj(text_tokens), text_padding))
