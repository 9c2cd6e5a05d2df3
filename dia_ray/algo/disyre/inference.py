"""Pixel-wise anomaly maps and image scores (DISYRE.md §5).

Default "mean-single-step" (the v2 code's "ensembled restorations"): with the trailing timesteps t_1..t_N,
    S(x) = w(x) · 1[x > 0] ⊙ (1/N) Σ_k |x − R_θ(x, t_k)|
per pixel and channel, w(x) = the fraction of entries of x that are > 0 (one scalar per window); the input is never
updated. "multi-step" is the v1 paper's iterative restoration (the code's cold-diffusion update, kept faithful,
including its reversed γ convention). Colour images: S is averaged over channels to one H×W map.
Images larger than the patch are scored with 75 %-overlap sliding windows blended by a Gaussian importance map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dia_ray.algo.disyre.model import crop_centre, pad_to, restore
from dia_ray.algo.disyre.schedule import gammas

WINDOW_STRIDE, WINDOW_SIGMA, WINDOW_MIN_WEIGHT = 0.25, 0.125, 1e-3
TOPK_AT_128 = 100


def _t(n: int, t: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long, device=device)


def postprocess(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """S · w(x) · 1[x > 0]; s, x: (B, C, P, P)."""
    positive = (x > 0).to(s.dtype)
    w = positive.flatten(1).mean(1).view(-1, 1, 1, 1)
    return s * w * positive


@torch.no_grad()
def mean_single_step(model: torch.nn.Module, x: torch.Tensor, timesteps: list[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, P, P) windows in [0, 1] → (S (B, C, P, P), restorations (B, N, C, P, P)); N network calls."""
    restored = torch.stack([restore(model, x, _t(len(x), t, x.device)) for t in timesteps], dim=1)
    s = (x[:, None] - restored).abs().mean(dim=1)
    return postprocess(s, x), restored


@torch.no_grad()
def multi_step(model: torch.nn.Module, x: torch.Tensor, timesteps: list[int], steps: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The iterative restoration: x^0 = x, x̂ = R(x^k, t_k), S += |x^k − x̂|, then
    x^{k+1} = clip(x̂ + (c_{k+1}/c_k)(x^k − x̂), 0, 1) with c_k = γ_{T−1−t_k} (last step: clip(x̂)); S /= N and
    post-processed with the final restored image. Returns (S, the iterates x^1..x^N as (B, N, C, P, P))."""
    c = gammas(steps)[[steps - 1 - t for t in timesteps]].tolist()
    xk, s, iterates = x, torch.zeros_like(x), []
    for k, t in enumerate(timesteps):
        x_hat = restore(model, xk, _t(len(x), t, x.device))
        s = s + (xk - x_hat).abs()
        keep = c[k + 1] / c[k] if k + 1 < len(timesteps) else 0.0
        xk = (x_hat + keep * (xk - x_hat)).clamp(0.0, 1.0)
        iterates.append(xk)
    return postprocess(s / len(timesteps), xk), torch.stack(iterates, dim=1)


def importance_map(patch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(P, P) separable Gaussian, σ = 0.125 P per axis, peak 1, clamped at ≥ 1e−3."""
    r = torch.arange(patch, dtype=torch.float32, device=device) - (patch - 1) / 2
    g = torch.exp(-0.5 * (r / (WINDOW_SIGMA * patch)) ** 2)
    return (g[:, None] * g[None, :]).clamp_min(WINDOW_MIN_WEIGHT)


def window_starts(side: int, patch: int) -> tuple[int, list[int]]:
    """(padded side, window starts): stride ⌊0.25 P⌋, side padded to ≥ P with (side − P) a multiple of the stride."""
    stride = max(1, int(WINDOW_STRIDE * patch))
    padded = max(side, patch)
    padded += (-(padded - patch)) % stride
    return padded, list(range(0, padded - patch + 1, stride))


MapMethod = Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def map_method(name: str, timesteps: list[int], steps: int) -> MapMethod:
    """What runs per window: "mean-single-step" or "multi-step" at ``timesteps`` of a ``steps``-step schedule."""
    if name == "multi-step":
        return lambda model, x: multi_step(model, x, timesteps, steps)
    return lambda model, x: mean_single_step(model, x, timesteps)


@torch.no_grad()
def anomaly_maps(model: torch.nn.Module, x: torch.Tensor, patch: int, method: MapMethod, batch_size: int = 128
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, S, S) images in [0, 1] → (maps (B, S, S) averaged over channels, restorations (B, N, C, S, S)).

    S ≤ P: one zero-padded window per image (the pad is background: S = 0 there), cropped back. S > P: sliding
    windows (all N steps, w and the background mask per window), blended with :func:`importance_map`."""
    side = x.shape[-1]
    if side <= patch:
        s, r = _batched(model, pad_to(x, patch), method, batch_size)
        return crop_centre(s, side).mean(dim=1), crop_centre(r, side)
    padded, starts = window_starts(side, patch)
    xp = pad_to(x, padded)
    coords = [(y, z) for y in starts for z in starts]
    windows = torch.stack([xp[:, :, y:y + patch, z:z + patch] for y, z in coords], dim=1).flatten(0, 1)
    s, r = _batched(model, windows, method, batch_size)
    weight = importance_map(patch, x.device)
    s_sum = torch.zeros_like(xp)
    r_sum = torch.zeros(len(x), r.shape[1], *xp.shape[1:], device=x.device)
    w_sum = torch.zeros(padded, padded, device=x.device)
    s, r = s.view(len(x), len(coords), *s.shape[1:]), r.view(len(x), len(coords), *r.shape[1:])
    for i, (y, z) in enumerate(coords):
        s_sum[..., y:y + patch, z:z + patch] += s[:, i] * weight
        r_sum[..., y:y + patch, z:z + patch] += r[:, i] * weight
        w_sum[y:y + patch, z:z + patch] += weight
    return crop_centre(s_sum / w_sum, side).mean(dim=1), crop_centre(r_sum / w_sum, side)


def _batched(model: torch.nn.Module, windows: torch.Tensor, method: MapMethod, batch_size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [method(model, windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def topk_count(height: int, width: int) -> int:
    """k of the top-k mean: 100 at 128², scaled with the image area (6 at 32², 5 at 28²) — our rescaling."""
    return max(1, round(TOPK_AT_128 * height * width / 128**2))


def image_scores(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """maps: (B, H, W) → the code's three reductions per image: mean, max, mean of the k largest values.
    Higher = more anomalous."""
    flat = maps.flatten(1)
    k = topk_count(*maps.shape[-2:])
    return {"mean": flat.mean(1), "max": flat.amax(1), "topk": flat.topk(k, dim=1).values.mean(1)}
