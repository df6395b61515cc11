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


CASED_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "CT", "ct", "MRI", "mri", "Scan", "scan", "of", "the",
               "Brain", "brain", "##s"]
CASED_TEXTS = ["CT Scan of the Brain", "ct scans of the brain", "MRI of the Brain"]


def test_cased_vocabulary_round_trip_keeps_ids(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("".join(f"{token}\n" for token in CASED_VOCAB))
    (tmp_path / "bert" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = Tokenizer.load(tmp_path / "bert", context_length=77)
    ids = cased(CASED_TEXTS)
    assert not torch.equal(ids[0], ids[1][: ids.shape[1]])  # "CT" and "ct" are different tokens

    saved = cased.save(tmp_path / "saved")
    assert '"do_lower_case": false' in (saved / "tokenizer_config.json").read_text()
    assert torch.equal(Tokenizer.load(saved, 77)(CASED_TEXTS), ids)
    reference = BertTokenizerFast.from_pretrained(saved)  # what open_clip's HFTokenizer reads from an export
    expected = reference(CASED_TEXTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(expected, ids)
    (saved / "tokenizer.json").unlink()  # a vocab-only copy of the saved directory
    assert torch.equal(Tokenizer.load(saved, 77)(CASED_TEXTS), ids)


def test_trained_vocabulary_is_saved_as_uncased(tmp_path):
    saved = train_tokenizer(CASED_TEXTS * 4).save(tmp_path)
    assert '"do_lower_case": true' in (saved / "tokenizer_config.json").read_text()
