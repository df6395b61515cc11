"""Sources: article folders, legacy tar.gz packages (incl. hostile members) and the Cloud Service layout, locally
and on a real S3 server (moto, loopback)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import boto3
import pytest

from biomedclip.pmc.archives import ArchiveLimits, read_tar_gz
from biomedclip.pmc.media import match_media
from biomedclip.pmc.pairs import PairConfig, build_pairs, load_article
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.sources import Source, SourceConfig
from biomedclip.pmc.stores import key_from_url, safe_key
from biomedclip.samples.corpus import write_sample_corpus

NXML = (b'<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>'
        b'<article-id pub-id-type="pmc">123</article-id></article-meta></front><body>'
        b'<fig id="F1"><caption><p>A caption that is long enough to keep.</p></caption>'
        b'<graphic xlink:href="fig1"/></fig></body></article>')


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue())


def member(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, data


def jpeg(size=(120, 90), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def snapshot(path: Path) -> set[str]:
    return {str(p) for p in path.rglob("*")}


# --- media matching and keys ---------------------------------------------------------------------------------------

def test_media_match_by_stem_prefers_jpg_then_png_gif_tif():
    names = ["pone.0000217.g001.gif", "pone.0000217.g001.tif", "pone.0000217.g001.jpg", "pone.0000217.g002.png"]
    assert match_media("pone.0000217.g001", names) == "pone.0000217.g001.jpg"
    assert match_media("pone.0000217.g001.tif", names) == "pone.0000217.g001.jpg"
    assert match_media("PONE.0000217.G002", names) == "pone.0000217.g002.png"
    assert match_media("fig9", names) is None
    assert match_media("fig1", ["fig1.eps"]) == "fig1.eps"  # found, so the image stage can refuse its format


def test_keys_from_urls_and_unsafe_paths():
    assert key_from_url("s3://pmc-oa-opendata/PMC1.1/gr1.jpg?md5=abc") == "PMC1.1/gr1.jpg"
    assert key_from_url("https://pmc-oa-opendata.s3.amazonaws.com/PMC1.1/gr1.jpg") == "PMC1.1/gr1.jpg"
    assert key_from_url("https://s3.amazonaws.com/pmc-oa-opendata/PMC1.1/gr1.jpg") == "PMC1.1/gr1.jpg"
    for bad in ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\..\\x", "a\x00b"]:
        with pytest.raises(Skipped) as err:
            safe_key(bad)
        assert err.value.reason == "unsafe_member"


# --- folders -------------------------------------------------------------------------------------------------------

def test_folders_layout_on_real_data(realdata):
    source = Source(SourceConfig(uri=str(realdata / "pmc")))
    refs = list(source.list_refs())
    assert source.layout == "folders" and len(refs) == 21 and refs == sorted(refs)
    texture = source.open("elife-32671-texture")  # manifest.xml is not the article
    assert texture.xml.lstrip().startswith(b"<?xml") and b"<article" in texture.xml[:2000]
    assert sorted(texture.media_names) == [f"fig{i}.jpg" for i in range(1, 6)]
    fetched = texture.fetch(["fig1.jpg"])
    assert fetched["fig1.jpg"] == (realdata / "pmc/elife-32671-texture/fig1.jpg").read_bytes()
    assert list(source.list_refs(limit=3)) == refs[:3]


# --- tar.gz packages -----------------------------------------------------------------------------------------------

def test_tar_package_is_read_in_memory_and_prefers_jpg(tmp_path):
    good = tar_gz([member("PMC123/article.nxml", NXML), member("PMC123/fig1.gif", b"GIF89a-thumbnail"),
                   member("PMC123/fig1.jpg", jpeg()), member("PMC123/article.pdf", b"%PDF-1.4")])
    (tmp_path / "PMC123.tar.gz").write_bytes(good)
    before = snapshot(tmp_path)
    source = Source(SourceConfig(uri=str(tmp_path)))
    assert source.layout == "tar" and list(source.list_refs()) == ["PMC123.tar.gz"]
    loaded = load_article(source, "PMC123.tar.gz")
    rows = build_pairs(loaded, PairConfig())
    assert [(r["pmcid"], r["fig_id"], r["width"], r["height"]) for r in rows] == [("PMC123", "F1", 120, 90)]
    assert snapshot(tmp_path) == before  # nothing extracted


def test_hostile_archive_members_are_refused_and_nothing_is_written(tmp_path):
    target = tmp_path / "outside"
    target.mkdir()
    hostile = tar_gz([
        member("PMC9/../../outside/evil.jpg", jpeg()),
        member("/tmp/absolute-evil.jpg", jpeg()),
        member("PMC9/link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        member("PMC9/hard.jpg", kind=tarfile.LNKTYPE, link="PMC9/article.nxml"),
        member("PMC9/device", kind=tarfile.CHRTYPE),
        member("PMC9/fifo", kind=tarfile.FIFOTYPE),
        member("PMC9/article.nxml", NXML),
        member("PMC9/fig1.jpg", jpeg()),
    ])
    archive_dir = tmp_path / "packages"
    archive_dir.mkdir()
    (archive_dir / "PMC9.tar.gz").write_bytes(hostile)
    before = snapshot(tmp_path)
    loaded = load_article(Source(SourceConfig(uri=str(archive_dir))), "PMC9.tar.gz")
    rows = build_pairs(loaded, PairConfig())
    assert loaded.report.skipped["unsafe_member"] == 6
    assert [r["fig_id"] for r in rows] == ["F1"]  # the safe part of the package still yields its pair
    assert snapshot(tmp_path) == before and not Path("/tmp/absolute-evil.jpg").exists()


@pytest.mark.parametrize("data, reason", [
    (b"this is not an archive at all", "corrupt_archive"),
    (tar_gz([member("PMC1/a.nxml", NXML)])[:-30], "corrupt_archive"),  # truncated gzip stream
    (gzip.compress(b"\x00" * 20 + b"garbage header" * 40), "corrupt_archive"),
    (io.BytesIO().getvalue(), "corrupt_archive"),  # zero bytes
])
def test_corrupt_or_non_gzip_archives_are_skipped(tmp_path, data, reason):
    (tmp_path / "PMC1.tar.gz").write_bytes(data)
    loaded = load_article(Source(SourceConfig(uri=str(tmp_path), layout="tar")), "PMC1.tar.gz")
    assert loaded.article is None and dict(loaded.report.skipped) == {reason: 1}


def test_plain_tar_without_gzip_is_refused():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info, data = member("PMC1/a.nxml", NXML)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(Skipped) as err:
        read_tar_gz(buffer.getvalue(), lambda n: True, ArchiveLimits())
    assert err.value.reason == "corrupt_archive" and "not a gzip" in err.value.detail


def test_archive_limits_bound_size_unpacked_bytes_members_and_member_size():
    bomb = tar_gz([member("PMC1/zeros.bin", b"\x00" * 3_000_000), member("PMC1/a.nxml", NXML)])
    assert len(bomb) < 20_000
    with pytest.raises(Skipped) as err:
        read_tar_gz(bomb, lambda n: True, ArchiveLimits(max_unpacked_bytes=1_000_000))
    assert err.value.reason == "archive_too_large"
    with pytest.raises(Skipped) as err:
        read_tar_gz(bomb, lambda n: True, ArchiveLimits(max_archive_bytes=1000))
    assert err.value.reason == "archive_too_large"
    many = tar_gz([member(f"PMC1/f{i}.txt", b"x") for i in range(30)])
    with pytest.raises(Skipped) as err:
        read_tar_gz(many, lambda n: True, ArchiveLimits(max_members=10))
    assert err.value.reason == "archive_too_large"
    contents = read_tar_gz(bomb, lambda n: True, ArchiveLimits(max_member_bytes=100_000))
    assert "zeros.bin" not in contents.files and "a.nxml" in contents.files
    assert [p.reason for p in contents.problems] == ["member_too_large"]


# --- Cloud Service layout ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloud_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cloud")
    write_sample_corpus(root, articles=8, layout="s3", seed=5)
    # a second version of one article: only the latest is listed
    meta = json.loads((root / "metadata/PMC9100001.1.json").read_text())
    (root / "metadata/PMC9100001.2.json").write_text(json.dumps(meta))
    return root


def _tamper(root: Path, name: str, change) -> None:
    meta = json.loads((root / "metadata" / name).read_text())
    change(meta)
    (root / "metadata" / name).write_text(json.dumps(meta))


def test_cloud_layout_lists_latest_versions_and_reads_metadata(cloud_corpus):
    source = Source(SourceConfig(uri=str(cloud_corpus)))
    refs = list(source.list_refs())
    assert source.layout == "s3" and len(refs) == 8 and "metadata/PMC9100001.2.json" in refs
    assert "metadata/PMC9100001.1.json" not in refs
    package = source.open("metadata/PMC9100000.1.json")
    truth = json.loads((cloud_corpus / "metadata/PMC9100000.1.json").read_text())
    assert package.metadata.pmcid == "PMC9100000" and package.metadata.pmid == str(truth["pmid"])
    assert package.metadata.license == truth["license_code"]
    assert len(package.media_names) == len(truth["media_urls"])


def test_cloud_layout_bad_metadata_retraction_checksums_and_unsafe_urls(tmp_path):
    write_sample_corpus(tmp_path, articles=7, layout="s3", seed=5)
    _tamper(tmp_path, "PMC9100000.1.json", lambda m: m.update(is_retracted=True))
    _tamper(tmp_path, "PMC9100001.1.json", lambda m: m.update(media_urls="not a list"))
    (tmp_path / "metadata/PMC9100002.1.json").write_bytes(b"{not json")
    _tamper(tmp_path, "PMC9100003.1.json", lambda m: m["media_urls"].__setitem__(
        0, m["media_urls"][0].split("?")[0] + "?md5=" + "0" * 32))
    _tamper(tmp_path, "PMC9100004.1.json", lambda m: m["media_urls"].append("s3://pmc-oa-opendata/../../etc/passwd"))
    _tamper(tmp_path, "PMC9100005.1.json", lambda m: m.update(xml_url="s3://pmc-oa-opendata/PMC9100005.1/missing.xml"))
    _tamper(tmp_path, "PMC9100006.1.json", lambda m: m.update(xml_url="s3://pmc-oa-opendata/../../etc/passwd"))
    source = Source(SourceConfig(uri=str(tmp_path)))
    reports = {ref: load_article(source, ref) for ref in source.list_refs()}
    for loaded in reports.values():
        build_pairs(loaded, PairConfig())
    skipped = {ref.split("/")[1][:10]: dict(loaded.report.skipped) for ref, loaded in reports.items()}
    assert skipped["PMC9100000"] == {"retracted": 1}
    assert skipped["PMC9100001"] == {"metadata_invalid": 1} and skipped["PMC9100002"] == {"metadata_invalid": 1}
    assert skipped["PMC9100003"]["checksum_mismatch"] == 1
    assert skipped["PMC9100004"]["unsafe_member"] == 1
    assert skipped["PMC9100005"] == {"read_error": 1} and skipped["PMC9100006"] == {"unsafe_member": 1}
    kept = Source(SourceConfig(uri=str(tmp_path), skip_retracted=False))
    assert load_article(kept, "metadata/PMC9100000.1.json").article is not None


def test_licence_filter(cloud_corpus):
    source = Source(SourceConfig(uri=str(cloud_corpus), licenses=["cc by"]))
    outcomes = {}
    for ref in source.list_refs():
        loaded = load_article(source, ref)
        outcomes[ref] = loaded.license if loaded.article else next(iter(loaded.report.skipped))
    assert set(outcomes.values()) <= {"CC BY", "license_excluded", "no_figures", "retracted"}
    assert "CC BY" in outcomes.values() and "license_excluded" in outcomes.values()


# --- the same layouts on a real S3 server --------------------------------------------------------------------------

def upload(endpoint: str, bucket: str, root: Path, prefix: str = "", public: bool = True) -> None:
    """Creates `bucket` (world-readable like pmc-oa-opendata when `public`) holding the files under `root`."""
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    if public:
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*",
                  "Action": ["s3:GetObject", "s3:ListBucket"],
                  "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=prefix + path.relative_to(root).as_posix(), Body=path.read_bytes())


def test_cloud_layout_on_s3_with_anonymous_access(s3_server, cloud_corpus):
    upload(s3_server, "pmc-oa-mirror", cloud_corpus)
    s3 = Source(SourceConfig(uri="s3://pmc-oa-mirror", s3_endpoint=s3_server, anonymous=True))
    local = Source(SourceConfig(uri=str(cloud_corpus)))
    assert s3.layout == "s3" and list(s3.list_refs()) == list(local.list_refs())
    for ref in list(local.list_refs())[:4]:
        a, b = load_article(s3, ref), load_article(local, ref)
        rows_a, rows_b = build_pairs(a, PairConfig()), build_pairs(b, PairConfig())
        assert [(r["fig_id"], r["sha256"]) for r in rows_a] == [(r["fig_id"], r["sha256"]) for r in rows_b]
        assert dict(a.report.skipped) == dict(b.report.skipped)
    upload(s3_server, "private-mirror", cloud_corpus / "metadata", prefix="metadata/", public=False)
    private = Source(SourceConfig(uri="s3://private-mirror", s3_endpoint=s3_server, anonymous=True))
    denied = load_article(private, "metadata/PMC9100000.1.json")  # proves the reads above were unsigned
    assert dict(denied.report.skipped) == {"read_error": 1}


def test_tar_layout_on_s3_under_a_prefix(s3_server, tmp_path):
    write_sample_corpus(tmp_path, articles=3, layout="tar", seed=2)
    upload(s3_server, "oa-packages", tmp_path, prefix="oa_package/", public=False)
    source = Source(SourceConfig(uri="s3://oa-packages/oa_package", s3_endpoint=s3_server, anonymous=False))
    refs = list(source.list_refs())
    assert source.layout == "tar" and refs == [f"PMC910000{i}.tar.gz" for i in range(3)]
    loaded = load_article(source, refs[0])
    assert loaded.article is not None and build_pairs(loaded, PairConfig())
    digest = hashlib.md5((tmp_path / refs[0]).read_bytes()).hexdigest()
    assert digest == hashlib.md5(source.store.read(refs[0], 10**8)).hexdigest()
