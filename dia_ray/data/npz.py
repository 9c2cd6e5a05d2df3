"""MedMNIST files: ``<flag>.npz`` (28 px) and ``<flag>_<size>.npz`` (64/128/224, MedMNIST+) in the data root.

Read with ``np.load`` directly, not medmnist's ``Dataset`` classes: those assert the official sample counts, so a
subset or the generated ``synthetic.npz`` would fail. Download (opt-in, ``online=True``) uses the URL and MD5 from
``medmnist.INFO`` and urllib, verifies the checksum and renames into place (a partial download is never visible).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dia_ray.data.registry import DatasetSpec
from dia_ray.errors import DataError

log = logging.getLogger(__name__)

MEDMNIST_SIZE = 28
REQUIRED_SPLITS = ("train", "test")  # val is optional: the paper leaves it unused
Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images uint8 (N, H, W, 3), classes str (N,))


def file_name(spec: DatasetSpec, image_size: int | None = None) -> str:
    size = image_size or spec.image_size
    return f"{spec.location}.npz" if size == MEDMNIST_SIZE else f"{spec.location}_{size}.npz"


def npz_path(spec: DatasetSpec, data_root: Path) -> Path:
    return Path(data_root) / file_name(spec)


def read_medmnist(spec: DatasetSpec, data_root: Path) -> tuple[Splits, Path, dict]:
    """Official splits of a MedMNIST-format file: images as RGB uint8, classes as the label index (str).

    Raises :class:`DataError` for a missing, corrupt or malformed file, with the path and the fix.
    """
    path = npz_path(spec, data_root)
    if not path.is_file():
        raise DataError(missing_message(spec, Path(data_root)))
    splits: Splits = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            for split in ("train", "val", "test"):
                wanted = (f"{split}_images", f"{split}_labels")
                if split not in REQUIRED_SPLITS and not all(k in keys for k in wanted):
                    continue
                for key in wanted:
                    if key not in keys:
                        raise DataError(f"{path}: key '{key}' missing (found: {', '.join(sorted(keys)) or 'none'}); "
                                        f"a MedMNIST file holds {{train,val,test}}_{{images,labels}}")
                images = _images(npz[wanted[0]], spec, path, split)
                splits[split] = (images, _classes(npz[wanted[1]], spec, path, split))
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err}); delete it and run "
                        f"`dia-ray data prepare --dataset {spec.name}` again") from None
    for split, (images, classes) in splits.items():
        if len(images) != len(classes):
            raise DataError(f"{path}: {split}_images has {len(images)} images but {split}_labels {len(classes)} "
                            "labels; the file is malformed, replace it")
    return splits, path, {"presplit": True}


def _images(arr: np.ndarray, spec: DatasetSpec, path: Path, split: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, 1|3) → uint8 (N, H, W, 3), grey replicated (the paper's ``as_rgb``)."""
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise DataError(f"{path}: {split}_images has shape {arr.shape}; expected (N, H, W) or (N, H, W, 3)")
    if arr.shape[1:3] != (spec.image_size, spec.image_size):
        raise DataError(f"{path}: {split}_images are {arr.shape[1]}x{arr.shape[2]} px but {spec.name} at "
                        f"image size {spec.image_size} expects {spec.image_size}x{spec.image_size}; "
                        "replace the file or pick the matching --image-size")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise DataError(f"{path}: {split}_images are {arr.dtype}; expected uint8 pixels in 0..255")
        arr = arr.astype(np.uint8)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr)


def _classes(arr: np.ndarray, spec: DatasetSpec, path: Path, split: str) -> np.ndarray:
    """Labels (N, 1) or (N,) → the class name of each image (the label index as str), checked against the spec."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: {split}_labels have shape {arr.shape} and dtype {arr.dtype}; expected integer "
                        "labels of shape (N, 1) (multi-label MedMNIST sets are not supported)")
    allowed = {int(c) for c in spec.classes} if spec.classes else None
    if allowed is not None and arr.size:
        bad = sorted(set(np.unique(arr).tolist()) - allowed)
        if bad:
            raise DataError(f"{path}: {split}_labels contain {bad[:5]}, outside {spec.name}'s classes "
                            f"{sorted(allowed)}; the file is not {spec.name} (replace it)")
    return arr.astype(np.int64).astype(str)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``np.load``-able .npz (stored, fixed zip timestamps: byte-identical for identical arrays), written to a
    temporary name and renamed, so a reader never sees half a file. Arrays are streamed, not copied."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared data root from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def missing_message(spec: DatasetSpec, data_root: Path) -> str:
    name = file_name(spec)
    where = Path(data_root) / name
    if spec.synthetic:
        return f"{where} not found; run `dia-ray data prepare --dataset {spec.name} --data-root {data_root}`"
    if spec.image_size != MEDMNIST_SIZE:
        extra = " (MedMNIST+ provides 64, 128 and 224 px)" if spec.image_size not in (64, 128, 224) else ""
        return (f"{where} not found: {spec.name} at {spec.image_size} px needs that file{extra}; run "
                f"`dia-ray data prepare --dataset {spec.name} --image-size {spec.image_size} --online "
                f"--data-root {data_root}` or copy it there")
    return (f"{where} not found; run `dia-ray data prepare --dataset {spec.name} --online --data-root {data_root}` "
            f"or copy MedMNIST's {name} there")


def download(spec: DatasetSpec, data_root: Path, *, force: bool = False) -> Path:
    """Fetch ``<flag>[_<size>].npz`` from MedMNIST's Zenodo record into the data root, MD5-checked."""
    path = npz_path(spec, data_root)
    if path.is_file() and not force:
        return path
    try:
        import medmnist  # imports torch: only here, only when downloading
    except ImportError:
        raise DataError("downloading MedMNIST needs the medmnist package: pip install --no-deps 'medmnist>=3.0' "
                        f"(or copy {path.name} into {data_root})") from None
    info = medmnist.INFO.get(spec.location)
    suffix = "" if spec.image_size == MEDMNIST_SIZE else f"_{spec.image_size}"
    if info is None or f"url{suffix}" not in info:
        raise DataError(f"MedMNIST has no file for {spec.name} at {spec.image_size} px; "
                        "available sizes: 28, 64, 128, 224")
    url, md5 = info[f"url{suffix}"], info[f"MD5{suffix}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    log.info("downloading %s -> %s", url, path)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (https URL)
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"download of {url} has MD5 {digest.hexdigest()}, expected {md5}; try again later "
                            f"or copy {path.name} into {data_root}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(f"download of {url} failed ({err}); copy {path.name} into {data_root} instead") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
