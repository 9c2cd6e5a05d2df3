"""What the DDPM trains on (ALGORITHM.md §2.3, issue 14): MedMNIST normals zero-padded to 32; folder datasets' SOURCE
files resized straight to r with a bilinear tensor resize without antialiasing (not the learner's 224 px images);
the SARS-COV-2 whole-folder quirk only when asked. Expected images are computed with numpy from the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dia_ray.data import ddpm_images, folders, load_dataset
from dia_ray.errors import DataError


def test_medmnist_normals_are_zero_padded_to_32(synthetic_root):
    images = ddpm_images("synthetic", synthetic_root, 32)
    train = load_dataset("synthetic", synthetic_root).train.images
    assert images.dtype == np.uint8 and images.shape == (len(train), 32, 32, 3)
    assert np.array_equal(images[:, 2:30, 2:30], train)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not images[:, border].any()


def test_medmnist_needs_resolution_32(synthetic_root):
    with pytest.raises(DataError, match="32"):
        ddpm_images("synthetic", synthetic_root, 64)
    with pytest.raises(DataError, match="folder datasets only"):
        ddpm_images("synthetic", synthetic_root, 32, whole_folder=True)


def test_folder_images_are_sources_halved_by_bilinear_without_antialias(synthetic_root):
    """64 → 32 with align_corners=False samples at source 2i + 0.5: the mean of each 2×2 block, rounded."""
    images = ddpm_images("synthetic-folder", synthetic_root, 32)
    files = sorted((synthetic_root / "synthetic-folder" / "train" / "normal").glob("*.png"))
    assert images.shape == (len(files), 32, 32, 3)
    for i in (0, len(files) // 2, len(files) - 1):
        src = np.asarray(Image.open(files[i]).convert("RGB"), dtype=np.float64)
        expected = src.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        assert np.abs(images[i].astype(np.float64) - expected).max() <= 0.5 + 1e-6


def _folder(root: Path, size: int, counts: dict[tuple[str, str], int]) -> Path:
    rng = np.random.default_rng(0)
    for (split, cls), n in counts.items():
        d = root / split / cls
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return root


def test_sources_are_resized_straight_to_r_not_through_the_224_cache(tmp_path):
    """96 → 32 (factor 3) samples exactly at source pixel 3i + 1: no interpolation, so every value is a source
    pixel; a detour through the learner's 224 px images would blend neighbours."""
    root = _folder(tmp_path / "data", 96, {("train", "normal"): 3, ("train", "sick"): 2, ("test", "normal"): 2,
                                           ("test", "sick"): 2})
    load_dataset("folder", root, normal_class="normal")  # builds the learner's 224 px cache first
    images = ddpm_images("folder", root, 32, normal_class="normal")
    files = sorted((root / "train" / "normal").glob("*.png"))
    assert images.shape == (3, 32, 32, 3)
    for img, f in zip(images, files):
        src = np.asarray(Image.open(f).convert("RGB"))
        assert np.array_equal(img, src[1::3, 1::3])


def test_whole_folder_adds_the_test_normals_only_when_asked(tmp_path):
    root = _folder(tmp_path / "data", 32, {("train", "normal"): 3, ("train", "sick"): 2, ("test", "normal"): 4,
                                           ("test", "sick"): 2})
    assert len(ddpm_images("folder", root, 32, normal_class="normal")) == 3
    whole = ddpm_images("folder", root, 32, normal_class="normal", whole_folder=True)
    assert len(whole) == 3 + 4
    test_normals = [np.asarray(Image.open(f).convert("RGB")) for f in sorted((root / "test" / "normal").glob("*"))]
    assert all(any(np.array_equal(w, t) for w in whole) for t in test_normals)


def test_ddpm_images_are_cached_apart_from_the_learners_images(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data", 48, {("train", "normal"): 2, ("train", "sick"): 1, ("test", "normal"): 1,
                                           ("test", "sick"): 1})
    first = ddpm_images("folder", root, 32, normal_class="normal")
    load_dataset("folder", root, normal_class="normal")  # the learner's cache must not replace the DDPM's
    monkeypatch.setattr(folders, "decode_image", lambda *a: pytest.fail("decoded although cached"))
    assert np.array_equal(ddpm_images("folder", root, 32, normal_class="normal"), first)
