"""SimCLR augmentation A of CSI/DIA, batched and independent per sample (ALGORITHM.md §4.3).

Every random draw comes from the explicit ``generator`` on the tensor's device (``None`` = torch's default generator
for that device), in the order each docstring states, so equal seeds give equal augmentations. Unlike the reference
(numpy crop parameters, a host-side coin for the jitter order, §10.6) nothing here synchronises with the host.

Inputs may lie outside [0, 1] (dissolved views are in [-1, 1], §3.1): jittered samples end in [0, 1] because the
formulas clamp; samples a layer does not select pass through bit-identical and are never clamped.
"""

from __future__ import annotations

import math

import kornia.color
import torch
import torch.nn.functional as F

# ITU-R 601 luma, the reference's greyscale weights (§4.3 step 2).
_LUMA = (0.299, 0.587, 0.114)


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) U[0, 1) float32 on x's device; float32 whatever x's dtype, so the stream does not depend on precision."""
    return torch.rand(n, generator=generator, device=x.device, dtype=torch.float32)


def _uniform(n: int, lo: float, hi: float, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, x, generator)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) in x's dtype, to broadcast over (B, C, H, W)."""
    return v.to(x.dtype).view(-1, 1, 1, 1)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5) -> torch.Tensor:
    """F: exact torch.flip of the width axis for each sample with probability p (checklist 18; the reference used a
    grid-sample, which is exact only up to interpolation error). x: (B, C, H, W). Draws: selection (B,)."""
    selected = _rand(x.shape[0], x, generator) < p
    return torch.where(selected.view(-1, 1, 1, 1), x.flip(-1), x)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp((x - μ_c)·f + μ_c, 0, 1) with μ_c the spatial mean per channel (not luminance, §4.3).
    x: (B, C, H, W); factor: (B,)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return ((x - mean) * _per_sample(factor, x) + mean).clamp(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """The reference's RGB→HSV: hue = atan2(√3(g−b), 2r−g−b)/(2π) mod 1 (a circular approximation of the hexagonal
    hue, so not kornia's rgb_to_hsv), S = Δ/max, V = max, non-finite entries (black pixels: 0/0) set to 0.
    x: (B, 3, H, W) -> (B, 3, H, W) with hue in turns."""
    r, g, b = x.unbind(dim=-3)
    cmax = x.amax(dim=-3)
    delta = cmax - x.amin(dim=-3)
    hue = torch.atan2(math.sqrt(3.0) * (g - b), 2.0 * r - g - b) % (2.0 * math.pi) / (2.0 * math.pi)
    hsv = torch.stack((hue, delta / cmax, cmax), dim=-3)
    return torch.where(torch.isfinite(hsv), hsv, torch.zeros_like(hsv))


def adjust_hsv(x: torch.Tensor, hue: torch.Tensor, saturation: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """The reference's RandomHSVFunction: hue += f_h·255/360 mod 1 (its quirk: ±0.0708 turns for hue=0.1), S·f_s,
    V·f_b, HSV clamped to [0, 1], back to RGB. x: (B, 3, H, W); factors: (B,) each."""
    h, s, v = rgb_to_hsv(x).unbind(dim=-3)
    h = (h + hue.to(x.dtype).view(-1, 1, 1) * (255.0 / 360.0)) % 1.0
    s = s * saturation.to(x.dtype).view(-1, 1, 1)
    v = v * brightness.to(x.dtype).view(-1, 1, 1)
    hsv = torch.stack((h, s, v), dim=-3).clamp(0.0, 1.0)
    # kornia's hsv_to_rgb is the standard piecewise (sextant) formula; it takes the hue in radians.
    h, s, v = hsv.unbind(dim=-3)
    return kornia.color.hsv_to_rgb(torch.stack((h * (2.0 * math.pi), s, v), dim=-3))


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator | None,
    p: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
) -> torch.Tensor:
    """Colour jitter with probability p per sample (§4.3 step 1). x: (B, 3, H, W) -> (B, 3, H, W).

    Factors f_b, f_c, f_s ~ U(max(0, 1 − v), 1 + v), f_h ~ U(−hue, hue) per sample; the order {contrast, HSV} vs
    {HSV, contrast} is one coin per batch (as the reference). Draws, in order: selection (B,), order coin (1,),
    f_c (B,), f_h (B,), f_s (B,), f_b (B,)."""
    n = x.shape[0]
    selected = _rand(n, x, generator) < p
    contrast_first = _rand(1, x, generator) < 0.5
    f_c = _uniform(n, max(0.0, 1.0 - contrast), 1.0 + contrast, x, generator)
    f_h = _uniform(n, -hue, hue, x, generator)
    f_s = _uniform(n, max(0.0, 1.0 - saturation), 1.0 + saturation, x, generator)
    f_b = _uniform(n, max(0.0, 1.0 - brightness), 1.0 + brightness, x, generator)
    # The order coin lives on the device: instead of branching on it (a host sync), run contrast on both sides of
    # the HSV step and keep the one the coin picks. Contrast is cheap next to the HSV round trip.
    y = torch.where(contrast_first, adjust_contrast(x, f_c), x)
    y = adjust_hsv(y, f_h, f_s, f_b)
    y = torch.where(contrast_first, y, adjust_contrast(y, f_c))
    return torch.where(selected.view(-1, 1, 1, 1), y, x)


def random_grayscale(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.2) -> torch.Tensor:
    """L = 0.299R + 0.587G + 0.114B replicated to 3 channels with probability p per sample (§4.3 step 2).
    x: (B, 3, H, W) -> (B, 3, H, W). Draws: selection (B,)."""
    selected = _rand(x.shape[0], x, generator) < p
    weights = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    luma = (x * weights).sum(dim=-3, keepdim=True)
    return torch.where(selected.view(-1, 1, 1, 1), luma.expand_as(x), x)


def inception_crop_theta(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-sample inception-crop parameters as affine matrices θ = [[w/W, 0, b_x], [0, h/H, b_y]] (§4.3 step 3).

    10·n candidates (area fraction a ~ U(scale), log-aspect ρ ~ U(ln ratio)), w = round(√(a·HW·e^ρ)),
    h = round(√(a·HW/e^ρ)) in pixels; the first n with 0 < w ≤ W and 0 < h ≤ H are used in draw order, missing ones
    fall back to the full image; b_x = randint(w − W, W − w)/W inclusive, likewise b_y. Draws, in order: a (10n,),
    ρ (10n,), b_x (n,), b_y (n,). Returns (n, 2, 3) in ``dtype``."""
    probe = torch.empty(0, device=device)
    m = 10 * n
    area = _uniform(m, scale[0], scale[1], probe, generator) * float(height * width)
    aspect = torch.exp(_uniform(m, math.log(ratio[0]), math.log(ratio[1]), probe, generator))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # The (i+1)-th valid candidate is the first position whose running count of valid ones reaches i+1; searchsorted
    # finds it on the device (the reference's boolean indexing would need the count on the host).
    count = torch.cumsum(valid.long(), dim=0)
    pick = torch.searchsorted(count, torch.arange(1, n + 1, device=count.device))
    found = pick < m
    pick = pick.clamp_max(m - 1)
    w = torch.where(found, w[pick], float(width))
    h = torch.where(found, h[pick], float(height))
    b_x = _randint_inclusive(w - width, width - w, probe, generator) / width
    b_y = _randint_inclusive(h - height, height - h, probe, generator) / height
    theta = torch.zeros(n, 2, 3, device=probe.device, dtype=torch.float32)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = b_x
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = b_y
    return theta.to(dtype)


def _randint_inclusive(
    low: torch.Tensor, high: torch.Tensor, probe: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Per-element uniform integer in [low, high] (both inclusive, as numpy's randint(low, high + 1)); float tensors."""
    span = high - low + 1
    # float32 U·span can round up to span itself for U just below 1; the clamp keeps the upper bound inclusive only.
    return low + torch.minimum(torch.floor(_rand(low.shape[0], probe, generator) * span), span - 1)


def affine_crop(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each sample by its θ: bilinear grid-sample, align_corners=False, reflection padding, output size = input
    size (the reference's adaptive average pool to the image size is then a no-op). x: (B, C, H, W); θ: (B, 2, 3)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> torch.Tensor:
    """Inception crop as an affine warp (§4.3 step 3). scale (s, s) is a fixed scale (eval ``--resize_fix`` 0.54).
    x: (B, C, H, W) -> (B, C, H, W). Draws: those of :func:`inception_crop_theta`."""
    b, _, height, width = x.shape
    theta = inception_crop_theta(b, height, width, generator, scale, ratio, device=x.device)
    return affine_crop(x, theta)


def simclr_augment(
    x: torch.Tensor, generator: torch.Generator | None, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> torch.Tensor:
    """A = colour jitter → random greyscale → random resized crop (§4.3). Training uses crop_scale (0.08, 1); the
    CSI evaluation (§5) the same with (0.54, 1) or the fixed (0.54, 0.54). x: (B, 3, H, W) -> (B, 3, H, W)."""
    x = color_jitter(x, generator)
    x = random_grayscale(x, generator)
    return random_resized_crop(x, generator, scale=crop_scale)
