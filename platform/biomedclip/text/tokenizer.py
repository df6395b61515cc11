"""WordPiece tokenizer (uncased when trained here) with BERT special tokens, padded and truncated to the model's
context length.

Either loaded from a local Hugging Face tokenizer directory (e.g. a downloaded BiomedBERT) or trained on captions.
Encoding runs on the `tokenizers` library alone, so data workers need not import transformers.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as FastTokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.processors import BertProcessing

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TokenizerError(ValueError):
    pass


class Tokenizer:
    def __init__(self, backend: FastTokenizer, context_length: int):
        self.backend = backend
        self.context_length = context_length
        self.pad_token_id = backend.token_to_id("[PAD]")
        cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        if None in (self.pad_token_id, cls_id, sep_id):
            raise TokenizerError("the vocabulary lacks the BERT special tokens [PAD]/[CLS]/[SEP]")
        backend.post_processor = BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
        backend.enable_truncation(context_length)
        backend.enable_padding(pad_id=self.pad_token_id, pad_token="[PAD]", length=context_length)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    @property
    def lowercases(self) -> bool:
        """Whether the vocabulary is uncased: the normalizer lowercases (a BERT normalizer, or a Lowercase step)."""
        normalizer = json.loads(self.backend.to_str()).get("normalizer") or {}
        steps = normalizer.get("normalizers", [normalizer])
        return any(step.get("type") == "Lowercase" or step.get("lowercase", False) for step in steps)

    @classmethod
    def load(cls, directory: str | Path, context_length: int) -> Tokenizer:
        """Loads `tokenizer.json`, or else `vocab.txt` (+ `do_lower_case` from tokenizer_config.json)."""
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            return cls(FastTokenizer.from_file(str(directory / "tokenizer.json")), context_length)
        vocab = directory / "vocab.txt"
        if not vocab.is_file():
            raise TokenizerError(f"{directory}: no tokenizer.json or vocab.txt")
        lowercase = _read_json(directory / "tokenizer_config.json").get("do_lower_case", True)
        backend = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
        return cls(backend._tokenizer, context_length)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, context_length: int, min_frequency: int = 2) -> Tokenizer:
        """Learns a WordPiece vocabulary. Ties may be ordered differently in another process: train once, then save."""
        backend = BertWordPieceTokenizer(lowercase=True)
        backend.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                    special_tokens=SPECIAL_TOKENS, show_progress=False)
        return cls(backend._tokenizer, context_length)

    def save(self, directory: str | Path) -> Path:
        """Writes a directory that transformers' AutoTokenizer and open_clip's HFTokenizer load offline."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self.backend.get_vocab().items(), key=lambda item: item[1])
        (directory / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
        self.backend.save(str(directory / "tokenizer.json"))
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercases, "model_max_length": 512,
                  "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        return directory

    def encode(self, texts: list[str]) -> np.ndarray:
        """Token ids of shape (N, context_length), int64."""
        if isinstance(texts, str):
            raise TokenizerError("encode takes a list of texts, not a single string")
        encodings = self.backend.encode_batch([str(t) for t in texts])
        return np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), self.context_length)

    def __call__(self, texts: list[str]):
        """Token ids as a torch tensor. torch loads here, not with the module: Ray Data tasks that only encode
        should not pay its import."""
        import torch

        return torch.from_numpy(self.encode(texts))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
