"""Shift transformations S_k (ALGORITHM.md §4.2) and the shifted-batch layout (§4.4, checklist 9)."""

from __future__ import annotations

import pytest
import torch

from dia_ray.algo.shifts import apply_shift, cutperm, rotate, shift_all, shift_labels

# A hand-made 4×4 image, values = 10·row + col so every pixel says where it came from.
IMAGE = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]], dtype=torch.float32)


def _as_batch(img: torch.Tensor) -> torch.Tensor:
    return img.view(1, 1, *img.shape)


def test_rotate_quarter_turn_is_counter_clockwise():
    expected = torch.tensor([[3, 13, 23, 33], [2, 12, 22, 32], [1, 11, 21, 31], [0, 10, 20, 30]], dtype=torch.float32)
    assert torch.equal(rotate(_as_batch(IMAGE), 1)[0, 0], expected)


def test_rotate_half_turn_and_three_quarters():
    half = torch.tensor([[33, 32, 31, 30], [23, 22, 21, 20], [13, 12, 11, 10], [3, 2, 1, 0]], dtype=torch.float32)
    three = torch.tensor([[30, 20, 10, 0], [31, 21, 11, 1], [32, 22, 12, 2], [33, 23, 13, 3]], dtype=torch.float32)
    assert torch.equal(rotate(_as_batch(IMAGE), 0)[0, 0], IMAGE)
    assert torch.equal(rotate(_as_batch(IMAGE), 2)[0, 0], half)
    assert torch.equal(rotate(_as_batch(IMAGE), 3)[0, 0], three)


def test_cutperm_swaps_halves_per_bit():
    lr = torch.tensor([[2, 3, 0, 1], [12, 13, 10, 11], [22, 23, 20, 21], [32, 33, 30, 31]], dtype=torch.float32)
    tb = torch.tensor([[20, 21, 22, 23], [30, 31, 32, 33], [0, 1, 2, 3], [10, 11, 12, 13]], dtype=torch.float32)
    both = torch.tensor([[22, 23, 20, 21], [32, 33, 30, 31], [2, 3, 0, 1], [12, 13, 10, 11]], dtype=torch.float32)
    x = _as_batch(IMAGE)
    assert torch.equal(cutperm(x, 0)[0, 0], IMAGE)
    assert torch.equal(cutperm(x, 1)[0, 0], lr)
    assert torch.equal(cutperm(x, 2)[0, 0], tb)
    assert torch.equal(cutperm(x, 3)[0, 0], both)


def test_cutperm_odd_size_puts_rows_from_h_mid_first():
    x = torch.arange(3.0).view(1, 1, 3, 1)  # H = 3, h_mid = 1: rows [1:] then [:1]
    assert cutperm(x, 2).flatten().tolist() == [1.0, 2.0, 0.0]


def test_apply_shift_dispatches_and_rejects_unknown_kind():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(apply_shift(x, 1, "rotation"), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(apply_shift(x, 3, "cutperm"), cutperm(x, 3))
    with pytest.raises(ValueError, match="rotation, cutperm"):
        apply_shift(x, 1, "jigsaw")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["rotation", "cutperm"])
def test_shift_all_groups_rows_by_shift(kind):
    b = 3
    x = torch.rand(b, 3, 4, 4)
    out = shift_all(x, kind)
    assert out.shape == (4 * b, 3, 4, 4)
    for j in range(4 * b):
        assert torch.equal(out[j], apply_shift(x[j % b : j % b + 1], j // b, kind)[0])


def test_shift_labels_layout_repeats_per_branch():
    assert shift_labels(2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    labels = shift_labels(2, n_shifts=4, branches=3)
    assert labels.dtype == torch.long
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 3
