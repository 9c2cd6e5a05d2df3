"""A generated fine-grained anomaly dataset, written in the real on-disk layouts so the real readers are exercised.

Normal and anomalous images come from the *same* coarse generator — a chest-radiograph-like anatomy with a
canonical orientation (two soft-edged lung fields, mediastinum, diaphragm dome, a vertical gradient) jittered per
image, on a low-frequency intensity field, plus mild pixel noise. Anomalies only add
fine detail of little pixel mass: a few 1–2 px specks, a short 1-px-thin line, a small checkerboard patch, each
with a random sign. Mean intensity and a blurred / downsampled image therefore carry (almost) no signal, the
high frequencies carry all of it: the regime DIA is built for (dissolving removes exactly the fine detail).

``synthetic`` → ``<root>/synthetic.npz`` (MedMNIST keys, grey 28 px, labels 0 = normal, 1 = anomaly; train holds
both classes like MedMNIST). ``synthetic-folder`` → ``<root>/synthetic-folder/{train,test}/{normal,anomaly}/*.png``
(RGB 64 px). Everything is a pure function of the seed (numpy ``Generator``); files are byte-identical across runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dia_ray.data.npz import write_npz

log = logging.getLogger(__name__)

# (normal, anomaly) counts per split.
NPZ_COUNTS = {"train": (600, 200), "val": (50, 50), "test": (100, 100)}
FOLDER_COUNTS = {"train": (300, 60), "test": (100, 100)}
NPZ_SIZE = 28
FOLDER_SIZE = 64
_NOISE = 0.02


def _soft_ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, a: float, b: float, theta: float,
                  wobble: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """A soft-edged (~3 px) ellipse mask with a slightly wobbly boundary."""
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / a
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / b
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    w = sum(rng.uniform(0, wobble) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
    width = 2.0 / (size * min(a, b))  # the boundary itself is not fine detail
    return 1.0 / (1.0 + np.exp(-np.clip((1.0 + w - rho) / width, -30, 30)))


def _coarse(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coarse structure: a chest-radiograph-like "anatomy" with a canonical orientation — two dark lung fields left
    and right of a bright mediastinum, a bright diaphragm dome at the bottom, a top-to-bottom intensity gradient —
    jittered in position, size and intensity. Like real radiographs (and unlike rotation-symmetric blobs) a rotated
    image is visibly "wrong", which CSI's rotation shifts rely on. Returns the (size, size) float image in about
    [0.1, 0.9] and the soft mask of the lungs, where lesions go."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    img = rng.uniform(0.5, 0.62) + rng.uniform(0.08, 0.16) * (0.5 - yy)  # brighter towards the top
    for _ in range(2):  # low-frequency field: at most ~1.5 cycles per image
        fx, fy = rng.uniform(-1.5, 1.5, size=2)
        img = img + rng.uniform(0.01, 0.04) * np.cos(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    lungs = np.zeros((size, size))
    gap = rng.uniform(0.09, 0.14)
    cy = rng.uniform(0.4, 0.5)
    for side in (-1, 1):
        cx = 0.5 + side * (gap + rng.uniform(0.12, 0.16))
        a, b = rng.uniform(0.13, 0.17), rng.uniform(0.25, 0.31)
        lungs = np.maximum(lungs, _soft_ellipse(xx, yy, cx, cy, a, b, side * rng.uniform(0.05, 0.2), 0.06, size, rng))
    img = img - rng.uniform(0.28, 0.38) * lungs
    dome_y = rng.uniform(0.76, 0.82) + 0.6 * (xx - 0.5 - rng.uniform(-0.05, 0.05)) ** 2  # highest in the middle
    img = img + rng.uniform(0.2, 0.28) / (1.0 + np.exp(-np.clip((yy - dome_y) * size / 1.5, -30, 30)))
    img = img + rng.uniform(0.08, 0.14) * np.exp(-(((xx - 0.5) / 0.06) ** 2)) * (yy < dome_y)  # mediastinum
    return img, lungs


def _fine_detail(rng: np.random.Generator, size: int, where: np.ndarray) -> np.ndarray:
    """The anomaly: a sparse (size, size) perturbation of random sign — specks, a thin line, a texture patch.

    Placed inside the main blob (``where`` > 0.5) like a lesion; two of the three kinds per image.
    """
    scale = size / NPZ_SIZE
    delta = np.zeros((size, size))
    inside = np.argwhere(where > 0.5)
    inside = inside[(inside.min(axis=1) >= 3) & (inside.max(axis=1) < size - 4)]

    def anchor() -> tuple[int, int]:
        if len(inside):
            return tuple(inside[rng.integers(len(inside))])
        return tuple(rng.integers(3, size - 4, size=2))

    for kind in rng.choice(3, size=2, replace=False):
        sign = rng.choice([-1.0, 1.0])  # random sign: no net pixel mass over the dataset
        if kind == 0:  # specks of 1 or 2 px, each with its own sign
            for _ in range(int(round(rng.integers(3, 6) * scale))):
                y, x = anchor()
                amp = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.45)
                delta[y, x] += amp
                if rng.random() < 0.5:
                    dy, dx = (0, 1) if rng.random() < 0.5 else (1, 0)
                    delta[y + dy, x + dx] += amp
        elif kind == 1:  # a short 1-px-thin line
            y, x = anchor()
            length, angle = rng.uniform(4, 7) * scale, rng.uniform(0, np.pi)
            t = np.arange(0, length, 0.5)
            pts = np.unique(np.stack([np.round(y + t * np.sin(angle)), np.round(x + t * np.cos(angle))], 1), axis=0)
            pts = pts[(pts >= 0).all(1) & (pts < size).all(1)].astype(int)
            delta[pts[:, 0], pts[:, 1]] += sign * rng.uniform(0.25, 0.35)
        else:  # a small patch of high-frequency texture (checkerboard: ~zero pixel mass)
            y, x = anchor()
            k = int(rng.integers(3, 5))
            y, x = min(y, size - k), min(x, size - k)
            checker = (np.indices((k, k)).sum(0) % 2) * 2 - 1
            delta[y:y + k, x:x + k] += sign * rng.uniform(0.15, 0.25) * checker
    return delta


def fine_grained_images(rng: np.random.Generator, n: int, size: int, *, anomalous: bool,
                        rgb: bool = False) -> np.ndarray:
    """``n`` images, uint8 (n, size, size) grey or (n, size, size, 3) RGB; anomalies add only fine detail."""
    out = np.empty((n, size, size, 3) if rgb else (n, size, size), np.uint8)
    for i in range(n):
        img, main = _coarse(rng, size)
        if anomalous:
            img = img + _fine_detail(rng, size, main)
        if rgb:  # a per-image tint of the same luminance structure (endoscopy/fundus-like colour)
            tint = np.array([1.0, 0.8, 0.7]) + rng.uniform(-0.1, 0.1, size=3)
            img = img[..., None] * tint
        img = img + rng.normal(0.0, _NOISE, size=img.shape)
        out[i] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


def _split(rng: np.random.Generator, counts: tuple[int, int], size: int, rgb: bool
           ) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels (0 = normal, 1 = anomaly) of one split, shuffled."""
    normal = fine_grained_images(rng, counts[0], size, anomalous=False, rgb=rgb)
    anomaly = fine_grained_images(rng, counts[1], size, anomalous=True, rgb=rgb)
    images = np.concatenate([normal, anomaly])
    labels = np.repeat(np.array([0, 1], np.uint8), counts)
    order = rng.permutation(len(images))
    return images[order], labels[order]


def generate_npz(path: Path, *, seed: int = 0, size: int = NPZ_SIZE) -> Path:
    """Write the ``synthetic`` dataset as a MedMNIST-format npz (grey, labels (N, 1) uint8)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, counts in NPZ_COUNTS.items():
        images, labels = _split(rng, counts, size, rgb=False)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, arrays)
    log.info("generated synthetic dataset (seed %d, %d px) at %s", seed, size, path)
    return Path(path)


def generate_folder(directory: Path, *, seed: int = 0, size: int = FOLDER_SIZE) -> Path:
    """Write ``synthetic-folder``: ``directory/{train,test}/{normal,anomaly}/NNNNN.png`` (RGB).

    Built in a temporary sibling directory and renamed into place, so a crash never leaves half a dataset.
    """
    from PIL import Image

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        os.chmod(tmp, 0o755)
        rng = np.random.default_rng(seed)
        for split, counts in FOLDER_COUNTS.items():
            images, labels = _split(rng, counts, size, rgb=True)
            for cls in ("normal", "anomaly"):
                (tmp / split / cls).mkdir(parents=True)
            for i, (img, label) in enumerate(zip(images, labels)):
                Image.fromarray(img).save(tmp / split / ("anomaly" if label else "normal") / f"{i:05d}.png")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("generated synthetic-folder dataset (seed %d, %d px) at %s", seed, size, directory)
    return directory
