"""The synthetic corruption x → (x_c, severity a) that the restoration network learns to undo (DISYRE.md §2.3–2.5).

- FPI (both variants): a foreign A×A crop p of another recent training image is blended into the mask,
  x_tex = (1 − λ m) x + λ m p with λ ~ U(0, 1).
- ``dag`` (v2) first min–max matches p to x inside the mask, then adds a quantised intensity bias to the tissue
  classes (nearest of 5 MRI intensity levels) it selects inside the mask, and takes a = max(λ, β_eff).
- ``fpi`` (v1): a = λ.
Every sample is corrupted; a ≈ 0 (or a mask on background) means "no corruption" and t = T − 1.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from dia_ray.algo.disyre.ops import coin, gaussian_blur, randint, uniform
from dia_ray.algo.disyre.shapes import anomaly_mask, foreground, shape_scale

# The code's 5 intensity levels (fitted on brain MRI), kept for fidelity.
CODEBOOK = (0.00565079, 0.38283867, 0.61224216, 0.76920754, 0.9385473)
MINMAX_EPS = 1e-3
BIAS_CONSTANT_AT_64 = 1000.0
BIAS_BLUR_SIGMA = 1.0


@dataclass(frozen=True)
class CorruptionParams:
    variant: str  # "fpi" | "dag"
    box: int  # A
    bias_constant: float  # n_k / (Σ n_j + constant)

    @classmethod
    def make(cls, variant: str, box: int, bias_constant: float | None = None) -> "CorruptionParams":
        """``bias_constant`` None = 1000·(A/64)², the code's 1000 scaled with the mask area (DISYRE.md §7)."""
        const = BIAS_CONSTANT_AT_64 * shape_scale(box) ** 2 if bias_constant is None else bias_constant
        return cls(variant, box, const)


class PatchPool:
    """Per-worker FIFO cache of up to ``capacity`` random A×A crops (inside each image's foreground bounding box)
    of recent training images: the foreign patches. Before each batch it is topped up (one crop per image, at most
    two rounds, only while not full); every corrupted sample removes one uniformly random crop."""

    def __init__(self, capacity: int, box: int) -> None:
        self.box = box
        self.crops: deque[torch.Tensor] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.crops)

    def refill(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """x: (B, C, H, W) clean (augmented) images."""
        for _ in range(2):
            if len(self.crops) >= self.crops.maxlen:
                return
            for img in x:
                self.crops.append(self._crop(img, generator))

    def take(self, generator: torch.Generator) -> torch.Tensor:
        i = randint(0, len(self.crops) - 1, generator)
        crop = self.crops[i]
        del self.crops[i]
        return crop

    def _crop(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        a = self.box
        fg = foreground(img)
        y0, x0 = (_crop_start(fg.any(dim=axis), a, generator) for axis in (1, 0))
        return img[:, y0:y0 + a, x0:x0 + a].clone()


def _crop_start(occupied: torch.Tensor, a: int, generator: torch.Generator) -> int:
    """A crop start along one axis, uniform such that the crop lies inside the foreground's extent [lo, hi] (and
    the image); when the extent is shorter than the crop, the crop starts at lo (clamped to the image)."""
    n = len(occupied)
    idx = torch.nonzero(occupied).flatten()
    lo, hi = (int(idx[0]), int(idx[-1])) if len(idx) else (0, n - 1)
    start = min(lo, n - a)
    return randint(start, max(start, min(hi - a + 1, n - a)), generator)


def fpi_blend(x: torch.Tensor, patch: torch.Tensor, m: torch.Tensor, lam: float) -> torch.Tensor:
    """x_tex = (1 − λ m) x + λ m p. x, patch: (C, H, W); m: (H, W)."""
    return (1.0 - lam * m) * x + lam * m * patch


def minmax_match(patch: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``dag``: per channel, map the patch's [min, max] inside the mask (m > 0) onto x's, with the code's 1e−3 in the
    denominator, then clip to [0, 1]. patch, x: (C, H, W); m: (H, W)."""
    inside = m > 0
    if not inside.any():
        return patch
    p_in, x_in = patch[:, inside], x[:, inside]
    p_min, p_max = p_in.amin(1).view(-1, 1, 1), p_in.amax(1).view(-1, 1, 1)
    x_min, x_max = x_in.amin(1).view(-1, 1, 1), x_in.amax(1).view(-1, 1, 1)
    return ((patch - p_min) / (p_max - p_min + MINMAX_EPS) * (x_max - x_min) + x_min).clamp(0.0, 1.0)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) → (H, W) int64 index of the nearest codebook level of the channel mean (C = 1: the pixel)."""
    levels = torch.tensor(CODEBOOK, dtype=x.dtype, device=x.device)
    return (x.mean(dim=0)[..., None] - levels).abs().argmin(dim=-1)


def bias_levels(level: torch.Tensor, m: torch.Tensor, constant: float, generator: torch.Generator) -> torch.Tensor:
    """Which levels get the bias: level k independently with probability n_k / (Σ_j n_j + constant), n_k = pixels of
    level k inside the mask; none selected → all. Returns (K,) bool."""
    counts = torch.bincount(level[m > 0].flatten(), minlength=len(CODEBOOK)).double()
    probs = counts / (counts.sum() + constant)
    chosen = torch.rand(len(CODEBOOK), generator=generator, dtype=torch.float64) < probs
    return chosen if chosen.any() else torch.ones_like(chosen)


def quantised_bias(x_tex: torch.Tensor, m: torch.Tensor, constant: float, generator: torch.Generator
                   ) -> tuple[torch.Tensor, float]:
    """``dag`` intensity corruption: b = m · blur_σ=1(1[level ∈ selected]); x_c = clip(x_tex + s λ_b b, 0, 1) with
    λ_b ~ U(0, 1), s = ±1. Returns (x_c, β_eff = max |x_c − x_tex|, the severity after clipping). C = 3: the same
    bias on every channel."""
    level = quantise(x_tex)
    selected = bias_levels(level, m, constant, generator)
    q = gaussian_blur(selected[level].to(x_tex.dtype), BIAS_BLUR_SIGMA)
    lam = uniform(0.0, 1.0, generator)
    sign = 1.0 if coin(0.5, generator) else -1.0
    x_c = (x_tex + sign * lam * m * q).clamp(0.0, 1.0)
    return x_c, float((x_c - x_tex).abs().max())


def corrupt_one(x: torch.Tensor, pool: PatchPool, params: CorruptionParams, generator: torch.Generator
                ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """x: (C, H, W) clean image in [0, 1] → (x_c, severity a, mask m (H, W))."""
    m, (cy, cx) = anomaly_mask(x, params.box, generator)
    a, half = params.box, params.box // 2
    patch = torch.zeros_like(x)
    patch[:, cy - half:cy - half + a, cx - half:cx - half + a] = pool.take(generator)
    if params.variant == "dag":
        patch = minmax_match(patch, x, m)
    lam = uniform(0.0, 1.0, generator)
    x_tex = fpi_blend(x, patch, m, lam)
    if torch.equal(x_tex, x):
        lam = 0.0
    if params.variant == "fpi":
        return x_tex, lam, m
    x_c, beta = quantised_bias(x_tex, m, params.bias_constant, generator)
    return x_c, max(lam, beta), m


def corrupt(x: torch.Tensor, pool: PatchPool, params: CorruptionParams, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch: x (B, C, H, W) in [0, 1] (CPU) → (x_c (B, C, H, W), severities a (B,), masks (B, H, W)). Tops the
    foreign-patch pool up from this batch first."""
    pool.refill(x, generator)
    out = [corrupt_one(img, pool, params, generator) for img in x]
    return (torch.stack([o[0] for o in out]), torch.tensor([o[1] for o in out], dtype=torch.float64),
            torch.stack([o[2] for o in out]))
