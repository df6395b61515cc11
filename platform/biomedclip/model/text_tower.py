"""Text tower: a BERT encoder without its pooler, pooled on [CLS] of the last hidden state, then a two-layer MLP.

Module names match open_clip's HFTextEncoder (`transformer`, `proj.0`, `proj.2`) so state dicts are interchangeable.

Dynamic padding: captions are padded to the context length, but most are far shorter, and BERT's cost grows with the
sequence length. Every forward first cuts the token tensor to the batch's longest caption (rounded up to a multiple
of 8, for tensor-core friendly shapes and few distinct shapes under torch.compile). This is exact: the cut columns
are padding, which the attention mask already hides from every kept token, and positions are absolute from the start.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from biomedclip.model.config import TEXT_PRESETS, TextConfig

# BERT-base's own limit: the position table is sized for 512 tokens whatever the context length in use.
MAX_POSITIONS = 512
PAD_MULTIPLE = 8


def trim_padding(token_ids: torch.Tensor, pad_token_id: int, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """The token ids [N, L] cut to the longest caption's length rounded up to `multiple` (never beyond L).

    Trailing columns that are padding in every row are dropped; a pad id inside a caption keeps its column. Reading
    the length costs one host sync on a GPU (a scalar), small against a BERT forward.
    """
    full = token_ids.shape[1]
    used = (token_ids != pad_token_id).any(dim=0)
    longest = full - int(used.flip(0).byte().argmax())  # argmax: the first used column from the end (none: keep all)
    length = min(full, -(-longest // multiple) * multiple)
    return token_ids if length == full else token_ids[:, :length]


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
        self.dynamic_padding = True  # off only to measure what it saves (benchmarks/train_throughput.py)
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

    def hidden_states(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT's last hidden states [N, L', W] and the padding mask [N, L'] (True at padding), L' <= L after the
        dynamic-padding cut; the VQA model reads every token through here too."""
        if self.dynamic_padding:
            token_ids = trim_padding(token_ids, self.pad_token_id)
        padding = token_ids == self.pad_token_id
        hidden = self.transformer(input_ids=token_ids, attention_mask=(~padding).long()).last_hidden_state
        return hidden, padding

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.hidden_states(token_ids)
        return self.proj(hidden[:, 0])
