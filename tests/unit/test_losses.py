"""The amplified NT-Xent loss and the shift loss (ALGORITHM.md §4.5, §4.6; checklist 11–16), checked against an
explicit double loop over the §4.5 formula written in plain Python floats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dia_ray.algo import losses
from dia_ray.algo.loops import contrastive_loss
from dia_ray.algo.losses import (
    amplified_nt_xent,
    normalize,
    shift_loss,
    similarity_mask,
)
from dia_ray.config import TrainConfig

TAU = 0.5


def _unit_rows(n_rows: int, dim: int, seed: int) -> torch.Tensor:
    z = torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z / z.norm(dim=1, keepdim=True)


def _masked(a: int, b: int, n: int, n_branches: int, mode: str) -> bool:
    """§4.5: self always; with shifted_removed, a view and the dissolved copy of the same image and shift."""
    if a == b:
        return True
    if n_branches == 3 and mode == "shifted_removed":
        ja, jb = a % n, b % n
        branches = {a // n, b // n}
        return ja == jb and 2 in branches and len(branches) == 2
    return False


def _loop_loss(z: torch.Tensor, n: int, n_branches: int, mode: str = "shifted_removed", tau: float = TAU,
               masked=_masked) -> float:
    """L_sim = (1/(branches·n)) Σ_{j<n} [ℓ_{j,n+j} + ℓ_{n+j,j}], ℓ_ab = −log(E_ab / (Σ_c E_ac + 1e-8) + 1e-8)."""
    rows = z.tolist()
    total = n_branches * n

    def e(a: int, b: int) -> float:
        if masked(a, b, n, n_branches, mode):
            return 0.0
        return math.exp(sum(p * q for p, q in zip(rows[a], rows[b])) / tau)

    def ell(a: int, b: int) -> float:
        denominator = sum(e(a, c) for c in range(total))
        return -math.log(e(a, b) / (denominator + 1e-8) + 1e-8)

    return sum(ell(j, n + j) + ell(n + j, j) for j in range(n)) / total


# ----------------------------------------------------------------------------------------------- mask (13)

@pytest.mark.parametrize("n", [1, 4, 6])
def test_shifted_removed_mask_zeroes_exactly_the_same_image_same_shift_dissolved_pairs(n):
    mask = similarity_mask(n, 3, "shifted_removed")
    assert mask.shape == (3 * n, 3 * n)
    assert torch.all(mask.diagonal() == 0)
    off = mask + torch.eye(3 * n)
    assert int((off == 0).sum()) == 4 * n
    for a in range(3 * n):
        for b in range(3 * n):
            assert mask[a, b] == (0.0 if _masked(a, b, n, 3, "shifted_removed") else 1.0)


def test_naive_mask_only_removes_self_similarity():
    n = 5
    assert torch.equal(similarity_mask(n, 3, "naive"), 1 - torch.eye(3 * n))
    assert torch.equal(similarity_mask(n, 2, "shifted_removed"), 1 - torch.eye(2 * n))  # CSI: no branch 3


@pytest.mark.parametrize("mode", ["shifted_removed", "naive"])
def test_positive_pairs_are_never_masked(mode):
    n = 6
    mask = similarity_mask(n, 3, mode)
    j = torch.arange(n)
    assert torch.all(mask[j, n + j] == 1) and torch.all(mask[n + j, j] == 1)


# ---------------------------------------------------------------------------------------- closed form (11)

@pytest.mark.parametrize("mode", ["shifted_removed", "naive"])
@pytest.mark.parametrize("n", [2, 4])
def test_amplified_nt_xent_equals_explicit_loop_over_the_formula(mode, n):
    z = _unit_rows(3 * n, 5, seed=n)
    expected = _loop_loss(z, n, 3, mode)
    assert float(amplified_nt_xent(z, n, 3, TAU, mode)) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_amplified_nt_xent_rejects_a_wrong_row_count():
    with pytest.raises(ValueError, match="rows"):
        amplified_nt_xent(_unit_rows(10, 3, 0), 4, 3)


def test_csi_loss_is_the_two_branch_loss_normalised_by_2n():
    n = 4
    z = _unit_rows(2 * n, 6, seed=1)
    assert float(amplified_nt_xent(z, n, 2)) == pytest.approx(_loop_loss(z, n, 2), rel=1e-10)


# ------------------------------------------------------------------------------------ normalisation 3N (12)

def test_three_halves_of_dia_loss_with_branch3_columns_masked_equals_csi_nt_xent(monkeypatch):
    """Masking every branch-3 column leaves the 2N positive terms with CSI's denominators; DIA divides their sum
    by 3N and CSI by 2N, so (3/2)·L_sim(DIA) = L_sim(CSI) on the first 2N views."""
    n = 4
    z = _unit_rows(3 * n, 6, seed=2)
    original = losses.similarity_mask

    def without_branch3(n_: int, n_branches: int, mode, device="cpu"):
        mask = original(n_, n_branches, mode, device)
        mask[:, 2 * n_ :] = 0.0
        return mask

    monkeypatch.setattr(losses, "similarity_mask", without_branch3)
    dia = float(amplified_nt_xent(z, n, 3, TAU, "naive"))
    csi = _loop_loss(z[: 2 * n], n, 2)
    assert 1.5 * dia == pytest.approx(csi, rel=1e-10)


def test_dia_loss_with_the_dissolved_branch_removed_is_csi_loss():
    n = 4
    z = _unit_rows(3 * n, 6, seed=3)
    assert float(amplified_nt_xent(z[: 2 * n], n, 2)) == pytest.approx(_loop_loss(z[: 2 * n], n, 2), rel=1e-10)
    assert float(amplified_nt_xent(z[: 2 * n], n, 2)) != pytest.approx(float(amplified_nt_xent(z, n, 3)), rel=1e-3)


# --------------------------------------------------------------------------------------- hard negatives (14)

def test_naive_is_larger_than_shifted_removed_when_branch3_copies_branch1():
    n = 6
    z12 = _unit_rows(2 * n, 8, seed=4)
    z = torch.cat([z12, z12[:n]])  # dissolved views identical to branch 1: the hardest possible negatives
    naive = float(amplified_nt_xent(z, n, 3, TAU, "naive"))
    removed = float(amplified_nt_xent(z, n, 3, TAU, "shifted_removed"))
    assert naive > removed
    assert naive == pytest.approx(_loop_loss(z, n, 3, "naive"), rel=1e-10)


# ----------------------------------------------------------------------------------------- temperature (15)

def test_temperature_defaults_to_half():
    assert TrainConfig(dataset="synthetic").temperature == 0.5
    z = _unit_rows(12, 4, seed=5)
    assert float(amplified_nt_xent(z, 4)) == pytest.approx(_loop_loss(z, 4, 3, tau=0.5), rel=1e-10)
    assert float(amplified_nt_xent(z, 4, temperature=0.2)) == pytest.approx(_loop_loss(z, 4, 3, tau=0.2), rel=1e-10)


# ------------------------------------------------------------------------------------------- shift loss (16)

def test_shift_loss_is_cross_entropy_averaged_over_all_views():
    logits = torch.randn(24, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(2).repeat(3)  # 3 branches x K x B=2
    expected = np.mean([math.log(sum(math.exp(v) for v in row)) - row[y]
                        for row, y in zip(logits.tolist(), labels.tolist())])
    assert float(shift_loss(logits, labels)) == pytest.approx(expected, rel=1e-10)


class _FixedHeads(nn.Module):
    """forward(x) → (f, z, logits) fixed tensors; x only fixes the batch size."""

    def __init__(self, z: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.z, self.logits = z, logits

    def forward(self, x: torch.Tensor):
        return torch.zeros(len(x), 1), self.z, self.logits


@pytest.mark.parametrize("branches", [3, 2])
def test_total_loss_is_sim_plus_shift_over_every_view(branches):
    b, k = 2, 4
    n = b * k
    g = torch.Generator().manual_seed(7)
    z = torch.randn(branches * n, 5, generator=g, dtype=torch.float64) * 3
    logits = torch.randn(branches * n, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(b).repeat(branches)
    cfg = TrainConfig(dataset="synthetic")
    loss, parts = contrastive_loss(_FixedHeads(z, logits), torch.zeros(branches * n, 3, 2, 2), labels, branches, cfg)
    l_sim = _loop_loss(z / (z.norm(dim=1, keepdim=True) + 1e-8), n, branches)
    ce = np.mean([math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits.tolist(), labels.tolist())])
    assert parts["loss_sim"] == pytest.approx(l_sim, rel=1e-9)
    assert parts["loss_shift"] == pytest.approx(ce, rel=1e-9)
    assert float(loss) == pytest.approx(l_sim + ce, rel=1e-9)


def test_normalize_puts_eps_outside_the_norm():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    out = normalize(z)
    assert out[0].tolist() == pytest.approx([3 / (5 + 1e-8), 4 / (5 + 1e-8)], rel=1e-12)
    assert out[1].tolist() == [0.0, 0.0]


def test_dissolved_views_receive_gradient_as_negatives_only():
    """Branch-3 rows are never anchors but sit in the anchors' denominators: their gradient is finite and non-zero."""
    n = 3
    z = _unit_rows(3 * n, 4, seed=8).clone().requires_grad_(True)
    amplified_nt_xent(z, n).backward()
    assert torch.isfinite(z.grad).all()
    assert (z.grad[2 * n :].abs().sum(dim=1) > 0).all()
