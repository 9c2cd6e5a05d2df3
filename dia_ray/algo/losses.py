"""The amplified NT-Xent loss (ALGORITHM.md §4.5) and the shift-classification loss (§4.6).

Layout of the projections: branch-major blocks of N = K·B views — rows [0, N) branch 1, [N, 2N) branch 2,
[2N, 3N) branch 3 (dissolved); inside a block, row j ↔ shift k = j // B, image j % B. Positives are (j, N+j) and
(N+j, j). Branch-3 rows are never anchors: they only add negatives to the denominators. CSI is the same loss with
two branches (normalised by 2N); DIA normalises by 3N (kept for loss-scale / LR fidelity).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossMode = Literal["shifted_removed", "naive"]


def similarity_mask(n: int, n_branches: int, mode: LossMode, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_branches·n)² float mask M: 0 on the diagonal; with ``shifted_removed`` and a dissolved branch also 0 for
    (j, 2n+j), (2n+j, j), (n+j, 2n+j), (2n+j, n+j) — a view is not contrasted with the dissolved copy of the same
    image under the same shift."""
    total = n_branches * n
    mask = 1.0 - torch.eye(total, device=device)
    if n_branches == 3 and mode == "shifted_removed":
        j = torch.arange(n, device=device)
        for a, b in ((j, 2 * n + j), (n + j, 2 * n + j)):
            mask[a, b] = 0.0
            mask[b, a] = 0.0
    return mask


def amplified_nt_xent(
    z: torch.Tensor,
    n: int,
    n_branches: int = 3,
    temperature: float = 0.5,
    mode: LossMode = "shifted_removed",
) -> torch.Tensor:
    """L_sim. z: (n_branches·n, d) L2-normalised projections in the layout above; n = K·B views per branch.

    ℓ_ab = −log(E_ab / (Σ_c E_ac + 1e-8) + 1e-8), E = exp(Z Zᵀ / τ) ⊙ M;  L = Σ_{j<n} (ℓ_{j,n+j} + ℓ_{n+j,j}) / (branches·n).
    """
    if z.shape[0] != n_branches * n:
        raise ValueError(f"expected {n_branches}·{n} rows, got {z.shape[0]}")
    sim = z @ z.t()
    e = torch.exp(sim / temperature) * similarity_mask(n, n_branches, mode, z.device)
    loss = -torch.log(e / (e.sum(dim=1, keepdim=True) + 1e-8) + 1e-8)
    j = torch.arange(n, device=z.device)
    return (loss[j, n + j].sum() + loss[n + j, j].sum()) / (n_branches * n)


def normalize(z: torch.Tensor) -> torch.Tensor:
    """z / (||z|| + 1e-8) (the reference's eps placement)."""
    return z / (z.norm(dim=1, keepdim=True) + 1e-8)


def shift_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_shift: cross-entropy over every view, dissolved ones included (target = their shift k)."""
    return F.cross_entropy(logits, labels)
