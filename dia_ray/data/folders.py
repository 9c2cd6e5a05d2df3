"""Image-folder datasets: ``<data_root>/<location>/{train,test}/<class>/*`` or, not pre-split, ``<location>/<class>/*``.

Images (png/jpg/jpeg/bmp/tif/tiff, grey or RGB, any size) are decoded with PIL, converted to RGB and resized to
``image_size`` with bilinear filtering, as the reference's ``Resize((224, 224))`` on PIL images (ALGORITHM.md §6).
The DDPM's images (``resample="tensor"``) are the source images resized straight to its resolution r the way the
reference's DDPM trainer does it: ToTensor, then a bilinear tensor resize without antialiasing (§2.3).
Decoding a folder dataset is slow, so the decoded arrays are cached once per (dataset, size, file list) as an .npz in
``<data_root>/.dia-ray-cache/``: the key fingerprints every file's path, size and mtime, so adding, removing or
editing an image builds a new cache; the file is written to a temporary name and renamed (never read half-written).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dia_ray.data.npz import write_npz
from dia_ray.data.registry import FOLDER, DatasetSpec
from dia_ray.errors import DataError

log = logging.getLogger(__name__)

Resample = Literal["pil", "tensor"]  # PIL bilinear (the learner's images) / torch bilinear, no antialias (DDPM's)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
CACHE_DIR = ".dia-ray-cache"
_CACHE_VERSION = 1  # bump when decoding changes: old caches are then never matched


@dataclass(frozen=True)
class FolderListing:
    """Every image of a folder dataset, in a fixed order: ``files[i]`` (relative to ``directory``) belongs to
    split ``splits[i]`` (train/test) and class folder ``classes[i]``."""

    directory: Path
    files: np.ndarray  # str (N,)
    splits: np.ndarray  # str (N,)
    classes: np.ndarray  # str (N,)
    split_info: dict


def dataset_dir(spec: DatasetSpec, data_root: Path) -> Path:
    return Path(data_root) / spec.location if spec.location not in ("", ".") else Path(data_root)


def layout_message(spec: DatasetSpec, data_root: Path) -> str:
    d = dataset_dir(spec, data_root)
    classes = "|".join(spec.classes) if spec.classes else "<class>"
    if spec.name == FOLDER:
        return (f"expected {d}/train/<class>/ and {d}/test/<class>/ image folders "
                f"(--data-root is the folder holding train/ and test/)")
    return (f"expected {d}/{{train,test}}/{{{classes}}}/ image folders (or {d}/{{{classes}}}/ to be split "
            f"{1 - spec.test_fraction:.0%}/{spec.test_fraction:.0%}); download {spec.title} and place it there")


def scan(spec: DatasetSpec, data_root: Path) -> FolderListing:
    """List the images of a folder dataset; a dataset that is not pre-split gets a stratified train/test split.

    Raises :class:`DataError` for a missing folder, a missing ``train/`` or ``test/``, or an empty class folder.
    """
    d = dataset_dir(spec, data_root)
    if not d.is_dir():
        raise DataError(f"{spec.name}: {d} not found; {layout_message(spec, data_root)}")
    have = {s: (d / s).is_dir() for s in ("train", "test")}
    if any(have.values()) or spec.name == FOLDER:
        for split, present in have.items():
            if not present:
                raise DataError(f"{spec.name}: {d / split}/ missing; {layout_message(spec, data_root)}")
        rows = [(split, cls, f) for split in ("train", "test")
                for cls, files in _class_files(d / split, d, spec, data_root).items() for f in files]
        info = {"presplit": True}
    else:
        rows = stratified_split(_class_files(d, d, spec, data_root), spec.test_fraction, spec.split_seed)
        info = {"presplit": False, "test_fraction": spec.test_fraction, "seed": spec.split_seed}
    splits, classes, files = (np.array(col, dtype=str) for col in zip(*rows))
    return FolderListing(d, files, splits, classes, info)


def _class_files(parent: Path, base: Path, spec: DatasetSpec, data_root: Path) -> dict[str, list[str]]:
    """{class folder: sorted image paths relative to ``base``}; hidden entries (e.g. our cache) are ignored."""
    dirs = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and not (parent == base and p.name in ("train", "test")))
    if not dirs:
        raise DataError(f"{spec.name}: no class folders in {parent}; {layout_message(spec, data_root)}")
    out = {}
    for cls_dir in dirs:
        files = sorted(p.relative_to(base).as_posix() for p in cls_dir.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(cls_dir).parts))
        if not files:
            raise DataError(f"{spec.name}: class folder {cls_dir} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder")
        out[cls_dir.name] = files
    return out


def stratified_split(files_by_class: dict[str, list[str]], test_fraction: float, seed: int
                     ) -> list[tuple[str, str, str]]:
    """(split, class, file) rows: round(test_fraction * n) of each class's n files go to test.

    Each class is shuffled by its own generator seeded with (seed, crc32(class)), so the split of one class does not
    change when another class gains images, and the same files always give the same split.
    """
    rows = []
    for cls, files in sorted(files_by_class.items()):
        order = np.random.default_rng([seed, zlib.crc32(cls.encode())]).permutation(len(files))
        n_test = int(np.floor(test_fraction * len(files) + 0.5))
        test = set(order[:n_test].tolist())
        rows += [("test" if i in test else "train", cls, f) for i, f in enumerate(files)]
    return rows


def load_images(spec: DatasetSpec, listing: FolderListing, keep: np.ndarray, data_root: Path, *,
                size: int | None = None, resample: Resample = "pil") -> np.ndarray:
    """uint8 (K, S, S, 3) images of ``listing.files[keep]`` at ``size`` (default ``spec.image_size``), from the
    cache when valid. ``resample`` says how a source image is resized (see :func:`decode_image`)."""
    files = listing.files[keep]
    size = size or spec.image_size
    kind = f"{size}px" if resample == "pil" else f"{resample}{size}px"
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{spec.name}|{listing.directory.resolve()}|{kind}\n".encode())
    for f in files:
        st = (listing.directory / f).stat()
        digest.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    cache_dir = Path(data_root) / CACHE_DIR
    cache = cache_dir / f"{spec.name}-{kind}-{digest.hexdigest()[:20]}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                if np.array_equal(npz["files"], files):
                    log.debug("decoded images of %s from cache %s", spec.name, cache)
                    return npz["images"]
        except Exception as err:  # noqa: BLE001  (an unreadable cache is rebuilt, never trusted)
            log.warning("ignoring unreadable cache %s (%s)", cache, err)
    images = decode_images([listing.directory / f for f in files], size, resample)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_npz(cache, {"images": images, "files": files})
        for old in cache_dir.glob(f"{spec.name}-{kind}-*.npz"):  # superseded file lists
            if old != cache:
                old.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not write the decoded-image cache %s (%s); the next load decodes again", cache, err)
    return images


def decode_images(paths: list[Path], size: int, resample: Resample = "pil") -> np.ndarray:
    """Decode, convert to RGB and resize every image; threads overlap PIL's GIL-free decoding."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    if not paths:
        return out
    start = time.perf_counter()
    log.info("decoding %d images at %d px (cached afterwards)", len(paths), size)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, arr in enumerate(pool.map(lambda p: decode_image(p, size, resample), paths)):
            out[i] = arr
    log.info("decoded %d images in %.1f s", len(paths), time.perf_counter() - start)
    return out


def decode_image(path: Path, size: int, resample: Resample = "pil") -> np.ndarray:
    """One image file → uint8 (size, size, 3). 16-bit / float images are min-max scaled to 8 bit first.

    ``pil``: PIL's bilinear resize (antialiased when shrinking), as the reference's ``Resize((224, 224))`` on PIL
    images. ``tensor``: the reference DDPM trainer's ToTensor → bilinear tensor resize (align_corners=False, no
    antialias, torchvision 0.12), rounded back to uint8."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                arr = np.asarray(img, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
                img = Image.fromarray(np.round(arr).astype(np.uint8))
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({err}); replace or delete the file") from None
    if rgb.size == (size, size):
        return np.asarray(rgb, dtype=np.uint8)
    if resample == "pil":
        return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return tensor_resize(np.asarray(rgb, dtype=np.uint8)[None], size)[0]


def tensor_resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) → uint8 (N, size, size, 3): ToTensor, bilinear resize (align_corners=False, no antialias),
    rounded back to 8 bit."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.require(images, requirements=("C", "W"))).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (x.permute(0, 2, 3, 1) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
