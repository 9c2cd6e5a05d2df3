"""The storage module: local folders and an S3-compatible object store (moto on loopback) through the same code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dia_ray.errors import StorageError
from dia_ray.storage import Storage, is_uri


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "store")
    return Storage(request.getfixturevalue("s3_bucket") + "/prefix/run")


def test_uri_stays_a_uri_and_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Storage("relative/dir").uri == str(tmp_path / "relative" / "dir")
    assert Storage("file://" + str(tmp_path / "x")).uri == str(tmp_path / "x")
    assert is_uri("s3://b/x") and is_uri("gs://b") and not is_uri("/tmp/s3:/b") and not is_uri("dir")
    s3 = Storage("s3://bucket-name/a/b/")
    assert s3.uri == "s3://bucket-name/a/b" and not s3.local
    assert s3.join("results", "x.jsonl") == "s3://bucket-name/a/b/results/x.jsonl"
    assert not (tmp_path / "s3:").exists()  # nothing local was created for the URI


@pytest.mark.parametrize("bad, needle", [("s3:/bucket/run", "cannot open it"), ("foo://bar", "cannot open it"),
                                         ("s3://", "names no bucket"), ("", "empty")])
def test_malformed_location_is_one_storage_error(bad, needle):
    with pytest.raises(StorageError, match=needle) as err:
        Storage(bad)
    assert "\n" not in str(err.value)


def test_write_read_list_delete_round_trip(root):
    root.ensure_writable()
    root.write_text("a\n", "results", "one.jsonl")
    root.write_json({"k": 1}, "results", "sub", "two.json")
    root.write_bytes(b"\x00\x01", "banks", "k", "part-0.parquet")
    assert root.read_text("results", "one.jsonl") == "a\n"
    assert root.read_json("results/sub/two.json") == {"k": 1}
    assert root.list("results") == ["one.jsonl", "sub/two.json"]
    assert root.list(suffix=".jsonl") == ["results/one.jsonl"]
    assert root.list("results", recursive=False) == ["one.jsonl"]
    assert root.subdirs("banks") == ["k"] and root.list("nothing-here") == []
    assert root.is_file("results", "one.jsonl") and root.is_dir("results") and not root.exists("nope")
    assert root.size("banks", "k", "part-0.parquet") == 2
    root.delete("results")
    assert not root.exists("results", "one.jsonl") and root.list("results") == []
    with pytest.raises(StorageError, match="not found"):
        root.read_text("results", "one.jsonl")


def test_upload_dir_writes_the_commit_file_last_and_local_dir_caches(root, tmp_path, monkeypatch):
    src = tmp_path / "model"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "w.bin").write_bytes(os.urandom(1000))
    (src / "meta.json").write_text('{"ok": true}')
    order: list[str] = []
    real = Storage.write_bytes
    monkeypatch.setattr(Storage, "write_bytes", lambda self, data, *p: (order.append("/".join(p)), real(self, data, *p))[1])
    root.upload_dir(src, "ddpm", "key", "model", commit="meta.json")
    if not root.local:  # object stores are written file by file, the commit file last
        assert order[-1].endswith("meta.json") and len(order) == 2
    assert root.list("ddpm", "key", "model") == ["meta.json", "unet/w.bin"]
    monkeypatch.setenv("DIA_RAY_CACHE", str(tmp_path / "cache"))
    local = root.local_dir("ddpm", "key", "model", commit="meta.json")
    assert (local / "unet" / "w.bin").read_bytes() == (src / "unet" / "w.bin").read_bytes()
    assert root.local_dir("ddpm", "key", "model", commit="meta.json") == local  # cached, not downloaded again
    if not root.local:
        assert local.is_relative_to(tmp_path / "cache")


def test_writes_are_whole_files_without_temp_leftovers(tmp_path):
    st = Storage(tmp_path)
    st.write_text("x" * 10_000, "a", "f.txt")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.txt"]
    assert oct((tmp_path / "a" / "f.txt").stat().st_mode)[-3:] == "644"


def test_unwritable_local_root_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot be created: .*file is a file") as err:
        Storage(blocker / "under").ensure_writable()
    assert "\n" not in str(err.value)
    assert not (blocker.parent / "under").exists()


def test_a_writable_local_root_is_checked_without_creating_it(tmp_path):
    root = tmp_path / "new" / "storage"
    Storage(root).ensure_writable()
    assert not (tmp_path / "new").exists()  # validate first, create when a stage writes
    Storage(root).write_text("x", "results", "r.jsonl")
    assert (root / "results" / "r.jsonl").read_text() == "x"


def test_missing_bucket_and_unreachable_endpoint_are_one_line(s3_server, monkeypatch):
    with pytest.raises(StorageError, match="bucket does not exist") as err:
        Storage("s3://no-such-bucket-here/x").ensure_writable()
    assert "\n" not in str(err.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(StorageError, match="cannot reach") as err:
        Storage("s3://any-bucket/x").ensure_writable()
    assert "AWS_ENDPOINT_URL" in str(err.value)


def test_storage_pickles_as_its_location(root):
    import pickle

    again = pickle.loads(pickle.dumps(root))
    assert again == root and again.uri == root.uri
