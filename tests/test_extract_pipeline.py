"""The Ray Data extraction pipeline end to end: real JATS, the sample corpus with duplicates, every kind of bad input,
S3 in and out, partial runs resumed, and settings that must not change under an existing output."""
from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import boto3
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from PIL import Image

from biomedclip.data.extract import ExtractConfig, ExtractError, ExtractFailed, run_extraction
from biomedclip.pmc.pairs import PairConfig, build_pairs, load_article
from biomedclip.pmc.schema import PAIR_SCHEMA
from biomedclip.pmc.sources import Source, SourceConfig
from biomedclip.pmc.split import SPLITS
from biomedclip.samples.corpus import write_sample_corpus
from tests.helpers import make_public_bucket

# Figure image files present per real article (pmc/INDEX.md); every other article has XML only.
REAL_PAIRS = {"elife-00353": 1, "elife-19405": 1, "elife-32671-texture": 5, "scielo-bjmbr-37-04-459": 7}
REAL_FIGURES = {
    "PMC1790863": 3, "PMC2329613": 0, "PMC2599765": 3, "PMC2768302": 1, "PMC2775679": 4, "PMC2900587": 6,
    "PMC3166277": 4, "PMC3339583": 7, "PMC3460867": 4, "PMC3574550": 2, "PMC3585041": 1, "PMC5828200": 11,
    "PMC6398430": 4, "PMC7417471": 6, "elife-00353": 1, "elife-14093": 17, "elife-19405": 1, "elife-32671-texture": 5,
    "elife00013": 23, "elife05502": 18, "scielo-bjmbr-37-04-459": 7,
}


def extract(uri: str, output: Path | str, source_options: dict | None = None, **changes) -> dict:
    source_config = SourceConfig(uri=uri, **(source_options or {}))
    return run_extraction(ExtractConfig(source=source_config, output=str(output), **changes))


def read_pairs(output: Path) -> list[dict]:
    """All published rows, sorted, images included."""
    rows = []
    for split in SPLITS:
        if (output / split).is_dir():
            rows.extend(pads.dataset(str(output / split), format="parquet").to_table().to_pylist())
    return sorted(rows, key=lambda r: (r["pmcid"], r["fig_id"]))


def article_reports(output: Path) -> dict[str, dict]:
    return {r["article_id"]: r for r in map(json.loads, (output / "articles.jsonl").read_text().splitlines())}


def test_real_articles_give_one_pair_per_figure_with_an_image(ray_session, realdata, tmp_path):
    manifest = extract(str(realdata / "pmc"), tmp_path, articles_per_unit=5, panels="off")
    reports = article_reports(tmp_path)
    assert {a: r["figures"] for a, r in reports.items()} == REAL_FIGURES
    assert {a: r["pairs"] for a, r in reports.items() if r["pairs"]} == REAL_PAIRS
    assert reports["PMC2329613"]["skipped"] == {"no_figures": 1}
    assert manifest["articles_seen"] == 21 and manifest["figures_found"] == sum(REAL_FIGURES.values()) == 128
    assert manifest["pairs_total"] == 14 and manifest["skipped"] == {"missing_image": 114, "no_figures": 1}

    pairs = read_pairs(tmp_path)
    assert len(pairs) == 14 and {p["pmcid"] for p in pairs} == set(REAL_PAIRS)
    assert pads.dataset(str(tmp_path / "train"), format="parquet").schema == PAIR_SCHEMA
    scielo = [p for p in pairs if p["pmcid"].startswith("scielo")]
    assert [p["fig_id"] for p in scielo] == [f"fig{i}" for i in range(1, 8)]
    assert scielo[0]["inline_refs"].split("\n")[0] == ("Circular representations of both chromosomes are depicted in "
                                                       "Figure 1.")
    assert scielo[0]["license"] == "CC BY" and scielo[0]["doi"] == "10.1590/S0100-879X2004000400003"
    tiff = next(p for p in pairs if p["pmcid"] == "elife-00353")  # a TIFF named by an href without extension
    assert (tiff["orig_width"], tiff["orig_height"]) == (797, 914) and min(tiff["width"], tiff["height"]) == 512
    assert Image.open(io.BytesIO(tiff["image"])).size == (tiff["width"], tiff["height"])
    for name in ("caption_length.png", "image_size.png"):
        assert (tmp_path / "stats" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(int(v) for v in manifest["stats"]["caption_words"].values()) == 14


def expected_pairs(source: Source) -> dict[tuple[str, str], str]:
    """Oracle without Ray: every article through the library, then exact duplicate figures kept once (smallest key),
    each with its panels."""
    rows = []
    for ref in source.list_refs():
        rows.extend(build_pairs(load_article(source, ref), PairConfig()))
    kept: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["pair_key"]):
        if row["pair_key"] == row["parent_key"]:
            kept.setdefault(row["sha256"], row)
    parents = {row["pair_key"] for row in kept.values()}
    return {(r["pmcid"], r["fig_id"]): r["sha256"] for r in rows if r["parent_key"] in parents}


def test_sample_corpus_dedup_split_and_ray_readable_shards(ray_session, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, articles=40, layout="folders", seed=11)
    # make three more exact duplicates across articles: later articles reuse earlier images
    for earlier, later in (("PMC9100003", "PMC9100030"), ("PMC9100005", "PMC9100021"), ("PMC9100007", "PMC9100008")):
        source_image = sorted(p for p in (corpus / earlier).iterdir() if not p.name.endswith("nxml"))[0]
        target = sorted(p for p in (corpus / later).iterdir() if not p.name.endswith("nxml"))[0]
        shutil.copyfile(source_image, target.with_suffix(source_image.suffix))
        if target.suffix != source_image.suffix:
            target.unlink()
    manifest = extract(str(corpus), tmp_path / "out", articles_per_unit=3)
    pairs = read_pairs(tmp_path / "out")
    oracle = expected_pairs(Source(SourceConfig(uri=str(corpus))))
    assert {(p["pmcid"], p["fig_id"]): p["sha256"] for p in pairs} == oracle
    assert manifest["skipped"]["duplicate_image"] == manifest["pairs_extracted"] - len(oracle) >= 3
    whole = [p for p in pairs if p["panel"] is None]
    assert len({p["sha256"] for p in whole}) == len(whole)
    splits_of = {}
    for p in pairs:
        splits_of.setdefault(p["pmcid"], set()).add(p["split"])
    assert all(len(s) == 1 for s in splits_of.values())  # no article spans two splits
    for split in SPLITS:
        files = sorted((tmp_path / "out" / split).glob("part-*.parquet"))
        assert files
        assert all(set(pads.dataset(str(f)).to_table(columns=["split"]).column("split").to_pylist()) == {split}
                   for f in files)
    train = ray_session.data.read_parquet(str(tmp_path / "out" / "train"))
    assert train.count() == manifest["pairs_written"]["train"]
    assert train.schema().names == PAIR_SCHEMA.names


# --- bad input -----------------------------------------------------------------------------------------------------

def jats(figures: str, doctype: str = "") -> bytes:
    return (f'{doctype}<article xmlns:xlink="http://www.w3.org/1999/xlink"><body>'
            f"<p>See <xref ref-type=\"fig\" rid=\"F1\">Figure 1</xref>.</p>{figures}</body></article>").encode()


def fig(fig_id: str, href: str | None, caption: str = "A caption long enough to be kept in the dataset.") -> str:
    graphic = f'<graphic xlink:href="{href}"/>' if href else ""
    return f'<fig id="{fig_id}"><caption><p>{caption}</p></caption>{graphic}</fig>'


def image(fmt: str = "JPEG", size=(200, 150), colour=(10, 120, 200), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, fmt)
    return buffer.getvalue()


def package(name: str, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in extra:
            tar.addfile(info)
        for file_name, data in files.items():
            info = tarfile.TarInfo(f"{name}/{file_name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue())


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


EXTERNAL_ENTITY = '<!DOCTYPE article [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
ENTITY_EXPANSION = '<!DOCTYPE article [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'


def bad_input_packages() -> dict[str, bytes]:
    good_figure = fig("F1", "f1")
    return {
        "PMC100.tar.gz": package("PMC100", {"a.nxml": jats(good_figure), "f1.jpg": image()}),
        "PMC101.tar.gz": package("PMC101", {"a.nxml": b"<article><body><p>unclosed</body></article>"}),
        "PMC102.tar.gz": package("PMC102", {"a.nxml": jats(good_figure, EXTERNAL_ENTITY), "f1.jpg": image()}),
        "PMC103.tar.gz": package("PMC103", {"a.nxml": jats(good_figure, ENTITY_EXPANSION), "f1.jpg": image()}),
        "PMC104.tar.gz": b"\x1f\x8b\x08\x00corrupt-gzip-stream" * 10,
        "PMC105.tar.gz": b"just text, not an archive\n",
        "PMC106.tar.gz": package("PMC106", {"a.nxml": jats(good_figure), "f1.jpg": image(colour=(250, 200, 0))}, [
            link("../../escape.jpg", "", tarfile.REGTYPE), link("/abs/evil.jpg", "", tarfile.REGTYPE),
            link("PMC106/ln.jpg", "/etc/passwd", tarfile.SYMTYPE),
            link("PMC106/hard.jpg", "PMC106/a.nxml", tarfile.LNKTYPE)]),
        "PMC107.tar.gz": package("PMC107", {"a.nxml": jats(fig("F1", "absent"))}),
        "PMC108.tar.gz": package("PMC108", {"a.nxml": jats(fig("F1", "f1")), "f1.jpg": b""}),
        "PMC109.tar.gz": package("PMC109", {"a.nxml": jats(fig("F1", "f1")), "f1.jpg": image(size=(600, 600))[:700]}),
        "PMC110.tar.gz": package("PMC110", {"a.nxml": jats(fig("F1", "f1")), "f1.jpg": b"Figure not available.\n"}),
        "PMC111.tar.gz": package("PMC111", {"a.nxml": jats(fig("F1", "f1")),
                                            "f1.png": image("PNG", (12_000, 12_000), 0, "1")}),
        "PMC112.tar.gz": package("PMC112", {"a.nxml": jats(fig("F1", "f1")), "f1.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n"}),
        "PMC113.tar.gz": package("PMC113", {"a.nxml": jats(fig("F1", None) + fig("F2", "f2")), "f2.png": image("PNG")}),
        "PMC114.tar.gz": package("PMC114", {"a.nxml": jats("")}),
        "PMC115.tar.gz": package("PMC115", {"a.nxml": jats(fig("F1", "f1", "Short.")), "f1.jpg": image()}),
        "PMC116.tar.gz": package("PMC116", {"a.nxml": jats(fig("F1", "f1")), "f1.jpg": image(size=(40, 300))}),
        "PMC117.tar.gz": package("PMC117", {"a.nxml": b"<?xml version='1.0'?><article><body>" + b"<p>" * 5000}),
    }


EXPECTED_SKIPS = {
    "malformed_xml": 2, "forbidden_xml": 2, "corrupt_archive": 2, "unsafe_member": 4, "missing_image": 1,
    "empty_image": 1, "truncated_image": 1, "not_an_image": 1, "decompression_bomb": 1, "unsupported_format": 1,
    "no_graphic": 1, "no_figures": 1, "caption_too_short": 1, "image_too_small": 1,
}


def test_every_bad_input_is_skipped_with_its_reason_and_nothing_escapes(ray_session, tmp_path):
    packages = tmp_path / "packages"
    packages.mkdir()
    for name, data in bad_input_packages().items():
        (packages / name).write_bytes(data)
    before = set(tmp_path.rglob("*"))
    manifest = extract(str(packages), tmp_path / "out", articles_per_unit=4)
    assert manifest["skipped"] == EXPECTED_SKIPS
    assert manifest["articles_seen"] == 18
    assert sorted((p["pmcid"], p["fig_id"]) for p in read_pairs(tmp_path / "out")) == [
        ("PMC100", "F1"), ("PMC106", "F1"), ("PMC113", "F2")]
    reports = article_reports(tmp_path / "out")
    assert reports["PMC102"]["skipped"] == {"forbidden_xml": 1}
    assert reports["PMC104"]["skipped"] == {"corrupt_archive": 1}
    created = set(tmp_path.rglob("*")) - before
    assert all(p.is_relative_to(tmp_path / "out") for p in created)
    assert not (tmp_path.parent / "escape.jpg").exists() and not Path("/abs/evil.jpg").exists()


def test_skips_are_logged_naming_the_article(tmp_path, caplog):
    (tmp_path / "PMC109.tar.gz").write_bytes(bad_input_packages()["PMC109.tar.gz"])
    with caplog.at_level(logging.WARNING, logger="biomedclip.pmc"):
        build_pairs(load_article(Source(SourceConfig(uri=str(tmp_path))), "PMC109.tar.gz"), PairConfig())
    assert any("PMC109" in r.message and "truncated_image" in r.message for r in caplog.records)


# --- S3 in and out -------------------------------------------------------------------------------------------------

def test_cloud_layout_on_s3_to_s3_output(ray_session, s3_server, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, articles=24, layout="s3", seed=3)
    client = boto3.client("s3", endpoint_url=s3_server)
    make_public_bucket(client, "pmc-source")
    for path in corpus.rglob("*"):
        if path.is_file():
            client.put_object(Bucket="pmc-source", Key=path.relative_to(corpus).as_posix(), Body=path.read_bytes())
    client.create_bucket(Bucket="pairs")
    manifest = extract("s3://pmc-source", "s3://pairs/run1", source_options={"s3_endpoint": s3_server},
                       output_s3_endpoint=s3_server, articles_per_unit=5)
    oracle = expected_pairs(Source(SourceConfig(uri=str(corpus))))
    assert manifest["pairs_total"] == len(oracle) and manifest["output"] == "s3://pairs/run1"
    s3 = pafs.S3FileSystem(endpoint_override=s3_server.removeprefix("http://"), scheme="http", region="us-east-1")
    published = {}
    for split in SPLITS:
        if manifest["pairs_written"][split]:
            table = pads.dataset(f"pairs/run1/{split}", filesystem=s3, format="parquet").to_table()
            published.update({(r["pmcid"], r["fig_id"]): r["sha256"] for r in table.to_pylist()})
    assert published == oracle
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="pairs", Prefix="run1/")["Contents"]}
    assert {"run1/manifest.json", "run1/articles.jsonl", "run1/stats/caption_length.png"} <= keys


# --- partial runs and settings ---------------------------------------------------------------------------------------

def test_subset_then_full_run_equals_one_full_run(ray_session, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, articles=14, layout="tar", seed=4)
    partial = extract(str(corpus), tmp_path / "resumed", limit=6, articles_per_unit=4)  # the second unit is partial
    assert partial["articles_seen"] == 6
    staged_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed/_state/staged").glob("u0000000-*")}
    resumed = extract(str(corpus), tmp_path / "resumed", articles_per_unit=4)
    fresh = extract(str(corpus), tmp_path / "fresh", articles_per_unit=4)
    assert read_pairs(tmp_path / "resumed") == read_pairs(tmp_path / "fresh")
    run_specific = ("output", "shards", "articles_report", "stats_plots", "seconds")
    assert {k: v for k, v in resumed.items() if k not in run_specific} == \
        {k: v for k, v in fresh.items() if k not in run_specific}
    staged_after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed/_state/staged").glob("u0000000-*")}
    assert staged_after == staged_before  # the complete unit was not redone
    with pytest.raises(ExtractError, match="images"):
        run_extraction(ExtractConfig(source=SourceConfig(uri=str(corpus)), output=str(tmp_path / "fresh"),
                                     articles_per_unit=4, images=ExtractConfig().images.__class__(max_side=128)))


def test_unreadable_articles_fail_the_run_past_the_configured_share(ray_session, tmp_path):
    """A mirror whose metadata points at XML that is not there (as with a wrong endpoint, missing credentials or a
    half-synced copy): every such article is a read_error, and the run fails once their share reaches the limit."""
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, articles=4, layout="s3", seed=8)  # no article of this seed is marked retracted
    for folder in ("PMC9100000.1", "PMC9100001.1"):
        shutil.rmtree(corpus / folder)
    half = extract(str(corpus), tmp_path / "half", articles_per_unit=4)  # default: fail only when all are unreadable
    assert (half["articles_seen"], half["articles_unreadable"], half["unreadable_share"]) == (4, 2, 0.5)
    assert half["pairs_total"] > 0
    with pytest.raises(ExtractFailed, match=r"2 of 4 articles \(50%\) could not be read from .*corpus"):
        extract(str(corpus), tmp_path / "strict", articles_per_unit=4, fail_unreadable_share=0.5)
    assert json.loads((tmp_path / "strict" / "manifest.json").read_text())["unreadable_share"] == 0.5
    for folder in ("PMC9100002.1", "PMC9100003.1"):
        shutil.rmtree(corpus / folder)
    with pytest.raises(ExtractFailed, match=r"4 of 4 articles \(100%\)"):
        extract(str(corpus), tmp_path / "none", articles_per_unit=4)
