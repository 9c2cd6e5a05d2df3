"""Small image operations shared by the corruption process and the augmentation (torch, any device)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius ceil(truncate·σ) (scipy's default truncation); σ = 0 → [1]."""
    if sigma <= 0:
        return torch.ones(1, dtype=dtype)
    radius = max(1, math.ceil(truncate * sigma))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float, padding: str = "zeros") -> torch.Tensor:
    """Separable Gaussian blur of the last two axes. ``padding`` zeros: mass near the border leaks out (a blurred
    mask stays inside its canvas); reflect: for images (scipy's default mode). x: (..., H, W)."""
    k = gaussian_kernel1d(sigma, x.dtype).to(x.device)
    if k.numel() == 1:
        return x.clone()
    shape = x.shape
    pad = k.numel() // 2  # reflect needs pad < side: σ ≤ side / 8 for the default truncation
    mode = "reflect" if padding == "reflect" else "constant"
    y = F.pad(x.reshape(-1, 1, *shape[-2:]), (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(shape)


def affine_warp(x: torch.Tensor, angle_deg: float, zoom: float = 1.0, mode: str = "bilinear") -> torch.Tensor:
    """Rotate by ``angle_deg`` and enlarge by ``zoom`` about the centre, same size, zeros outside.
    x: (C, H, W) or (B, C, H, W) (one transform for all)."""
    squeeze = x.dim() == 3
    y = x[None] if squeeze else x
    a = math.radians(angle_deg)
    # grid_sample maps output → input coordinates: the inverse rotation, shrunk by the zoom
    theta = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]],
                         dtype=y.dtype, device=y.device) / zoom
    grid = F.affine_grid(theta.expand(y.shape[0], 2, 3), list(y.shape), align_corners=False)
    out = F.grid_sample(y, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0] if squeeze else out


def uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    """One U(lo, hi) draw (float) from ``generator`` (a CPU generator)."""
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def randint(lo: int, hi: int, generator: torch.Generator) -> int:
    """One U{lo, …, hi} draw (both ends inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=generator))


def coin(p: float, generator: torch.Generator) -> bool:
    return float(torch.rand((), generator=generator, dtype=torch.float64)) < p
