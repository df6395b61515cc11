"""The one storage layer: local folders, s3:// on a loopback S3 server (moto), and other pyarrow URIs."""
from __future__ import annotations

import os
import pickle

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from biomedclip.io import (
    OutputStore,
    SourceTree,
    filesystem,
    local_copy,
    s3_endpoint,
    safe_key,
    staged_dir,
    storage_location,
    upload_dir,
)
from biomedclip.io.transfer import listing
from biomedclip.io.trees import TooLarge, UnsafeKey
from tests.conftest import free_port


@pytest.fixture
def bucket(s3_server):
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="io-test")
    return "s3://io-test/run"


def test_local_and_s3_outputs_have_the_same_layout_and_contents(bucket, s3_server, tmp_path):
    table = pa.table({"caption": ["a", "b"], "image": [b"\xff\xd8", b"\xff\xd9"]})
    for root in (str(tmp_path / "out"), bucket):
        out = OutputStore(root, s3_server)
        out.write_json("final/config.json", {"x": 1})
        out.write_table("train/part-00000.parquet", table)
        assert out.read_json("final/config.json") == {"x": 1}
        assert out.read_table("train/part-00000.parquet").equals(table)
        assert out.list_names("train") == ["part-00000.parquet"] and out.exists("final/config.json")
        assert out.url("final") == f"{root}/final"
    assert not (tmp_path / "s3:").exists()  # an s3:// root never becomes a local folder


def test_the_standard_endpoint_variable_is_honoured_everywhere(bucket, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    assert s3_endpoint() == s3_server and s3_endpoint("http://other:9000") == "http://other:9000"
    OutputStore(bucket).write_bytes("notes/a.txt", b"hello")  # no endpoint in any config
    assert SourceTree(bucket).read("notes/a.txt", 100) == b"hello"
    fs, path = filesystem(f"{bucket}/notes/a.txt")
    assert path == "io-test/run/notes/a.txt" and fs.get_file_info(path).size == 5


def test_signed_filesystems_carry_the_drivers_static_keys_to_ray_workers(bucket, s3_server):
    """Workers' environments were fixed when their nodes started: keys found by the driver travel in the pickle."""
    OutputStore(bucket, s3_server).write_bytes("private.txt", b"secret")
    signed, path = filesystem(f"{bucket}/private.txt", s3_server)
    copy = pickle.loads(pickle.dumps(signed))
    assert copy.get_file_info(path).size == 6 and "testing" in repr(signed.__reduce__())
    anonymous, _ = filesystem(bucket, s3_server, anonymous=True)
    assert "testing" not in repr(anonymous.__reduce__())


def test_source_tree_refuses_escapes_links_and_oversized_files(tmp_path):
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.xml").write_bytes(b"<article/>")
    (tmp_path / "outside.txt").write_text("secret")
    (root / "a" / "link.txt").symlink_to(tmp_path / "outside.txt")
    (root / "linked_dir").symlink_to(tmp_path)
    tree = SourceTree(str(root))
    assert list(tree.list()) == ["a/x.xml"] and list(tree.list_dirs()) == ["a"]
    assert tree.read("a/x.xml", 100) == b"<article/>"
    for bad in ("../outside.txt", "/etc/passwd", "a/../../outside.txt", "a\\x.xml", "C:x"):
        with pytest.raises(UnsafeKey):
            tree.read(bad, 100)
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        tree.read("a/link.txt", 100)
    with pytest.raises(FileNotFoundError):
        tree.read("linked_dir/outside.txt", 100)
    with pytest.raises(TooLarge, match="10 bytes, more than 4"):
        tree.read("a/x.xml", 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SourceTree(str(tmp_path / "missing"))
    assert safe_key("a/./b.jpg") == "a/b.jpg"


def test_any_pyarrow_uri_and_ray_storage_arguments(tmp_path):
    fs, path = filesystem("mock:///bucket/run")
    assert type(fs).__name__ == "_MockFileSystem" and path == "bucket/run"
    out = OutputStore("mock:///bucket/run")
    out.write_bytes("final/weights.bin", b"\x00\x01")
    assert out.read_bytes("final/weights.bin") == b"\x00\x01" and out.url("final") == "mock:///bucket/run/final"
    local_fs, local_path = storage_location(os.path.relpath(tmp_path))
    assert local_fs is None and local_path == str(tmp_path)  # Ray's own default for local paths, made absolute
    assert isinstance(filesystem(str(tmp_path))[0], pafs.LocalFileSystem)


def test_directories_move_whole_and_remote_ones_are_cached_verified(bucket, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(tmp_path / "cache"))
    uri = f"{bucket}/model"
    with pytest.raises(RuntimeError), staged_dir(uri, s3_server) as local:
        (local / "half.bin").write_bytes(b"x")
        raise RuntimeError("writer failed")
    assert listing(uri, s3_server) == {}  # a failed write leaves nothing remotely
    with staged_dir(uri, s3_server) as local:
        (local / "tokenizer").mkdir()
        (local / "tokenizer" / "vocab.txt").write_text("[PAD]\n")
        (local / "weights.bin").write_bytes(b"w" * 100)
    assert listing(uri, s3_server) == {"tokenizer/vocab.txt": 6, "weights.bin": 100}
    assert not (tmp_path / "s3:").exists()

    copy = local_copy(uri, s3_server)
    assert copy.is_relative_to(tmp_path / "cache") and (copy / "weights.bin").read_bytes() == b"w" * 100
    (copy / "weights.bin").write_bytes(b"truncated")  # a damaged cache is noticed and copied again
    assert (local_copy(uri, s3_server) / "weights.bin").read_bytes() == b"w" * 100
    upload_dir(copy / "tokenizer", f"{uri}/tokenizer", s3_server)
    OutputStore(uri, s3_server).write_bytes("weights.bin", b"v" * 101)  # a new checkpoint under the same URI
    assert (local_copy(uri, s3_server) / "weights.bin").read_bytes() == b"w" * 100  # cached without refresh
    assert (local_copy(uri, s3_server, refresh=True) / "weights.bin").read_bytes() == b"v" * 101
    with pytest.raises(FileNotFoundError, match="no-such"):
        local_copy(f"{bucket}/no-such", s3_server)
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the verified copy still serves
    assert (local_copy(uri, unreachable, refresh=True) / "weights.bin").read_bytes() == b"v" * 101
    assert local_copy(str(tmp_path)) == tmp_path  # a local folder is used where it is
