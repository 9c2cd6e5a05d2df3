"""The synthetic fine-grained datasets: real on-disk layouts, deterministic bytes, and anomalies that live only in
fine detail (a low-pass view cannot separate them, a high-pass view can) — the regime DIA is meant to win."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dia_ray.data import load_dataset, prepare


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_npz_is_in_medmnist_layout_with_official_like_splits(synthetic_root):
    with np.load(synthetic_root / "synthetic.npz") as npz:
        assert sorted(npz.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
        assert npz["train_images"].shape == (800, 28, 28) and npz["train_images"].dtype == np.uint8
        assert npz["train_labels"].shape == (800, 1)
        assert np.bincount(npz["train_labels"][:, 0]).tolist() == [600, 200]  # train holds both, like MedMNIST
        assert np.bincount(npz["test_labels"][:, 0]).tolist() == [100, 100]
        assert len(npz["val_labels"]) == 100


def test_folder_layout_is_rgb_png_per_class(synthetic_root):
    root = synthetic_root / "synthetic-folder"
    counts = {f"{s}/{c}": len(list((root / s / c).glob("*.png")))
              for s in ("train", "test") for c in ("normal", "anomaly")}
    assert counts == {"train/normal": 300, "train/anomaly": 60, "test/normal": 100, "test/anomaly": 100}
    img = Image.open(next((root / "test" / "anomaly").glob("*.png")))
    assert img.mode == "RGB" and img.size == (64, 64)


def test_generation_is_deterministic_for_a_seed(synthetic_root, tmp_path):
    prepare("synthetic", tmp_path / "a", seed=0)
    prepare("synthetic-folder", tmp_path / "a", seed=0)
    assert (tmp_path / "a" / "synthetic.npz").read_bytes() == (synthetic_root / "synthetic.npz").read_bytes()
    assert tree_bytes(tmp_path / "a" / "synthetic-folder") == tree_bytes(synthetic_root / "synthetic-folder")
    prepare("synthetic", tmp_path / "b", seed=1)
    assert (tmp_path / "b" / "synthetic.npz").read_bytes() != (synthetic_root / "synthetic.npz").read_bytes()


def test_prepare_keeps_existing_data_unless_forced(tmp_path):
    path = prepare("synthetic", tmp_path, seed=0)
    before = path.read_bytes()
    assert prepare("synthetic", tmp_path, seed=1).read_bytes() == before
    assert prepare("synthetic", tmp_path, seed=1, force=True).read_bytes() != before


def test_load_generates_a_missing_synthetic_dataset(tmp_path):
    ds = load_dataset("synthetic", tmp_path / "fresh")
    assert (tmp_path / "fresh" / "synthetic.npz").is_file()
    assert ds.train.images.shape == (600, 28, 28, 3) and (ds.train.labels == 1).all()
    assert int(ds.test.labels.sum()) == 100 and len(ds.test) == 200


def test_synthetic_folder_loads_through_the_folder_reader(synthetic_root):
    ds = load_dataset("synthetic-folder", synthetic_root, generate_missing=False)
    assert ds.train.images.shape == (300, 64, 64, 3) and set(ds.train.classes) == {"normal"}
    assert ds.split_info == {"presplit": True, "train_excluded": {"anomaly": 60}}


def pooled(x: np.ndarray, k: int = 7) -> np.ndarray:
    n, h, w = x.shape
    h, w = h // k * k, w // k * k
    return x[:, :h, :w].reshape(n, h // k, k, w // k, k).mean(axis=(2, 4)).reshape(n, -1)


def low_and_high_pass(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low pass: Gaussian blur (sigma 2) then 7x7 average pool. High pass: |image - blur|, 7x7 average pool."""
    x = images.astype(np.float64) / 255
    x = x.mean(axis=-1) if x.ndim == 4 else x
    blur = gaussian_filter(x, sigma=(0, 2, 2))
    return pooled(blur), pooled(np.abs(x - blur))


def linear_auroc(train_x, train_y, test_x, test_y) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
    return roc_auc_score(test_y, model.predict_proba(test_x)[:, 1])


def read_npz(root: Path):
    with np.load(root / "synthetic.npz") as npz:
        return [(npz[f"{s}_images"], npz[f"{s}_labels"][:, 0]) for s in ("train", "test")]


def read_folder(root: Path):
    out = []
    for split in ("train", "test"):
        files = sorted((root / "synthetic-folder" / split).glob("*/*.png"))
        images = np.stack([np.asarray(Image.open(f)) for f in files])
        out.append((images, np.array([f.parent.name == "anomaly" for f in files], dtype=int)))
    return out


@pytest.mark.parametrize("read", [read_npz, read_folder], ids=["npz-28px", "folder-64px"])
def test_anomalies_differ_only_in_fine_detail(synthetic_root, read):
    (train_x, train_y), (test_x, test_y) = read(synthetic_root)
    train_low, train_high = low_and_high_pass(train_x)
    test_low, test_high = low_and_high_pass(test_x)
    assert linear_auroc(train_low, train_y, test_low, test_y) < 0.65
    assert linear_auroc(train_high, train_y, test_high, test_y) > 0.8
    mean = test_x.reshape(len(test_x), -1).mean(axis=1)
    assert abs(roc_auc_score(test_y, mean) - 0.5) < 0.15  # no pixel-mass shortcut either
