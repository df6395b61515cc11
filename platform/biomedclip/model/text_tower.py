"""Text tower: a BERT encoder without its pooler, pooled on [CLS] of the last hidden state, then a two-layer MLP.

Module names match open_clip's HFTextEncoder (`transformer`, `proj.0`, `proj.2`) so state dicts are interchangeable.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from biomedclip.model.config import TEXT_PRESETS, TextConfig

# BERT-base's own limit: the position table is sized for 512 tokens whatever the context length in use.
MAX_POSITIONS = 512


def bert_config(cfg: TextConfig) -> BertConfig:
    width, layers, heads, intermediate, _ = TEXT_PRESETS[cfg.preset]
    return BertConfig(
        vocab_size=cfg.vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=cfg.pad_token_id,
    )


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.config = bert_config(cfg)
        self.pad_token_id = cfg.pad_token_id
        self.transformer = BertModel(self.config, add_pooling_layer=False)
        hidden = (self.config.hidden_size + embed_dim) // 2
        self.proj = nn.Sequential(
            nn.Linear(self.config.hidden_size, hidden, bias=False),
            nn.GELU(),
            nn.Linear(hidden, embed_dim, bias=False),
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.transformer.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.transformer.activation_checkpointing_disable()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        attention_mask = (token_ids != self.pad_token_id).long()
        hidden = self.transformer(input_ids=token_ids, attention_mask=attention_mask).last_hidden_state
        return self.proj(hidden[:, 0])
