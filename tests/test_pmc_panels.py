"""Compound figures: panel detection (XY-cut), caption splitting, pairing, the measured floors on a generated labelled
set and on hand-labelled real figures, the extraction's panel pairs, and inline references as a text view."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from benchmarks.panels import evaluate_generated, evaluate_real
from biomedclip.data.extract import ExtractConfig, run_extraction
from biomedclip.data.train_input import text_view
from biomedclip.pmc.pairs import PairConfig, build_pairs, load_article
from biomedclip.pmc.panels import PanelConfig, detect_panels, pair_panels, read_panel_letters
from biomedclip.pmc.schema import staged_table
from biomedclip.pmc.sources import Source, SourceConfig
from biomedclip.pmc.stats import panels_per_figure
from biomedclip.pmc.subcaptions import cited_panels, expand_letters, panel_inline_refs, split_caption
from biomedclip.samples.corpus import write_sample_corpus
from biomedclip.samples.figures import render_figure
from biomedclip.train.config import DataSection

# --- captions --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption",
    [
        "Lesions. (A) Chest X-ray of the patient. (B) CT of the abdomen.",
        "Lesions. A, chest X-ray of the patient; B, CT of the abdomen.",
        "Lesions. Panel A: chest X-ray of the patient. Panel B: CT of the abdomen.",
        "Lesions. (a) Chest X-ray of the patient. (b) CT of the abdomen.",
    ],
)
def test_caption_styles_split_into_lead_and_panels(caption):
    split = split_caption(caption)
    assert split.lead == "Lesions."
    assert split.letters == ["A", "B"]
    assert split.panels["A"].lower().startswith("lesions. chest x-ray of the patient")
    assert split.panels["B"].lower().startswith("lesions. ct of the abdomen")


def test_ranges_and_lists_give_every_letter_its_text():
    assert expand_letters("A-C") == ("A", "B", "C") and expand_letters("a,b") == ("a", "b")
    assert expand_letters("C)-(E") == ("C", "D", "E") and expand_letters("A and B") == ("A", "B")
    split = split_caption("Mice. (A-C) Wild type at 1, 2 and 3 days. (d,e) Mutant. (F) Merge.")
    assert split.letters == list("ABCDEF")
    assert split.panels["B"] == "Mice. Wild type at 1, 2 and 3 days." and split.panels["E"] == "Mice. Mutant."


@pytest.mark.parametrize(
    "caption",
    [
        "Control (A) and treated (B) mice were imaged.",  # letters in running text
        "A. thaliana roots. B. subtilis cells.",  # abbreviations
        "Chest radiograph (X-ray), grayscale, showing two bright round nodules.",
        "Results. (B) Treated. (C) Control.",  # does not start at A
        "Results. (A) Only one panel is described.",
    ],
)
def test_captions_without_lettered_panels_are_not_split(caption):
    assert split_caption(caption) is None


def test_mentions_of_earlier_panels_are_not_new_panels():
    caption = "Cells. (A) Maps. (B) Projection of (A). (C)-(E) Responses of (C) 3, (D) 9 cells. (F) Histogram."
    assert split_caption(caption).letters == list("ABCDEF")
    assert split_caption(caption).panels["B"] == "Cells. Projection of (A)."


def test_a_panel_keeps_the_citing_sentences_about_it():
    assert cited_panels("As shown in Figure 2B, the lesion grew.") == {"B"}
    assert cited_panels("Fig. 2A-C and Figs. 3(d,e) compare.") == {"A", "B", "C", "D", "E"}
    assert cited_panels("Figure 2 shows all of them.") == set()
    sentences = ["Figure 2B grew.", "Figure 2 shows all.", "Figure 2A-C differ.", "Figure 2D shrank."]
    assert panel_inline_refs(sentences, "B") == sentences[:3]


# --- detection and pairing -------------------------------------------------------------------------------------------


def tiled(gutter: int, colour: tuple[int, int, int], rows: int = 2, cols: int = 2, size: int = 150) -> tuple:
    rng = np.random.default_rng(gutter)
    image = Image.new("RGB", (cols * size + (cols - 1) * gutter, rows * size + (rows - 1) * gutter), colour)
    boxes = []
    for r in range(rows):
        for c in range(cols):
            x, y = c * (size + gutter), r * (size + gutter)
            image.paste(Image.fromarray(rng.integers(60, 200, (size, size, 3), dtype=np.uint8)), (x, y))
            boxes.append((x, y, x + size, y + size))
    return np.asarray(image), boxes


@pytest.mark.parametrize("gutter,colour", [(2, (255, 255, 255)), (12, (0, 0, 0)), (6, (90, 140, 200))])
def test_grid_panels_are_found_in_reading_order_for_any_gutter_colour(gutter, colour):
    pixels, truth = tiled(gutter, colour, rows=2, cols=3)
    found = detect_panels(pixels)
    assert len(found) == 6
    for box, expected in zip(found, truth):  # cut in the middle of each gutter
        assert all(abs(a - b) <= gutter // 2 + 1 for a, b in zip(box, expected)), (box, expected)


def test_single_figures_and_blank_images_are_not_split():
    for seed in range(6):
        figure = render_figure(np.random.default_rng([3, seed]), (220, 180))
        assert len(detect_panels(np.asarray(figure.image.convert("RGB")))) == 1, figure.kind
    assert detect_panels(np.full((50, 80, 3), 255, np.uint8)) == []
    with pytest.raises(ValueError, match="RGB"):
        detect_panels(np.zeros((10, 10), np.uint8))


def test_panels_below_the_minimum_share_stay_with_their_neighbour():
    pixels, _ = tiled(8, (255, 255, 255), rows=1, cols=2, size=150)
    strip = np.full((pixels.shape[0], 20, 3), 255, np.uint8)
    strip[:, 8:] = np.linspace(0, 255, pixels.shape[0]).astype(np.uint8)[:, None, None]  # a colour bar beside them
    found = detect_panels(np.concatenate([pixels, strip], axis=1), PanelConfig(min_panel_share=0.15))
    assert len(found) == 2 and found[1][2] == pixels.shape[1] + 20


def test_pairing_by_letter_by_order_or_not_at_all():
    boxes = [(0, 0, 10, 10), (10, 0, 20, 10), (20, 0, 30, 10)]
    assert pair_panels(boxes, ["B", "A", "C"], ["A", "B", "C"]) == [("A", boxes[1]), ("B", boxes[0]), ("C", boxes[2])]
    assert pair_panels(boxes, [None, None, None], ["A", "B", "C"]) == list(zip("ABC", boxes))
    assert pair_panels(boxes, [None] * 3, ["A", "B"]) is None  # counts disagree: whole figure only
    assert pair_panels(boxes[:1], [None], ["A", "B"]) is None


def test_letters_are_not_read_without_tesseract(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert read_panel_letters(np.zeros((40, 40, 3), np.uint8), [(0, 0, 20, 20), (20, 0, 40, 40)]) == [None, None]


# --- measured floors (benchmarks/panels.py; floors a little under what was measured) ---------------------------------


def test_generated_compound_set_meets_the_floors():
    result = evaluate_generated(figures=60, seed=0)
    print(result)
    assert result["panel_recall"] >= 0.9  # measured 0.93 (215 panels)
    assert result["panel_precision"] >= 0.9  # 0.95
    assert result["assignment_accuracy"] >= 0.8  # 0.85
    assert result["false_split_rate"] <= 0.05  # 0 of 60


def test_real_compound_figures_meet_the_floors(realdata):
    result = evaluate_real(realdata)
    print(result)
    assert result["truth_panels"] == 7 and result["singles"] == 3
    assert result["panel_recall"] >= 0.7  # measured 5 of 7
    assert result["panel_precision"] >= 0.9  # 5 of 5
    assert result["assignment_accuracy"] >= 0.7  # 5 of 7
    assert result["false_split_rate"] == 0.0


# --- extraction ------------------------------------------------------------------------------------------------------


def test_panel_modes_on_the_sample_corpus(tmp_path):
    write_sample_corpus(tmp_path, articles=12, layout="folders", seed=2, compound_share=0.4)
    source = Source(SourceConfig(uri=str(tmp_path)))
    rows = {
        mode: [r for ref in source.list_refs() for r in build_pairs(load_article(source, ref), PairConfig(panels=mode))]
        for mode in ("off", "add", "replace")
    }
    off, add, replace = rows["off"], rows["add"], rows["replace"]
    assert all(r["panel"] is None and r["parent_fig_id"] is None and r["panel_box"] is None for r in off)
    assert [r for r in add if r["panel"] is None] == off  # the whole figures are exactly the panels-off rows
    panels = [r for r in add if r["panel"] is not None]
    assert len({r["parent_fig_id"] for r in panels}) >= 2
    parents = {(r["pmcid"], r["fig_id"]): r for r in off}
    for panel in panels:
        parent = parents[(panel["pmcid"], panel["parent_fig_id"])]
        assert panel["fig_id"] == f"{parent['fig_id']}/{panel['panel']}" and panel["split"] == parent["split"]
        assert panel["parent_key"] == parent["pair_key"] and panel["caption"] != parent["caption"]
        assert panel["caption"].split(". ", 1)[1] in parent["caption"]  # its own sub-caption, behind the lead
        x0, y0, x1, y1 = panel["panel_box"]
        assert (x1 - x0, y1 - y0) == (panel["orig_width"], panel["orig_height"])
        assert Image.open(io.BytesIO(panel["image"])).size == (panel["width"], panel["height"])
    assert [r for r in replace if r["publish"]] == [
        r
        for r in add
        if r["publish"] and (r["panel"] is not None or r["pair_key"] not in {p["parent_key"] for p in panels})
    ]
    counts = panels_per_figure(staged_table(add))
    assert counts[0] == len(off) - len({p["parent_key"] for p in panels}) and sum(counts.values()) == len(off)


def test_extraction_writes_panel_pairs_beside_whole_figures(ray_session, tmp_path):
    write_sample_corpus(tmp_path / "pmc", articles=6, layout="folders", seed=2, compound_share=0.5)
    manifest = run_extraction(
        ExtractConfig(source=SourceConfig(uri=str(tmp_path / "pmc")), output=str(tmp_path / "out"))
    )
    pairs = [
        r
        for split in ("train", "val", "test")
        if (tmp_path / "out" / split).is_dir()
        for r in pads.dataset(str(tmp_path / "out" / split), format="parquet").to_table().to_pylist()
    ]
    panels = [p for p in pairs if p["panel"]]
    assert panels and len(pairs) == manifest["pairs_total"]
    wholes = {(p["pmcid"], p["fig_id"]): p for p in pairs if p["panel"] is None}
    for panel in panels:  # beside its whole figure, with its own sub-caption
        parent = wholes[(panel["pmcid"], panel["parent_fig_id"])]
        assert panel["caption"] == split_caption(parent["caption"]).panels[panel["panel"]] != parent["caption"]
    assert sum(int(k) * v for k, v in manifest["stats"]["panels_per_figure"].items()) == len(panels)
    assert (tmp_path / "out" / "stats" / "panels_per_figure.png").read_bytes()[:4] == b"\x89PNG"


def test_panels_config_accepts_yaml_off():
    assert ExtractConfig(panels=False).pairs.panels == "off"
    with pytest.raises(ValueError, match="panels"):
        ExtractConfig(panels=True)
    with pytest.raises(ValueError, match="panels"):
        PairConfig(panels="sometimes")


# --- inline references as a text view -------------------------------------------------------------------------------


def test_text_views_draw_the_caption_or_a_citing_sentence():
    refs = "Figure 1 shows two nodules.\nAs in Figure 1, the lesion grew."
    rng = np.random.default_rng(0)
    drawn = [text_view("The caption.", refs, ("caption", "inline_refs"), False, rng) for _ in range(200)]
    assert set(drawn) == {"The caption.", *refs.split("\n")}
    assert 0.35 < drawn.count("The caption.") / len(drawn) < 0.65
    assert text_view("The caption.", "", ("caption", "inline_refs"), False, rng) == "The caption."
    assert text_view("The caption.", refs, ("caption",), False, rng) == "The caption."
    assert text_view("The caption.", refs, ("caption", "inline_refs"), True, rng) == "The caption. " + refs.replace(
        "\n", " "
    )


def test_text_views_config_is_checked():
    assert DataSection(text_views=["caption", "inline_refs"], text_concat=True).text_concat
    for bad in (
        {"text_views": ["inline_refs"]},
        {"text_views": ["caption", "abstract"]},
        {"text_views": ["caption"], "text_concat": True},
    ):
        with pytest.raises(ValueError, match="text_"):
            DataSection(**bad)


def test_training_batches_read_a_citing_sentence_or_the_caption():
    from biomedclip.data.train_input import TOKENS, preprocess_batch
    from biomedclip.text import Tokenizer

    caption, cite = "bright nodules in the left lung", "ground glass opacity resolved after treatment"
    tokenizer = Tokenizer.train([caption, cite] * 4, vocab_size=200, context_length=16, min_frequency=1)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 10, 10)).save(buffer, "PNG")
    batch = {
        "pmcid": np.array(["PMC1"] * 40),
        "fig_id": np.array(["F1"] * 40),
        "caption": np.array([caption] * 40),
        "inline_refs": np.array([cite] * 40),
        "image": np.array([buffer.getvalue()] * 40, dtype=object),
    }
    kwargs = {"tokenizer_json": tokenizer.backend.to_str(), "context_length": 16, "image_size": 32, "augment": False}
    rows = {tuple(r) for r in preprocess_batch(batch, text_views=("caption", "inline_refs"), **kwargs)[TOKENS]}
    assert rows == {tuple(tokenizer.encode([text])[0]) for text in (caption, cite)}
    only_caption = preprocess_batch({k: v for k, v in batch.items() if k != "inline_refs"}, **kwargs)[TOKENS]
    assert {tuple(r) for r in only_caption} == {tuple(tokenizer.encode([caption])[0])}
