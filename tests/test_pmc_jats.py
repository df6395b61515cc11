"""JATS parsing on the real PMC / eLife / SciELO files, and the XML safety rules."""
from __future__ import annotations

import re

import pytest

from biomedclip.pmc.jats import parse_article
from biomedclip.pmc.jats_text import sentence_spans
from biomedclip.pmc.safe_xml import parse_xml
from biomedclip.pmc.skips import Skipped

# folder -> (xml file, figures per INDEX.md, pmid, doi, licence)
REAL_ARTICLES = {
    "PMC1790863": ("pone.0000217.nxml", 3, "17299597", "10.1371/journal.pone.0000217", "CC BY"),
    "PMC2329613": ("1472-6831-8-11.nxml", 0, "18405359", "10.1186/1472-6831-8-11", "CC BY"),
    "PMC2599765": ("ehp-116-1694.nxml", 3, "19079722", "10.1289/ehp.11570", "PDM"),
    "PMC2768302": ("PMC2768302.xml", 1, "19865592", "10.1155/2008/369830", "CC BY"),
    "PMC2775679": ("PMC2775679.xml", 4, "19920987", "10.1155/2008/257864", "CC BY"),
    "PMC2900587": ("PMC2900587.xml", 6, "19468791", "10.1007/s00261-009-9539-2", None),
    "PMC3166277": ("1471-2180-11-174.nxml", 4, "21810267", "10.1186/1471-2180-11-174", "CC BY"),
    "PMC3339583": ("PMC3339583.xml", 7, "22558545", "10.1007/s13205-011-0034-4", "CC BY"),
    "PMC3460867": ("pone.0046493.nxml", 4, "23029536", "10.1371/journal.pone.0046493", "CC BY"),
    "PMC3574550": ("mds526.nxml", 2, "23149571", "10.1093/annonc/mds526", "CC BY-NC"),
    "PMC3585041": ("pntd.0002065.nxml", 1, "23469300", "10.1371/journal.pntd.0002065", "CC BY"),
    "PMC5828200": ("PMC5828200.nxml", 11, "29535835", "10.18632/oncotarget.24369", "CC BY"),
    "PMC6398430": ("PMC6398430.nxml", 4, "30846892", "10.1093/beheco/ary157", "CC BY"),
    "PMC7417471": ("PMC7417471.nxml", 6, "32776254", "10.1186/s40580-020-00237-4", "CC BY"),
    "elife-00353": ("elife-00353-v1.xml", 1, None, "10.7554/eLife.00353", "CC BY"),
    "elife-14093": ("elife-14093-v1.xml", 17, None, "10.7554/eLife.14093", "CC BY"),
    "elife-19405": ("elife-19405.xml", 1, None, "10.7554/eLife.19405", "CC BY"),
    "elife-32671-texture": ("manuscript.xml", 5, None, None, None),
    "elife00013": ("elife00013.xml", 23, None, "10.7554/eLife.00013", "CC BY"),
    "elife05502": ("elife05502.xml", 18, None, "10.7554/eLife.05502", "CC BY"),
    "scielo-bjmbr-37-04-459": ("1414-431X-bjmbr-37-04-459-477.xml", 7, None, "10.1590/S0100-879X2004000400003",
                               "CC BY"),
}


def _parse(realdata, folder):
    return parse_article((realdata / "pmc" / folder / REAL_ARTICLES[folder][0]).read_bytes())


@pytest.mark.parametrize("folder", sorted(REAL_ARTICLES))
def test_real_article_identifiers_licence_and_figure_count(realdata, folder):
    _, figures, pmid, doi, licence = REAL_ARTICLES[folder]
    article = _parse(realdata, folder)
    assert len(article.figures) == figures
    assert (article.pmid, article.doi, article.license) == (pmid, doi, licence)
    assert article.pmcid == (folder if folder.startswith("PMC") else None)
    for figure in article.figures:
        assert len(figure.hrefs) == 1, figure  # no real figure has several graphics or none
        assert figure.caption and not re.search(r"<[a-z/]", figure.caption) and "  " not in figure.caption
    assert len({f.fig_id for f in article.figures}) == figures


def test_floats_group_and_fig_group_members_are_figures(realdata):
    ehp_ids = [f.fig_id for f in _parse(realdata, "PMC2599765").figures]
    assert ehp_ids == ["f1-ehp-116-1694", "f2-ehp-116-1694", "f3-ehp-116-1694"]
    ids = [f.fig_id for f in _parse(realdata, "elife00013").figures]
    assert ids[:3] == ["fig1", "fig1s1", "fig2"] and "fig4s3" in ids


def test_caption_flattening_keeps_inline_markup_text_and_title(realdata):
    first = _parse(realdata, "PMC1790863").figures[0]
    assert first.label == "Figure 1"
    assert first.caption.startswith("Fisher's geometric model in two-dimensional phenotypic space. Fitness varies")
    assert _parse(realdata, "elife00013").figures[0].caption.startswith(
        "Rosette colony development in S. rosetta is regulated by A. machipongonensis. (A) The original culture")
    assert _parse(realdata, "elife-00353").figures[0].label is None


def test_math_uses_the_tex_alternative_without_the_latex_wrapper(realdata):
    captions = " ".join(f.caption for f in _parse(realdata, "PMC7417471").figures)
    assert "${\\text{L}}^{ - 1} [{\\text{Fe}}" in captions
    assert "documentclass" not in captions and "usepackage" not in captions
    # MathML only (no TeX alternative): the token text stays readable
    assert "control parameter Γ1 = 0.975" in _parse(realdata, "elife-14093").figures[2].caption


def test_inline_refs_are_the_sentences_citing_the_figure(realdata):
    figure = _parse(realdata, "scielo-bjmbr-37-04-459").figures[0]
    assert figure.inline_refs[0] == "Circular representations of both chromosomes are depicted in Figure 1."
    ehp = _parse(realdata, "PMC2599765").figures[0]
    assert ehp.inline_refs[0] == (
        "We observed decreased plasma T4 levels in both sexes after dietary PBDE-47 exposure (p = 0.002; Figure 1).")
    assert all(len(f.inline_refs) >= 1 for f in _parse(realdata, "PMC5828200").figures)


def test_tables_as_images_and_inline_graphics_are_not_figures(realdata):
    article = _parse(realdata, "PMC3460867")  # 3 table-wrap <alternatives><graphic/><table/>
    assert [f.hrefs[0] for f in article.figures] == [f"pone.0046493.g00{i}" for i in range(1, 5)]


JATS = """<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
<article-id pub-id-type="pmcid">PMC42</article-id><permissions><license>
<ali:license_ref xmlns:ali="http://www.niso.org/schemas/ali/1.0/">https://creativecommons.org/licenses/by-nc-nd/4.0/</ali:license_ref>
</license></permissions></article-meta></front><body>
<p>As in Fig. 2 of earlier work, the panels differ. See <xref ref-type="fig" rid="g1">Figure 1</xref> and
<xref ref-type="fig" rid="f3 f4">Figures 3-4</xref> (e.g. J. Smith). A second sentence!</p>
<fig-group id="g1"><caption><p>Group caption</p></caption>
 <fig id="f1"><label>1a</label><caption><p>First panel caption</p></caption>
  <graphic xlink:href="a"/><graphic xlink:href="b"/></fig>
 <fig id="f1"><caption><p>Repeated id</p></caption>
  <alternatives><graphic xlink:href="c.tif"/><graphic xlink:href="c.jpg"/></alternatives></fig>
</fig-group>
<fig><caption><p>No id and no graphic</p></caption></fig>
<fig id="f3"><caption><title>T</title><p>Has <italic>italic</italic> and x<sup>2</sup></p></caption>
 <graphic xlink:href="d"/></fig>
</body></article>"""


def test_fig_group_multiple_graphics_missing_ids_and_citations():
    article = parse_article(JATS.encode())
    assert article.pmcid == "PMC42" and article.license == "CC BY-NC-ND"
    figs = {f.fig_id: f for f in article.figures}
    assert list(figs) == ["f1", "f1-2", "fig3", "f3"]
    assert figs["f1"].hrefs == ("a", "b") and figs["f1-2"].hrefs == ("c.tif",) and figs["fig3"].hrefs == ()
    assert figs["f3"].caption == "T Has italic and x2"
    cited = "See Figure 1 and Figures 3-4 (e.g. J. Smith)."
    assert figs["f1"].inline_refs == (cited,) and figs["f1-2"].inline_refs == (cited,)
    assert figs["f3"].inline_refs == (cited,) and figs["fig3"].inline_refs == ()


def test_sentence_split_skips_abbreviations_and_initials():
    text = "Shown in Fig. 2 by J. Smith et al. in 2010. Next one? Yes (see below). 5 mm wide."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Shown in Fig. 2 by J. Smith et al. in 2010.", "Next one?", "Yes (see below).", "5 mm wide."]


HOSTILE_XML = {
    "billion_laughs": (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;">]><a>&l2;</a>',
                       "forbidden_xml"),
    "external_entity": (b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>', "forbidden_xml"),
    "parameter_entity": (b'<!DOCTYPE a [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><a/>', "forbidden_xml"),
    "unparsed_entity": (b'<!DOCTYPE a [<!NOTATION n SYSTEM "x"><!ENTITY u SYSTEM "y" NDATA n>]><a/>', "forbidden_xml"),
    "mismatched": (b"<article><p>x</article>", "malformed_xml"),
    "truncated": (b"<article><body><p>x", "malformed_xml"),
    "not_xml": (b"\x89PNG\r\n\x1a\n", "malformed_xml"),
    "too_deep": (b"<a>" * 400 + b"</a>" * 400, "malformed_xml"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_XML))
def test_hostile_xml_is_refused_with_its_reason(case):
    data, reason = HOSTILE_XML[case]
    with pytest.raises(Skipped) as err:
        parse_article(data)
    assert err.value.reason == reason


def test_external_dtd_is_named_but_never_loaded_and_undeclared_prefixes_parse():
    doc = (b'<!DOCTYPE article SYSTEM "http://127.0.0.1:9/never.dtd">'
           b'<article><p>&nbsp;ok</p><graphic xlink:href="z"/></article>')
    root = parse_xml(doc)
    assert root.find("p").text == "ok" and root.find("graphic").get("href") == "z"


def test_non_article_root_is_refused():
    with pytest.raises(Skipped) as err:
        parse_article(b"<dar><documents/></dar>")
    assert err.value.reason == "no_article_xml"
