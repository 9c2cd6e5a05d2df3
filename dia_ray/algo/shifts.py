"""Shift transformations S_k of CSI/DIA (ALGORITHM.md §4.2) and the batch layout built from them (§4.4).

A shifted batch is grouped by shift: row j of ``shift_all(x)`` is S_{j // B}(x[j % B]); labels follow the same layout.
"""

from __future__ import annotations

from typing import Literal

import torch

ShiftKind = Literal["rotation", "cutperm"]


def rotate(x: torch.Tensor, k: int) -> torch.Tensor:
    """S_k for rotation: rot90 by k·90° counter-clockwise over (H, W). x: (B, C, H, W) -> (B, C, W, H)."""
    return torch.rot90(x, k, dims=(-2, -1))


def cutperm(x: torch.Tensor, k: int) -> torch.Tensor:
    """S_k for CutPerm (§4.2): bit k // 2 swaps the top/bottom halves, bit k % 2 the left/right halves.

    With h_mid = H // 2 the rows [h_mid:] are placed before [:h_mid] (so for odd H the larger half moves up), likewise
    for columns. x: (B, C, H, W) -> (B, C, H, W)."""
    if not 0 <= k <= 3:
        raise ValueError(f"cutperm shift index must be in 0..3, got {k}")
    h_mid, w_mid = x.shape[-2] // 2, x.shape[-1] // 2
    if k // 2:
        x = torch.cat((x[..., h_mid:, :], x[..., :h_mid, :]), dim=-2)
    if k % 2:
        x = torch.cat((x[..., :, w_mid:], x[..., :, :w_mid]), dim=-1)
    return x


def apply_shift(x: torch.Tensor, k: int, kind: ShiftKind) -> torch.Tensor:
    """S_k of the given family. x: (B, C, H, W)."""
    if kind == "rotation":
        return rotate(x, k)
    if kind == "cutperm":
        return cutperm(x, k)
    raise ValueError(f"shift kind '{kind}' unknown; known: rotation, cutperm")


def shift_all(x: torch.Tensor, kind: ShiftKind, n_shifts: int = 4) -> torch.Tensor:
    """[S_0(x); …; S_{K-1}(x)] concatenated along the batch, grouped by k (§4.4).

    x: (B, C, H, W) with H == W for rotation -> (K·B, C, H, W); row j is S_{j // B}(x[j % B])."""
    if not 1 <= n_shifts <= 4:
        raise ValueError(f"n_shifts must be in 1..4 (the shift families have 4 members), got {n_shifts}")
    if kind == "rotation" and n_shifts > 1 and x.shape[-2] != x.shape[-1]:
        raise ValueError(f"rotation shifts need square images to be batched, got {tuple(x.shape[-2:])}")
    return torch.cat([apply_shift(x, k, kind) for k in range(n_shifts)], dim=0)


def shift_labels(
    batch: int, n_shifts: int = 4, branches: int = 1, device: torch.device | str | None = None
) -> torch.Tensor:
    """Shift-classification targets for ``branches`` stacked outputs of :func:`shift_all` (§4.4, checklist 9).

    Returns a LongTensor (branches·K·B,) = ([0]*B + [1]*B + … + [K-1]*B) repeated ``branches`` times."""
    one_branch = torch.arange(n_shifts, device=device).repeat_interleave(batch)
    return one_branch.repeat(branches)
