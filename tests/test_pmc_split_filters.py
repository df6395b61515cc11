"""Split by PMCID hash, filters, caption word counts, licence codes, and the job config."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from biomedclip.config import ConfigError, load_config
from biomedclip.data.extract import ExtractConfig
from biomedclip.pmc.filters import FilterConfig, caption_problem, caption_word_count, size_problem
from biomedclip.pmc.licenses import allowed, license_code, normalize_code
from biomedclip.pmc.split import SplitConfig, assign_split


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.949479, 0.000929, 0.049592), (0.5, 0.5, 0.0)])
def test_split_is_deterministic_and_follows_the_ratios(ratios):
    config = SplitConfig(*ratios)
    ids = [f"PMC{i}" for i in range(40_000)]
    counts = Counter(assign_split(pmcid, config) for pmcid in ids)
    assert [assign_split(pmcid, config) for pmcid in ids[:100]] == [assign_split(p, config) for p in ids[:100]]
    for split, ratio in zip(("train", "val", "test"), ratios):
        sigma = math.sqrt(len(ids) * ratio * (1 - ratio))
        assert abs(counts[split] - len(ids) * ratio) <= 4 * sigma + 1, (split, counts)


def test_split_ratios_are_validated_with_the_config_key():
    with pytest.raises(ValueError):
        SplitConfig(0.8, 0.1, 0.2)
    with pytest.raises(ConfigError, match="split"):
        load_config(ExtractConfig, None, ["split.train=0.9"])
    with pytest.raises(ConfigError, match="images.max_side"):
        load_config(ExtractConfig, None, ["images.max_side=big"])


def test_job_configs_load(tmp_path):
    demo = load_config(ExtractConfig, "jobs/configs/extract.yaml", ["source.uri=/data", "output=/out"])
    assert (demo.split.train, demo.images.max_side, demo.source.uri) == (0.8, 512, "/data")
    paper = load_config(ExtractConfig, "jobs/configs/extract_paper.yaml")
    assert paper.source.uri == "s3://pmc-oa-opendata" and paper.split.val < 0.001


def test_caption_word_count_splits_words_and_punctuation():
    assert caption_word_count("Chest X-ray (PA view), 3 nodules.") == 12  # Chest X - ray ( PA view ) , 3 nodules .
    assert caption_word_count("") == 0


def test_filters():
    config = FilterConfig(min_side=64, min_caption_chars=20)
    assert caption_problem("Short.", config) and not caption_problem("A caption of enough length.", config)
    assert size_problem(300, 63, config) and not size_problem(64, 64, config)


@pytest.mark.parametrize("texts, code", [
    (["http://creativecommons.org/licenses/by/4.0/"], "CC BY"),
    (["https://creativecommons.org/licenses/by-nc-nd/3.0/igo/"], "CC BY-NC-ND"),
    (["http://creativecommons.org/publicdomain/zero/1.0/"], "CC0"),
    (["http://creativecommons.org/publicdomain/mark/1.0/"], "PDM"),
    ([None, "open-access",
      "This is an open access article under the Creative Commons Attribution-NonCommercial License"], "CC BY-NC"),
    (["(c) The Author(s) 2009"], None),
])
def test_licence_codes(texts, code):
    assert license_code(texts) == code


def test_licence_normalisation_and_filter():
    assert normalize_code("cc-by-nc") == "CC BY-NC" and normalize_code("CC0") == "CC0" and normalize_code(" ") is None
    assert normalize_code("tdm") == "TDM"
    assert allowed("CC BY", ["cc by", "CC0"]) and not allowed("CC BY-NC", ["CC BY"]) and allowed("unknown", None)
