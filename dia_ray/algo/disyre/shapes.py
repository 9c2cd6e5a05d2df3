"""Where and what shape a synthetic anomaly takes (DISYRE.md §2.1–2.2).

Every object lives in an A×A box centred on a foreground pixel; the three generators (rectangle, disk, blob; equal
odds) draw in box coordinates. Lengths are written for A = 64 in the code; for other boxes they scale by s = A/64
(DISYRE.md §7): sizes U{max(2, ⌈10s⌉), …, A − ⌈20s⌉}, disk margin ⌈10s⌉, softening σ ~ U(0, 5s).
All random draws come from one CPU ``torch.Generator``; the blob's noise uses a numpy generator seeded from it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from dia_ray.algo.disyre.ops import affine_warp, coin, gaussian_blur, randint, uniform

SHAPES = ("rectangle", "disk", "blob")
ROTATION_DEG = 15.0
SOFTEN_P = 0.7


def shape_scale(box: int) -> float:
    return box / 64.0


def size_range(box: int) -> tuple[int, int]:
    """U{lo, …, hi} of rectangle sides and disk diameters: (max(2, ⌈10s⌉), A − ⌈20s⌉), hi ≥ lo."""
    s = shape_scale(box)
    lo = min(box, max(2, math.ceil(10 * s)))
    return lo, max(lo, box - math.ceil(20 * s))


def rectangle(box: int, generator: torch.Generator) -> torch.Tensor:
    """Sides per axis ~ U{size_range}, random position in the box; p 0.5 rotated U(±15°), re-binarised at 0.5."""
    lo, hi = size_range(box)
    h, w = randint(lo, hi, generator), randint(lo, hi, generator)
    y0, x0 = randint(0, box - h, generator), randint(0, box - w, generator)
    m = torch.zeros(box, box)
    m[y0:y0 + h, x0:x0 + w] = 1.0
    if coin(0.5, generator):
        m = (affine_warp(m[None], uniform(-ROTATION_DEG, ROTATION_DEG, generator))[0] > 0.5).float()
    return m


def disk(box: int, generator: torch.Generator) -> torch.Tensor:
    """Diameter d ~ U{size_range}, centre per axis ~ U{d//2 + margin, …, A − d//2 − margin}, margin ⌈10s⌉."""
    lo, hi = size_range(box)
    d = randint(lo, hi, generator)
    margin = math.ceil(10 * shape_scale(box))
    c_lo, c_hi = d // 2 + margin, box - d // 2 - margin
    if c_hi < c_lo:  # tiny boxes: no room for the margin, centre the disk
        c_lo = c_hi = box // 2
    cy, cx = randint(c_lo, c_hi, generator), randint(c_lo, c_hi, generator)
    yy, xx = torch.meshgrid(torch.arange(box) + 0.5, torch.arange(box) + 0.5, indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= (d / 2) ** 2).float()


def blob(box: int, generator: torch.Generator) -> torch.Tensor:
    """[OURS] substitute for the code's bank of 300 synthetic 3-D shapes: Gaussian-smoothed white noise (σ = A/8)
    thresholded at a random quantile in [0.6, 0.9], largest connected component moved to the box centre (the bank's
    shapes are centred); then, as the code does with its shapes, rotated U(±15°), enlarged by 1/U(0.5, 0.75) about
    the centre, cropped to A, re-binarised at 0.5."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
    field = ndimage.gaussian_filter(rng.standard_normal((box, box)), sigma=box / 8)
    keep = field > np.quantile(field, uniform(0.6, 0.9, generator))
    labels, n = ndimage.label(keep)
    if n > 1:
        keep = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    offset = (box - 1) / 2 - np.asarray(ndimage.center_of_mass(keep))
    keep = ndimage.shift(keep.astype(np.float32), np.round(offset), order=0)
    m = torch.from_numpy(keep.astype(np.float32))
    angle, zoom = uniform(-ROTATION_DEG, ROTATION_DEG, generator), 1.0 / uniform(0.5, 0.75, generator)
    return (affine_warp(m[None], angle, zoom)[0] > 0.5).float()


def random_shape(box: int, generator: torch.Generator) -> torch.Tensor:
    """(A, A) mask in [0, 1]: one of the three generators (1:1:1), then p 0.7 softened by a Gaussian blur with
    σ ~ U(0, 5s) (zero padding: it stays inside the box)."""
    kind = SHAPES[randint(0, 2, generator)]
    m = {"rectangle": rectangle, "disk": disk, "blob": blob}[kind](box, generator)
    if coin(SOFTEN_P, generator):
        m = gaussian_blur(m, uniform(0.0, 5.0 * shape_scale(box), generator)).clamp(0.0, 1.0)
    return m


def foreground(x: torch.Tensor) -> torch.Tensor:
    """x: (C, H, W) → (H, W) bool, True where any channel is non-zero (background = all channels exactly 0)."""
    return (x != 0).any(dim=0)


def box_centre(fg: torch.Tensor, box: int, generator: torch.Generator) -> tuple[int, int]:
    """A centre c uniform among foreground pixels whose box [c − A//2, c − A//2 + A) lies inside the image
    (fallback: uniform over all valid centres)."""
    h, w = fg.shape
    half = box // 2
    valid = torch.zeros_like(fg)
    valid[half:h - box + half + 1, half:w - box + half + 1] = True
    cand = torch.nonzero(fg & valid)
    if len(cand) == 0:
        cand = torch.nonzero(valid)
    y, x = cand[randint(0, len(cand) - 1, generator)].tolist()
    return y, x


def place(shape: torch.Tensor, centre: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The (A, A) ``shape`` on a zero (H, W) canvas, its box's top-left at centre − A//2."""
    box = shape.shape[-1]
    y0, x0 = centre[0] - box // 2, centre[1] - box // 2
    canvas = torch.zeros(size, dtype=shape.dtype)
    canvas[y0:y0 + box, x0:x0 + box] = shape
    return canvas


def anomaly_mask(x: torch.Tensor, box: int, generator: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    """x: (C, H, W) clean image → ((H, W) mask m in [0, 1], zero on background and outside the box; box centre)."""
    fg = foreground(x)
    centre = box_centre(fg, box, generator)
    m = place(random_shape(box, generator), centre, tuple(fg.shape))
    return m * fg.to(m.dtype), centre
