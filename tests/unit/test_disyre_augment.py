"""DISYRE's augmentation of the clean image (DISYRE.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dia_ray.algo.disyre import augment as aug


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gamma_keeps_the_range_and_follows_the_batchgenerators_formula():
    c = 0.2 + 0.6 * torch.rand(16, 16, generator=_gen(0), dtype=torch.float64)
    for g in (0.5, 0.8, 1.7):
        out = aug.gamma(c, g).numpy()
        lo, rng = c.min().item(), c.max().item() - c.min().item() + 1e-7
        np.testing.assert_allclose(out, ((c.numpy() - lo) / rng) ** g * rng + lo, rtol=1e-12)
        assert out.min() == pytest.approx(lo) and out.max() == pytest.approx(c.max().item(), abs=1e-6)


def test_gamma_draws_below_and_above_one_equally_often():
    g = _gen(1)
    draws = np.array([aug.draw_gamma(g) for _ in range(2000)])
    assert ((draws >= 0.5) & (draws <= 2.0)).all()
    assert (draws < 1).mean() == pytest.approx(0.5, abs=0.04)


def test_no_spatial_transform_when_no_coin_comes_up(monkeypatch):
    monkeypatch.setattr(aug, "coin", lambda p, g: False)
    x = torch.rand(1, 32, 32)
    assert torch.equal(aug.spatial(x, _gen(2)), x)
    assert torch.equal(aug.intensity(x, _gen(2)), x)


def test_mirror_flips_both_axes_when_both_coins_come_up(monkeypatch):
    monkeypatch.setattr(aug, "coin", lambda p, g: True)
    x = torch.rand(2, 8, 8)
    assert torch.equal(aug.mirror(x, _gen(3)), x.flip(-1).flip(-2))


def test_rotation_fills_with_zeros_outside_the_image(monkeypatch):
    flags = iter([False, True, False])  # elastic, rotate, scale
    monkeypatch.setattr(aug, "coin", lambda p, g: next(flags))
    monkeypatch.setattr(aug, "uniform", lambda lo, hi, g: 15.0)
    out = aug.spatial(torch.ones(1, 32, 32), _gen(4))
    assert out[0, 0, 0].abs() < 1e-3 and out[0, 16, 16] == pytest.approx(1.0, abs=1e-3)


def test_augment_keeps_shape_and_range_and_transforms_at_about_the_stated_rates():
    x = 0.1 + 0.8 * torch.rand(400, 1, 32, 32, generator=_gen(5))
    out = aug.augment(x, _gen(6))
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0
    # unchanged only without a flip (0.5²), any spatial transform (0.9³) and any intensity transform (0.85⁵)
    unchanged = (out == x).flatten(1).all(1).float().mean().item()
    assert unchanged == pytest.approx(0.25 * 0.9**3 * 0.85**5, abs=0.04)
