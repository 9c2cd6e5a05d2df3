"""The dissolving transformation (ALGORITHM.md §3) and its heuristic variants (App. B).

D_t(y) = clamp(y / sqrt(ᾱ_t) - sqrt(1/ᾱ_t - 1) · ε̂(y, t), -1, 1): the DDPM's x0-prediction when the *clean* image is
treated as x_t. No noise is added. Computed directly (not through ``scheduler.step``, which also draws the noise of
x_{t-1} and throws it away, §10.2), with the 4 (batch, shift) groups in ONE UNet call with a per-sample t vector —
numerically what the reference's 4 calls compute (§3.6).

A dissolver maps a batch of clean images to ``n_groups`` dissolved copies, group k for shift k, each group with a
fresh per-sample horizontal flip (§3.3) and one t shared by its images (§3.2). The caller applies the shift.
"""

from __future__ import annotations

from typing import Literal, Protocol

import kornia.filters
import torch
import torch.nn.functional as F

from dia_ray.algo.precision import Precision, autocast
from dia_ray.algo.resolution import check_resolution, from_ddpm, to_ddpm


class Dissolver(Protocol):
    """x: (B, 3, S, S) clean images in [0, 1]; idx: (B,) dataset indices (banks look versions up by them).
    Returns (n_groups·B, 3, S, S), grouped by k (row j ↔ group j // B, image j % B), not yet shifted."""

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, n_groups: int,
                 generator: torch.Generator | None) -> torch.Tensor: ...


def dissolve(
    unet: torch.nn.Module,
    y: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    input_range: Literal["raw01", "pm1"] = "raw01",
    precision: Precision = "fp32",
) -> torch.Tensor:
    """One reverse step's x0-prediction. y: (B, 3, r, r); t: (B,) int timesteps. ``precision`` bf16 runs the UNet
    under autocast; the x0 formula is always evaluated in fp32.

    raw01 (reference, default): y is fed in [0, 1] although the DDPM was trained on [-1, 1], and the result stays in
    [-1, 1] (§3.1 value-range quirk). pm1: y ↦ 2y - 1 in, (out + 1) / 2 out, result in [0, 1]."""
    inp = y if input_range == "raw01" else y * 2.0 - 1.0
    a = alphas_cumprod.to(device=y.device, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    with autocast(precision, y.device):
        eps = unet(inp, t).sample
    eps = eps.float()
    # sqrt((1 - a) / a), not sqrt(1/a - 1): 1 - ᾱ is exact in float32, 1/ᾱ - 1 cancels badly for small t
    out = (inp.float() / a.sqrt() - ((1.0 - a) / a).sqrt() * eps).clamp(-1.0, 1.0)
    return out if input_range == "raw01" else (out + 1.0) / 2.0


def sample_group_timesteps(n_groups: int, t_min: int, t_max: int, generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """t_k = trunc(U(t_min, t_max)), one per (batch, shift) group: integers in [t_min, t_max) (§3.2, step_scale 100
    folded into the bounds: lo = 0.3 ↔ t_min = 30)."""
    u = torch.rand(n_groups, generator=generator, device=device)
    return (u * (t_max - t_min) + t_min).long().clamp_(t_min, t_max - 1)


def random_flip(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5) -> torch.Tensor:
    """Exact per-sample horizontal flip (F in the spec)."""
    sel = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(sel.view(-1, 1, 1, 1), x.flip(-1), x)


def flipped_groups(x: torch.Tensor, n_groups: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n_groups·B, ...) — the batch repeated per group, each repetition with a fresh random flip (§3.3)."""
    return torch.cat([random_flip(x, generator) for _ in range(n_groups)])


class DiffusionDissolver:
    """Online dissolving with a frozen DDPM (the paper's path, ``dissolve.mode: online``)."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, t_range: tuple[int, int],
                 resolution: int, input_range: Literal["raw01", "pm1"] = "raw01", precision: Precision = "fp32"):
        self.unet = unet.eval().requires_grad_(False)
        self.alphas_cumprod = alphas_cumprod.float()
        self.t_min, self.t_max = t_range
        self.resolution = resolution
        self.input_range = input_range
        self.precision = precision
        self.calls = 0  # UNet invocations (tests and benchmarks read it)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None, n_groups: int,
                 generator: torch.Generator | None) -> torch.Tensor:
        size = x.shape[-1]
        check_resolution(size, self.resolution)
        b = x.shape[0]
        w = flipped_groups(x, n_groups, generator)
        t = sample_group_timesteps(n_groups, self.t_min, self.t_max, generator, x.device).repeat_interleave(b)
        return from_ddpm(self.run(to_ddpm(w, self.resolution), t), size)

    @torch.no_grad()
    def run(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D_t on images already at the DDPM resolution (also used by the bank builder)."""
        self.calls += 1
        return dissolve(self.unet, y, t, self.alphas_cumprod, self.input_range, self.precision)


# OpenCV's getGaussianKernel(k, sigma <= 0) returns these fixed tables for k = 1, 3, 5, 7 (its small_gaussian_tab;
# k = 7 is not binomial) and uses the sigma formula only for other k (§3.5).
OPENCV_SMALL_GAUSSIAN: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    3: (1 / 4, 2 / 4, 1 / 4),
    5: (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16),
    7: (2 / 64, 7 / 64, 14 / 64, 18 / 64, 14 / 64, 7 / 64, 2 / 64),
}


def gaussian_sigma(kernel_size: int) -> float:
    """OpenCV's sigma for sigma = 0: 0.3·((k−1)/2 − 1) + 0.8 (k=11 → 2.0); used by OpenCV only for k > 7."""
    return 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8


def gaussian_kernel1d(kernel_size: int) -> torch.Tensor:
    """OpenCV's ``getGaussianKernel(k, 0)`` as float64 (k,): the fixed table for k ≤ 7, else exp(−x²/2σ²) sampled
    at x = i − (k−1)/2 with σ = :func:`gaussian_sigma`, normalised to sum 1."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"Gaussian kernel size must be odd and positive, got {kernel_size}")
    if kernel_size in OPENCV_SMALL_GAUSSIAN:
        return torch.tensor(OPENCV_SMALL_GAUSSIAN[kernel_size], dtype=torch.float64)
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(x**2) / (2 * gaussian_sigma(kernel_size) ** 2))
    return g / g.sum()


def gaussian_blur(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-channel blur with the outer product of :func:`gaussian_kernel1d` and ZERO padding (the reference's
    conv2d, padding k//2)."""
    k1 = gaussian_kernel1d(kernel_size)
    k2 = torch.outer(k1, k1).to(device=x.device, dtype=x.dtype).view(1, 1, kernel_size, kernel_size)
    c = x.shape[1]
    return F.conv2d(x, k2.expand(c, 1, kernel_size, kernel_size), padding=kernel_size // 2, groups=c)


def median_blur(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """kornia's median blur with ZERO padding as in the reference (kornia >= 0.8 defaults to reflect)."""
    return kornia.filters.median_blur(x, (kernel_size, kernel_size), border_type="constant")


class BlurDissolver:
    """Heuristic dissolving (App. B): Gaussian or median blur of kernel k, optionally through a nearest resize to r
    (``--resize_to_constant``). Deterministic given k; the per-group flips still apply."""

    def __init__(self, kind: Literal["gaussian", "median"], kernel_size: int = 7, resize_to: int | None = None):
        self.kind = kind
        self.kernel_size = kernel_size
        self.resize_to = resize_to

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        if self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="nearest")
        x = (gaussian_blur if self.kind == "gaussian" else median_blur)(x, self.kernel_size)
        if self.resize_to:
            x = F.interpolate(x, size=(size, size), mode="nearest")
        return x

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None, n_groups: int,
                 generator: torch.Generator | None) -> torch.Tensor:
        return self.blur(flipped_groups(x, n_groups, generator))


class BankDissolver:
    """Precomputed dissolving (``dissolve.mode: bank``, a documented deviation): each training image has K dissolved
    versions (t drawn from the range, random flips) stored at the DDPM resolution; every step draws one version per
    image per group. versions: (M, K, 3, r, r) aligned with the training images' order (idx)."""

    def __init__(self, versions: torch.Tensor):
        self.versions = versions
        self.calls = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor, n_groups: int,
                 generator: torch.Generator | None) -> torch.Tensor:
        self.calls += 1
        k = self.versions.shape[1]
        rows = idx.to(self.versions.device).repeat(n_groups)
        pick = torch.randint(0, k, (rows.shape[0],), generator=generator, device=x.device).to(self.versions.device)
        out = self.versions[rows, pick].to(device=x.device, dtype=torch.float32)
        return from_ddpm(out, x.shape[-1])


def make_dissolver(
    kind: str,
    *,
    t_range: tuple[int, int] = (30, 130),
    resolution: int = 32,
    input_range: Literal["raw01", "pm1"] = "raw01",
    kernel_size: int = 7,
    blur_resize: bool = False,
    precision: Precision = "fp32",
    unet: torch.nn.Module | None = None,
    alphas_cumprod: torch.Tensor | None = None,
    bank_versions: torch.Tensor | None = None,
) -> Dissolver | None:
    """The branch-3 operator for a method: ``none`` → None (CSI); gaussian/median → :class:`BlurDissolver`;
    diffusion → :class:`BankDissolver` when bank versions are given, else online :class:`DiffusionDissolver`."""
    if kind == "none":
        return None
    if kind in ("gaussian", "median"):
        return BlurDissolver(kind, kernel_size, resolution if blur_resize else None)
    if bank_versions is not None:
        return BankDissolver(bank_versions)
    if unet is None or alphas_cumprod is None:
        raise ValueError("diffusion dissolving needs a DDPM (unet + alphas_cumprod) or a bank")
    return DiffusionDissolver(unet, alphas_cumprod, t_range, resolution, input_range, precision)
