"""The demo's VQA set derived from extraction-style Parquet rows: questions whose answers the figures show."""
import json

import numpy as np
import pytest

from biomedclip.samples.vqa import Question, derive_questions, modality_of, write_vqa_set
from biomedclip.vqa.datasets import load_vqa_rad
from tests.vqa_helpers import synthetic_rows, write_corpus_parquet


@pytest.mark.parametrize("caption, modality", [
    ("Chest radiograph showing three nodules.", "x-ray"), ("Axial CT of the abdomen.", "ct"),
    ("Bar chart of CT findings per year.", "chart"), ("H&E-stained section, x200.", "histology"),
    ("Immunofluorescence micrograph of cells.", "fluorescence"), ("T2-weighted MRI of the knee.", "mri"),
    ("Scanning electron micrograph.", "microscopy"), ("Flow diagram of the study.", None),
])
def test_modality_is_the_first_modality_phrase(caption, modality):
    assert modality_of(caption) == modality


def test_questions_cover_modality_counts_and_colours():
    questions = derive_questions("Fluorescence micrograph of 12 bright green cells and three red nuclei.")
    assert questions == [
        Question("what modality is this image?", "fluorescence", "OPEN"),
        Question("is this a chart?", "no", "CLOSED"),
        Question("is this a radiology image?", "no", "CLOSED"),
        Question("how many cells are shown?", "12", "OPEN"),
        Question("how many nuclei are shown?", "3", "OPEN"),
        Question("what color are the cells?", "green", "OPEN"),
        Question("what color are the nuclei?", "red", "OPEN"),
    ]
    assert derive_questions("Kaplan-Meier survival of 40 patients.") == []


def test_vqa_set_from_parquet_loads_as_vqa_rad(tmp_path):
    corpus = tmp_path / "corpus"
    rows = synthetic_rows(6)
    write_corpus_parquet(corpus, "train", rows[:4] + [("Chest radiograph, 2 nodules.", b"not a jpeg"),
                                                     ("", rows[0][1]), ("Table of 40 patients.", rows[1][1])])
    write_corpus_parquet(corpus, "test", rows[4:])
    summary = write_vqa_set(corpus, tmp_path / "vqa")
    assert len(summary.problems) == 2
    assert summary.problems[0].startswith("train/part-00000.parquet row 4: image does not decode")
    assert summary.problems[1] == "train/part-00000.parquet row 5: no caption"
    assert summary.rows_without_questions == 1 and summary.images == 6
    expected = {split: [q for caption, _ in part for q in derive_questions(caption)]
                for split, part in (("train", rows[:4]), ("test", rows[4:]))}
    assert (summary.train_questions, summary.test_questions) == (len(expected["train"]), len(expected["test"]))

    for split in ("train", "test"):
        result = load_vqa_rad(tmp_path / "vqa", split, "splits")
        assert result.problems == []
        assert [(r.question, r.answer, r.answer_type.upper()) for r in result.records] == \
            [(q.question, q.answer, q.answer_type) for q in expected[split]]
    first = json.loads((tmp_path / "vqa" / "trainset.json").read_text())[0]
    assert (tmp_path / "vqa" / "images" / first["image_name"]).read_bytes() == rows[0][1]


def test_corpus_without_held_out_rows_is_refused(tmp_path):
    write_corpus_parquet(tmp_path / "corpus", "train", synthetic_rows(2))
    with pytest.raises(ValueError, match="0 held-out"):
        write_vqa_set(tmp_path / "corpus", tmp_path / "vqa")


KIND_MODALITY = {"radiograph": "x-ray", "ct": "ct", "histology": "histology", "fluorescence": "fluorescence",
                 "bar_chart": "chart", "line_graph": "chart"}


def test_questions_on_the_sample_corpus_figures_match_their_drawn_facts():
    """Oracle: the facts the sample corpus drew each figure from (count, colour, trend), never the caption parse."""
    sample_figures = pytest.importorskip("biomedclip.samples.figures")
    seen = set()
    for seed in range(200):
        figure = sample_figures.render_figure(np.random.default_rng(seed), (64, 64))
        answers = {q.question: q.answer for q in derive_questions(figure.caption)}
        assert answers["what modality is this image?"] == KIND_MODALITY[figure.kind], figure.caption
        assert answers["is this a chart?"] == ("yes" if KIND_MODALITY[figure.kind] == "chart" else "no")
        counted = [a for q, a in answers.items() if q.startswith("how many")]
        assert counted == [str(figure.facts["count"])], figure.caption
        if "colour" in figure.facts:
            assert [a for q, a in answers.items() if q.startswith("what color")] == [figure.facts["colour"]]
        if "trend" in figure.facts:
            assert answers["are the curves rising or falling?"] == figure.facts["trend"]
        seen.add(figure.kind)
    assert seen == set(KIND_MODALITY)
