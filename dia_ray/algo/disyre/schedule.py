"""The severity schedule of DISYRE's "cold diffusion" (DISYRE.md §2.5, §5.1).

γ_i = sqrt(Π_{j≤i} (1 − β_j)) with β = linspace(1e−3, 0.2, T): γ falls from 0.9995 (i = 0) to ≈ 0.0045 (i = 99).
The network is conditioned on t(a) = argmin_i |γ_i − a| for a corruption of severity a ∈ [0, 1], so **t is inverse
severity**: a = 1 → t = 0, a = 0 (clean) → t = T − 1.
"""

from __future__ import annotations

import torch

BETA_START, BETA_END = 1e-3, 0.2


def gammas(steps: int = 100) -> torch.Tensor:
    """(T,) float64 γ_0 … γ_{T−1}, decreasing."""
    betas = torch.linspace(BETA_START, BETA_END, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0).sqrt()


def severity_to_t(a: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """a: (B,) severities in [0, 1] → (B,) int64 timesteps argmin_i |γ_i − a| (ties: the smaller i)."""
    g = gammas(steps).to(a.device)
    return (a.double()[:, None] - g[None, :]).abs().argmin(dim=1)


def inference_timesteps(steps: int = 100, n: int = 4) -> list[int]:
    """The code's "trailing" grid t_k = round(T − k T/N) − 1, k = 0..N−1 (N = 4 → [99, 74, 49, 24])."""
    return [round(steps - k * steps / n) - 1 for k in range(n)]
