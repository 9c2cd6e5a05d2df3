"""MedMNIST npz files: the real BreastMNIST counts, and one clear DataError per way a file can be wrong."""

from __future__ import annotations

import hashlib
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dia_ray.data import load_dataset, prepare
from dia_ray.errors import DataError


def write_medmnist(path, *, n=(8, 4), size=28, rgb=False, labels=None, drop=(), seed=0):
    """A small MedMNIST-layout npz: ``n`` = (train, test) images, labels alternate 0/1 unless given."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), (n[0], 2, n[1])):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        lab = np.arange(count) % 2 if labels is None else np.resize(np.asarray(labels), count)
        arrays[f"{split}_labels"] = lab.astype(np.uint8)[:, None]
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def test_breastmnist_paper_normal_class_gives_the_real_counts(shared_data):
    ds = load_dataset("breastmnist", shared_data)
    assert ds.train.images.shape == (399, 28, 28, 3) and ds.train.images.dtype == np.uint8
    assert (ds.train.labels == 1).all() and set(ds.train.classes) == {"1"}
    assert len(ds.test) == 156 and int(ds.test.labels.sum()) == 114 and int((ds.test.labels == 0).sum()) == 42
    assert ds.test.labels.dtype == np.int64 and ds.test.images.shape == (156, 28, 28, 3)
    assert np.array_equal(ds.test.labels, (ds.test.classes == "1").astype(np.int64))
    assert ds.source == shared_data / "breastmnist.npz"
    assert ds.split_info == {"presplit": True, "train_excluded": {"0": 147}}


def test_grey_images_are_replicated_to_rgb_unchanged(shared_data):
    raw = np.load(shared_data / "breastmnist.npz")
    ds = load_dataset("breastmnist", shared_data)
    assert np.array_equal(ds.test.images[..., 0], raw["test_images"])
    assert np.array_equal(ds.test.images[..., 2], raw["test_images"])


def test_reference_normal_class_zero_trains_on_147_malignant_images(shared_data):
    ds = load_dataset("breastmnist", shared_data, normal_class="0")
    assert len(ds.train) == 147 and ds.spec.normal_classes == ("0",)
    assert int(ds.test.labels.sum()) == 42  # the 42 malignant test images are now "normal"


def test_rgb_file_is_read_as_is(tmp_path):
    write_medmnist(tmp_path / "breastmnist.npz", rgb=True)
    ds = load_dataset("breastmnist", tmp_path)
    assert ds.train.images.shape == (4, 28, 28, 3) and len(ds.test) == 4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "breastmnist.npz not found; run `dia-ray data prepare --dataset breastmnist --online"),
        (lambda p: p.write_bytes(b"this is not a zip file"), "not a readable .npz file"),
        (lambda p: p.write_bytes(write_medmnist(p).read_bytes()[:3000]), "not a readable .npz file"),
        (lambda p: write_medmnist(p, drop=("test_labels",)), "key 'test_labels' missing"),
        (lambda p: write_medmnist(p, labels=[0, 1, 2]), "labels contain [2], outside breastmnist's classes [0, 1]"),
        (lambda p: write_medmnist(p, size=32), "are 32x32 px but breastmnist at image size 28 expects 28x28"),
        (lambda p: write_medmnist(p, labels=[0]), "normal class '1' not present in the train split"),
    ],
    ids=["missing", "not-a-zip", "truncated", "missing-key", "label-out-of-range", "wrong-size", "no-normal-class"],
)
def test_bad_npz_raises_one_line_data_error_naming_the_file(tmp_path, make, message):
    path = tmp_path / "breastmnist.npz"
    make(path)
    with pytest.raises(DataError) as err:
        load_dataset("breastmnist", tmp_path)
    assert message in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_other_image_size_needs_the_medmnist_plus_file(tmp_path):
    write_medmnist(tmp_path / "breastmnist.npz")
    with pytest.raises(DataError, match=r"breastmnist_64.npz not found: breastmnist at 64 px needs that file"):
        load_dataset("breastmnist", tmp_path, image_size=64)
    write_medmnist(tmp_path / "breastmnist_64.npz", size=64)
    assert load_dataset("breastmnist", tmp_path, image_size=64).train.images.shape == (4, 64, 64, 3)


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError, match="dataset 'cifar' unknown; known: pneumoniamnist, breastmnist"):
        load_dataset("cifar", tmp_path)


def test_prepare_is_offline_by_default_and_says_where_to_put_the_file(tmp_path):
    with pytest.raises(DataError, match="--online .* or copy MedMNIST's pneumoniamnist.npz there"):
        prepare("pneumoniamnist", tmp_path)


def fake_medmnist(monkeypatch, url, md5):
    info = {"breastmnist": {"url": url, "MD5": md5}}
    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(INFO=info))


def test_prepare_online_downloads_verifies_md5_and_renames(tmp_path, monkeypatch, shared_data):
    src = shared_data / "breastmnist.npz"
    fake_medmnist(monkeypatch, src.as_uri(), hashlib.md5(src.read_bytes()).hexdigest())
    root = tmp_path / "root"
    path = prepare("breastmnist", root, online=True)
    assert path == root / "breastmnist.npz" and path.read_bytes() == src.read_bytes()
    assert [p.name for p in root.iterdir()] == ["breastmnist.npz"]  # no partial file left behind


def test_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch, shared_data):
    fake_medmnist(monkeypatch, (shared_data / "breastmnist.npz").as_uri(), "0" * 32)
    with pytest.raises(DataError, match="has MD5 750601b1f35ba3300ea97c75c52ff8f6, expected 0000"):
        prepare("breastmnist", tmp_path, online=True)
    assert list(tmp_path.iterdir()) == []


def test_present_file_is_used_without_network(tmp_path, shared_data):
    shutil.copy(shared_data / "breastmnist.npz", tmp_path)
    assert prepare("breastmnist", tmp_path) == tmp_path / "breastmnist.npz"


def test_default_data_root_follows_the_environment(monkeypatch, tmp_path):
    from dia_ray.data import default_data_root

    monkeypatch.setenv("DIA_RAY_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("DIA_RAY_DATA_ROOT")
    assert default_data_root() == Path.home() / ".cache" / "dia-ray" / "data"
