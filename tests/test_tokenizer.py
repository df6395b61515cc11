import pytest
import torch
from transformers import BertTokenizerFast

from biomedclip.text import Tokenizer, TokenizerError
from tests.helpers import roco_captions, train_tokenizer


@pytest.fixture(scope="module")
def trained(realdata, tmp_path_factory):
    tokenizer = train_tokenizer(roco_captions(realdata), context_length=77)
    return tokenizer, tokenizer.save(tmp_path_factory.mktemp("tok"))


def test_ids_equal_bert_tokenizer_fast_on_roco(trained, realdata):
    tokenizer, directory = trained
    captions = roco_captions(realdata)
    reference = BertTokenizerFast.from_pretrained(directory)
    expected = reference(captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    ours = tokenizer(captions)
    assert ours.shape == (len(captions), 77)
    assert torch.equal(ours, expected.input_ids)
    assert (ours[:, 0] == reference.cls_token_id).all()
    assert (ours == reference.sep_token_id).sum(dim=1).eq(1).all()  # one [SEP] per row, truncation kept it


def test_loads_a_vocab_only_directory_as_downloaded_bert(trained, realdata, tmp_path):
    tokenizer, directory = trained
    (tmp_path / "vocab.txt").write_text((directory / "vocab.txt").read_text())
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    loaded = Tokenizer.load(tmp_path, context_length=256)
    captions = roco_captions(realdata)[:20]
    expected = BertTokenizerFast.from_pretrained(directory)(
        captions, padding="max_length", truncation=True, max_length=256, return_tensors="pt").input_ids
    assert torch.equal(loaded(captions), expected)


def test_uncased_and_unknown_words(trained):
    tokenizer, _ = trained
    assert torch.equal(tokenizer(["CT Scan"]), tokenizer(["ct scan"]))
    unk = tokenizer.backend.token_to_id("[UNK]")
    assert unk in tokenizer(["\u4e2d\u6587"])[0].tolist()


def test_bad_directory_is_named(tmp_path):
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        Tokenizer.load(tmp_path, 77)
