"""The code's augmentation of the clean training image, before corruption, so the target is augmented too
(DISYRE.md §4): spatial (elastic p 0.1, rotation ±15° p 0.1, scaling 0.75–1.25 p 0.1; cubic, zeros outside),
mirroring (each axis p 0.5), then intensity transforms with p 0.15 each (brightness, gamma, gamma of the negated
image, Gaussian noise, Gaussian blur), clipped to [0, 1]. Per sample, CPU, from one ``torch.Generator``.

[OURS] the elastic deformation approximates the library's: a displacement field of white noise smoothed with
σ = P/8 px per axis, scaled so its largest displacement is d·P/4 px with d ~ U(0, 0.25).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dia_ray.algo.disyre.ops import coin, gaussian_blur, uniform

SPATIAL_P, INTENSITY_P = 0.1, 0.15
GAMMA_EPS = 1e-7


def spatial(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x: (C, H, W). Elastic, rotation and scaling (each p 0.1) composed into one bicubic resampling."""
    h, w = x.shape[-2:]
    elastic, rotate, scale = (coin(SPATIAL_P, generator) for _ in range(3))
    if not (elastic or rotate or scale):
        return x
    a = math.radians(uniform(-15.0, 15.0, generator)) if rotate else 0.0
    zoom = uniform(0.75, 1.25, generator) if scale else 1.0
    theta = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]]) / zoom
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)
    if elastic:
        size = max(h, w)
        field = gaussian_blur(torch.randn(2, h, w, generator=generator), size / 8, "reflect")
        peak = field.abs().max().clamp_min(1e-12)
        pixels = field / peak * uniform(0.0, 0.25, generator) * size / 4
        grid = grid + torch.stack([pixels[0] * 2 / w, pixels[1] * 2 / h], dim=-1)[None]
    return F.grid_sample(x[None], grid, mode="bicubic", padding_mode="zeros", align_corners=False)[0]


def mirror(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    for axis in (-2, -1):
        if coin(0.5, generator):
            x = x.flip(axis)
    return x


def gamma(c: torch.Tensor, g: float) -> torch.Tensor:
    """One channel: ((c − min) / (range + ε))^γ (range + ε) + min — batchgenerators' gamma, range kept."""
    lo = c.min()
    rng = c.max() - lo + GAMMA_EPS
    return ((c - lo) / rng).clamp_min(0.0).pow(g) * rng + lo


def draw_gamma(generator: torch.Generator) -> float:
    """γ ~ U(0.5, 1) or U(1, 2), p 0.5 each."""
    return uniform(0.5, 1.0, generator) if coin(0.5, generator) else uniform(1.0, 2.0, generator)


def intensity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x: (C, H, W). Each transform with p 0.15, in the code's order; per-channel parameters."""
    if coin(INTENSITY_P, generator):
        x = x * torch.stack([torch.tensor(uniform(0.9, 1.1, generator)) for _ in x]).view(-1, 1, 1)
    if coin(INTENSITY_P, generator):
        x = torch.stack([gamma(c, draw_gamma(generator)) for c in x])
    if coin(INTENSITY_P, generator):
        x = torch.stack([-gamma(-c, draw_gamma(generator)) for c in x])
    if coin(INTENSITY_P, generator):
        x = x + uniform(0.0, 0.05, generator) * torch.randn(x.shape, generator=generator)
    if coin(INTENSITY_P, generator):
        x = torch.stack([gaussian_blur(c, uniform(0.5, 1.5, generator), "reflect") if coin(0.5, generator) else c
                         for c in x])
    return x


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x: (B, C, H, W) in [0, 1] → augmented, clipped to [0, 1]."""
    return torch.stack([intensity(mirror(spatial(img, generator), generator), generator) for img in x]).clamp(0, 1)
