"""One entry point from a dataset name to arrays: the one-class train split and the labelled test split.

The paper's setting (ALGORITHM.md §0, §6): training sees only the normal class(es) of the train split; the test
split keeps every class, normal = positive label 1. MedMNIST uses its official splits (val unused); folder datasets
use their ``train``/``test`` folders or a recorded stratified 7:3 split.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dia_ray.data import folders, npz, synthetic
from dia_ray.data.registry import FOLDER, DatasetSpec, get_spec
from dia_ray.errors import DataError
from dia_ray.paths import existing_dir, file_above, writable_dir

# MedMNIST's file sizes (MedMNIST+ adds 64, 128 and 224 px to the original 28 px)
MEDMNIST_SIZES = (28, 64, 128, 224)

log = logging.getLogger(__name__)

# Kvasir-v2's raw class folders that show polyps; every other raw folder is normal tissue / landmarks.
KVASIR_POLYP_FOLDERS = ("polyps", "dyed-lifted-polyps")


@dataclass
class ImageSplit:
    images: np.ndarray  # uint8 (N, H, W, 3), H = W = spec.image_size, grey replicated to RGB
    labels: np.ndarray  # int64 (N,), 1 = normal, 0 = anomaly
    classes: np.ndarray  # str (N,), the original class of each image (medmnist: the label index as str)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LoadedDataset:
    spec: DatasetSpec  # normal_classes resolved to what was used (e.g. Kvasir's raw folders)
    train: ImageSplit  # normal class(es) only: the one-class training set
    test: ImageSplit  # every class of the test split
    source: Path  # the file / folder it was read from
    split_info: dict  # {"presplit": True} or {"presplit": False, "test_fraction": .., "seed": ..}; + train_excluded


def check_data_root(root: str | os.PathLike) -> Path:
    """A data root that exists must be a directory, and a missing one must not be under a file (a missing root is
    fine here: loading then says which file or folder to put there)."""
    root = Path(root).expanduser()
    if root.exists() or file_above(root):
        existing_dir(root, "data root", DataError)
    return root


def default_data_root() -> Path:
    """``$DIA_RAY_DATA_ROOT``, else ``~/.cache/dia-ray/data``."""
    return Path(os.environ.get("DIA_RAY_DATA_ROOT") or "~/.cache/dia-ray/data").expanduser()


def _spec(name: str, normal_class: str | None = None, image_size: int | None = None) -> DatasetSpec:
    # The generic ``folder`` dataset's data root *is* the folder holding train/ and test/.
    return get_spec(name, normal_class=normal_class, image_size=image_size,
                    location="." if name == FOLDER else None)


def source_path(spec: DatasetSpec, data_root: Path) -> Path:
    """Where ``spec`` lives under ``data_root`` (the npz file or the dataset folder)."""
    return npz.npz_path(spec, data_root) if spec.is_medmnist else folders.dataset_dir(spec, data_root)


def prepare(name: str, data_root, *, seed: int = 0, online: bool = False, force: bool = False,
            image_size: int | None = None) -> Path:
    """Make dataset ``name`` available under ``data_root`` and return its source path.

    Synthetic datasets are generated (kept if present, unless ``force``); MedMNIST files are downloaded only when
    ``online`` (else a :class:`DataError` says where to put the file); folder datasets cannot be fetched (licences,
    logins): they are checked, or a :class:`DataError` explains the expected layout.
    """
    if name == FOLDER:
        raise DataError("dataset 'folder' is your own images: put them in DIR/train/<class>/ and DIR/test/<class>/, "
                        "then use --dataset folder --data-root DIR --normal-class NAME")
    spec = _spec(name, image_size=image_size)
    if spec.is_medmnist and not spec.synthetic and spec.image_size not in MEDMNIST_SIZES:
        raise DataError(f"MedMNIST has {name} at {', '.join(map(str, MEDMNIST_SIZES))} px, not {spec.image_size}; "
                        "pick one of these with --image-size")
    root = writable_dir(data_root, "data root", DataError) if spec.synthetic or online else \
        Path(data_root).expanduser()
    path = source_path(spec, root)
    if spec.synthetic:
        if force or not path.exists():
            root.mkdir(parents=True, exist_ok=True)
            _generate(spec, root, seed)
        else:
            log.info("%s already present at %s (use force to regenerate)", name, path)
        return path
    if spec.is_medmnist:
        if path.is_file() and not force:
            return path
        if not online:
            raise DataError(npz.missing_message(spec, root) if not path.is_file() else
                            f"{path} exists; --force re-downloads it only together with --online")
        return npz.download(spec, root, force=force)
    folders.scan(spec, root)  # raises with the expected layout when absent or malformed
    return path


def _generate(spec: DatasetSpec, root: Path, seed: int) -> Path:
    path = source_path(spec, root)
    if spec.is_medmnist:
        return synthetic.generate_npz(path, seed=seed, size=spec.image_size)
    return synthetic.generate_folder(path, seed=seed, size=spec.native_size)


def load_dataset(name: str, data_root, *, normal_class: str | None = None, image_size: int | None = None,
                 generate_missing: bool = True, seed: int = 0) -> LoadedDataset:
    """Load dataset ``name`` from ``data_root``: train = normal class(es) of the train split, test = all of test.

    ``normal_class`` (comma-separated for several) and ``image_size`` override the paper's choice. A synthetic
    dataset that is absent is generated with ``seed`` when ``generate_missing``. Kvasir: when the folder holds the
    raw Kvasir-v2 class folders (no ``normal`` folder), every folder except ``polyps`` and ``dyed-lifted-polyps``
    is normal. Raises :class:`DataError` (one line: the path and the fix) for anything wrong on disk.
    """
    spec = _spec(name, normal_class, image_size)
    root = Path(data_root).expanduser()
    if spec.synthetic and generate_missing and not source_path(spec, root).exists():
        writable_dir(root, "data root", DataError)
        root.mkdir(parents=True, exist_ok=True)
        _generate(spec, root, seed)

    check_data_root(root)
    if spec.is_medmnist:
        splits, source, split_info = npz.read_medmnist(spec, root)
        normal = resolve_normal_classes(spec, np.concatenate([c for _, c in splits.values()]))
        _require_normal(normal, splits["train"][1], source)
        train_images, train_classes = splits["train"]
        keep = np.isin(train_classes, normal)
        train = _image_split(train_images[keep], train_classes[keep], normal)
        test = _image_split(*splits["test"], normal)
    else:
        listing = folders.scan(spec, root)
        source, split_info = listing.directory, listing.split_info
        normal = resolve_normal_classes(spec, listing.classes)
        train_classes = listing.classes[listing.splits == "train"]
        _require_normal(normal, train_classes, source)
        train_mask = (listing.splits == "train") & np.isin(listing.classes, normal)
        test_mask = listing.splits == "test"
        images = folders.load_images(spec, listing, train_mask | test_mask, root)
        in_train = train_mask[train_mask | test_mask]
        train = _image_split(images[in_train], listing.classes[train_mask], normal)
        test = _image_split(images[~in_train], listing.classes[test_mask], normal)

    excluded = Counter(train_classes[~np.isin(train_classes, normal)].tolist())
    split_info = {**split_info, "train_excluded": dict(sorted(excluded.items()))}
    for label, what in ((1, "normal"), (0, "anomalous")):
        if not (test.labels == label).any():
            raise DataError(f"{source}: the test split has no {what} images (classes: "
                            f"{', '.join(sorted(set(test.classes.tolist())))}); AUROC needs both")
    if tuple(normal) != spec.normal_classes:
        spec = replace(spec, normal_classes=tuple(normal))
    log.debug("loaded %s from %s: train %d, test %d", spec.name, source, len(train), len(test))
    return LoadedDataset(spec, train, test, Path(source), split_info)


def ddpm_images(name: str, data_root, resolution: int, *, normal_class: str | None = None,
                image_size: int | None = None, whole_folder: bool = False, generate_missing: bool = True,
                seed: int = 0) -> np.ndarray:
    """uint8 (N, r, r, 3): exactly the images the DDPM of dataset ``name`` trains on at resolution r, before its
    random flip (ALGORITHM.md §2.3). A driver-side pure function of the files on disk.

    MedMNIST (``image_size`` picks the file, as for :func:`load_dataset`): the normal training images zero-padded
    28 → 32 (r must be 32), other sizes resized like folder images. Folder datasets: the normal training images'
    SOURCE files resized straight to r (ToTensor + bilinear tensor resize without antialias, as the reference; not
    the learner's 224 px cache), cached like the learner's images.
    ``whole_folder``: the reference's SARS-COV-2 quirk — normal images of every split, test included.
    """
    spec = _spec(name, normal_class)
    root = Path(data_root).expanduser()
    if spec.is_medmnist:
        if whole_folder:
            raise DataError(f"{name}: whole_folder (the SARS-COV-2 DDPM quirk) applies to folder datasets only")
        images = load_dataset(name, root, normal_class=normal_class, image_size=image_size,
                              generate_missing=generate_missing, seed=seed).train.images
        size = images.shape[1]
        if size == 28:
            if resolution != 32:
                raise DataError(f"{name}: 28 px images train a DDPM at 32 px (zero pad 2), not {resolution}")
            return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
        return images if size == resolution else folders.tensor_resize(images, resolution)
    if spec.synthetic and generate_missing and not source_path(spec, root).exists():
        root.mkdir(parents=True, exist_ok=True)
        _generate(spec, root, seed)
    listing = folders.scan(spec, root)
    normal = resolve_normal_classes(spec, listing.classes)
    _require_normal(normal, listing.classes[listing.splits == "train"], listing.directory)
    keep = np.isin(listing.classes, normal) & ((listing.splits == "train") | whole_folder)
    return folders.load_images(spec, listing, keep, root, size=resolution, resample="tensor")


def resolve_normal_classes(spec: DatasetSpec, present: np.ndarray) -> tuple[str, ...]:
    """The normal classes actually used: the spec's, except Kvasir's raw 8-folder layout (see load_dataset)."""
    classes = set(np.unique(present).tolist())
    if spec.name == "kvasir" and spec.normal_classes == ("normal",) and "normal" not in classes:
        return tuple(sorted(classes - set(KVASIR_POLYP_FOLDERS)))
    return spec.normal_classes


def _require_normal(normal: tuple[str, ...], train_classes: np.ndarray, source: Path) -> None:
    found = sorted(set(train_classes.tolist()))
    if not found:
        raise DataError(f"{source}: the train split holds no images; one-class training needs normal training "
                        "images (replace the file or folder)")
    for cls in normal:
        if cls not in found:
            raise DataError(f"{source}: normal class '{cls}' not present in the train split (classes found: "
                            f"{', '.join(found)}); pick one with --normal-class")


def _image_split(images: np.ndarray, classes: np.ndarray, normal: tuple[str, ...]) -> ImageSplit:
    return ImageSplit(images, np.isin(classes, normal).astype(np.int64), classes)
