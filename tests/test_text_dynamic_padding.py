"""Dynamic caption padding: the text tower cuts each batch to its longest caption, and the embeddings do not move."""
from types import SimpleNamespace

import pytest
import torch

from biomedclip.model import build_model
from biomedclip.model.text_tower import trim_padding
from tests.helpers import jats_captions, roco_captions, tiny_config, train_tokenizer

PAD = 0


def padded(lengths: list[int], context: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 300, (len(lengths), context), generator=gen)
    tokens[torch.arange(context)[None, :] >= torch.tensor(lengths)[:, None]] = PAD
    tokens[:, 0] = 2
    return tokens


@pytest.mark.parametrize(("lengths", "expected"), [([3, 9], 16), ([8], 8), ([17, 1], 24), ([60, 2], 64), ([64], 64)])
def test_cut_to_the_longest_caption_rounded_up_to_eight(lengths, expected):
    tokens = padded(lengths)
    trimmed = trim_padding(tokens, PAD)
    assert trimmed.shape == (len(lengths), expected)
    assert torch.equal(trimmed, tokens[:, :expected])


def test_never_beyond_the_context_and_pads_inside_a_caption_are_kept():
    assert trim_padding(padded([74], context=77), PAD).shape[1] == 77  # rounding up to 80 would exceed it
    tokens = padded([20])
    tokens[0, 5:12] = PAD  # an id equal to the pad id inside the caption
    assert trim_padding(tokens, PAD).shape[1] == 24


def features_full_and_dynamic(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        model.text.dynamic_padding = False
        full = model.encode_text(tokens, normalize=False)
        model.text.dynamic_padding = True
        dynamic = model.encode_text(tokens, normalize=False)
    return full, dynamic


@pytest.fixture(scope="module")
def real_captions(realdata) -> list[str]:
    return roco_captions(realdata) + jats_captions(realdata)


def test_real_caption_embeddings_equal_the_full_length_ones(real_captions):
    """ROCO and JATS captions at context 256, in batches of similar and of mixed lengths."""
    tokenizer = train_tokenizer(real_captions, context_length=256)
    torch.manual_seed(0)
    model = build_model(tiny_config(tokenizer)).eval()  # the position table holds 512: context 256 fits
    tokens = tokenizer(real_captions)
    lengths = (tokens != tokenizer.pad_token_id).sum(dim=1)
    by_length = tokens[lengths.argsort()]
    cut_lengths = []
    for batch in (*by_length.split(16), *tokens.split(16)):
        cut_lengths.append(trim_padding(batch, tokenizer.pad_token_id).shape[1])
        full, dynamic = features_full_and_dynamic(model, batch)
        assert (full - dynamic).abs().max().item() < 1e-5
    assert min(cut_lengths) < 64 and max(cut_lengths) == 256  # short ROCO batches were cut, long JATS ones not


def test_synthetic_embeddings_equal_the_full_length_ones():
    torch.manual_seed(0)
    model = build_model(tiny_config(SimpleNamespace(vocab_size=300, pad_token_id=PAD))).eval()
    for lengths in ([2, 3, 4, 5], [3, 40, 7, 12], [77, 4, 4, 4]):
        full, dynamic = features_full_and_dynamic(model, padded(lengths, context=77))
        assert (full - dynamic).abs().max().item() < 1e-5
