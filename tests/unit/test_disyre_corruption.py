"""DISYRE corruption process (DISYRE.md §2; checklist 4–7) against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from dia_ray.algo.disyre import corruption, shapes
from dia_ray.algo.disyre.corruption import (CODEBOOK, CorruptionParams, PatchPool, bias_levels, corrupt,
                                            corrupt_one, fpi_blend, minmax_match, quantise, quantised_bias)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(c: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random foreground in [0.05, 1] with a zero (background) ring of 2 px, like a padded MedMNIST image."""
    x = 0.05 + 0.95 * torch.rand(c, size, size, generator=_gen(seed))
    x[:, :2], x[:, -2:], x[:, :, :2], x[:, :, -2:] = 0, 0, 0, 0
    return x


# --- shapes (checklist 7) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("box", "lo", "hi"), [(64, 10, 44), (16, 3, 11), (32, 5, 22), (8, 2, 5)])
def test_size_ranges_scale_the_code_constants_with_the_box(box, lo, hi):
    assert shapes.size_range(box) == (lo, hi)


def test_unrotated_rectangles_cover_the_side_range(monkeypatch):
    monkeypatch.setattr(shapes, "coin", lambda p, g: False)  # no rotation: the sides are exact
    g, sides = _gen(1), set()
    for _ in range(400):
        m = shapes.rectangle(16, g)
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        h, w = len(rows), len(cols)
        assert m.sum() == h * w  # a filled axis-aligned rectangle
        sides.update((h, w))
    assert sides == set(range(3, 12))


def test_disks_have_the_drawn_diameter_and_keep_the_margin():
    g = _gen(2)
    diameters = set()
    for _ in range(300):
        m = shapes.disk(64, g)
        rows = torch.nonzero(m.any(1)).flatten()
        d = len(rows)
        diameters.add(d)
        assert 9 <= d <= 45
        assert rows[0] >= 10 - 1 and rows[-1] <= 64 - 10  # centre range keeps a ⌈10s⌉ margin
        assert m.sum() == pytest.approx(np.pi * d**2 / 4, rel=0.25)
    assert min(diameters) <= 12 and max(diameters) >= 42


@pytest.mark.parametrize("box", [16, 64])
def test_blobs_are_non_empty_binary_and_connected(box):
    """One component, moved to the centre before the enlargement; cropping the enlarged shape to the box can
    rarely cut it in two (measured: 1 in 200 at A = 64)."""
    g = _gen(3)
    components = []
    for _ in range(100):
        m = shapes.blob(box, g)
        assert set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() >= 4
        components.append(ndimage.label(m.numpy())[1])
    assert sum(c == 1 for c in components) >= 97


def test_masks_are_in_the_box_around_a_foreground_centre_and_zero_on_background():
    x = torch.zeros(1, 32, 32)
    x[:, 4:30, 10:28] = 0.5  # foreground rectangle; the rest is background
    g = _gen(4)
    for _ in range(100):
        m, (cy, cx) = shapes.anomaly_mask(x, 16, g)
        assert 0.0 <= m.min() and m.max() <= 1.0
        assert x[0, cy, cx] > 0  # the centre is a foreground pixel
        assert 8 <= cy <= 24 and 8 <= cx <= 24  # ≥ A/2 from the border: the box lies inside the image
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[cy - 8:cy + 8, cx - 8:cx + 8] = False
        assert m[outside].abs().max() == 0
        assert m[x[0] == 0].abs().max() == 0


def test_masks_fall_back_to_any_valid_centre_on_an_empty_image():
    m, (cy, cx) = shapes.anomaly_mask(torch.zeros(1, 32, 32), 16, _gen(5))
    assert 8 <= cy <= 24 and 8 <= cx <= 24
    assert m.abs().max() == 0  # all background: nothing to corrupt


# --- FPI (checklist 4) ------------------------------------------------------------------------------------------

def test_fpi_blend_formula():
    x, p = _image(3, seed=1), _image(3, seed=2)
    m = torch.rand(32, 32, generator=_gen(6))
    lam = 0.37
    want = x.numpy() * (1 - lam * m.numpy()) + lam * m.numpy() * p.numpy()
    np.testing.assert_allclose(fpi_blend(x, p, m, lam).numpy(), want, rtol=1e-6, atol=1e-7)
    assert torch.equal(fpi_blend(x, p, torch.zeros(32, 32), 0.9), x)
    assert torch.equal(fpi_blend(x, p, torch.ones(32, 32), 1.0), p)
    out = fpi_blend(x, p, m, lam)
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("variant", ["fpi", "dag"])
def test_an_empty_mask_leaves_the_image_and_gives_severity_zero(variant, monkeypatch):
    monkeypatch.setattr(corruption, "anomaly_mask", lambda x, box, g: (torch.zeros(x.shape[-2:]), (16, 16)))
    x = _image()
    pool = PatchPool(8, 16)
    pool.refill(x[None], _gen(0))
    x_c, a, _ = corrupt_one(x, pool, CorruptionParams.make(variant, 16), _gen(7))
    assert torch.equal(x_c, x) and a == 0.0


def test_fpi_severity_is_lambda_and_dag_severity_the_max_of_lambda_and_effective_bias(monkeypatch):
    x = _image()
    monkeypatch.setattr(corruption, "uniform", lambda lo, hi, g: 0.3)
    for beta, want in ((0.77, 0.77), (0.1, 0.3)):
        monkeypatch.setattr(corruption, "quantised_bias", lambda x_tex, m, c, g, b=beta: (x_tex, b))
        pool = PatchPool(8, 16)
        pool.refill(_image(seed=3)[None], _gen(0))
        _, a, m = corrupt_one(x, pool, CorruptionParams.make("dag", 16), _gen(8))
        assert m.sum() > 0 and a == pytest.approx(want)
    pool = PatchPool(8, 16)
    pool.refill(_image(seed=3)[None], _gen(0))
    _, a, _ = corrupt_one(x, pool, CorruptionParams.make("fpi", 16), _gen(8))
    assert a == pytest.approx(0.3)


# --- DAG min–max matching (checklist 5) -----------------------------------------------------------------------

def test_minmax_matching_maps_the_patch_range_onto_the_image_range_inside_the_mask():
    x, p = _image(3, seed=4), 0.2 + 0.3 * _image(3, seed=5)
    m = torch.zeros(32, 32)
    m[6:20, 9:25] = torch.rand(14, 16, generator=_gen(9)) * 0.9 + 0.05
    out = minmax_match(p, x, m)
    inside = (m > 0).numpy()
    for c in range(3):
        pc, xc = p[c].numpy()[inside], x[c].numpy()[inside]
        want = np.clip((p[c].numpy() - pc.min()) / (pc.max() - pc.min() + 1e-3) * (xc.max() - xc.min()) + xc.min(),
                       0, 1)
        np.testing.assert_allclose(out[c].numpy(), want, rtol=1e-5, atol=1e-6)
        got = out[c].numpy()[inside]
        assert got.min() == pytest.approx(xc.min(), abs=1e-6)
        assert got.max() == pytest.approx(xc.max(), abs=float(3e-3 * (xc.max() - xc.min()) / (pc.max() - pc.min())))


# --- intensity bias (checklist 6) -----------------------------------------------------------------------------

def test_quantise_assigns_the_nearest_codebook_level_of_the_channel_mean():
    x = torch.rand(3, 16, 16, generator=_gen(10))
    mean = x.mean(0).numpy()
    want = np.abs(mean[..., None] - np.asarray(CODEBOOK)).argmin(-1)
    np.testing.assert_array_equal(quantise(x).numpy(), want)


def test_bias_levels_select_with_probability_n_over_total_plus_the_constant():
    level = torch.zeros(32, 32, dtype=torch.long)
    level[:, 16:] = 3  # 16 x 32 = 512 pixels at level 0, 512 at level 3 inside the full mask
    m = torch.ones(32, 32)
    g = _gen(11)
    draws = torch.stack([bias_levels(level, m, 1000.0, g) for _ in range(3000)]).double()
    p = 512 / (1024 + 1000)
    none = (1 - p) ** 2  # then every level is selected
    for k in (0, 3):  # drawn directly, or through the all-levels fallback
        assert draws[:, k].mean().item() == pytest.approx(p + none, abs=0.03)
    assert draws[:, 1].mean().item() == pytest.approx(none, abs=0.03)  # absent levels only via the fallback
    assert (draws.sum(1) > 0).all()


def test_default_bias_constant_is_1000_at_the_code_box_and_scales_with_its_area():
    assert CorruptionParams.make("dag", 64).bias_constant == 1000.0
    assert CorruptionParams.make("dag", 16).bias_constant == pytest.approx(1000.0 / 16)
    assert CorruptionParams.make("dag", 16, bias_constant=1000.0).bias_constant == 1000.0


def test_quantised_bias_changes_only_the_biased_entries_clips_and_reports_the_effective_severity():
    x = _image(1, seed=6)
    m = torch.zeros(32, 32)
    m[10:22, 10:22] = 1.0
    for seed in range(20):
        x_c, beta = quantised_bias(x, m, 1000.0 / 16, _gen(seed))
        delta = (x_c - x).abs()
        assert 0.0 <= x_c.min() and x_c.max() <= 1.0
        assert delta[:, m == 0].max() == 0  # b = m·q: nothing outside the mask moves
        assert beta == pytest.approx(delta.max().item())  # β_eff after clipping, not λ_b
        # independent recomputation from the same draws
        g = _gen(seed)
        level = quantise(x)
        selected = bias_levels(level, m, 1000.0 / 16, g)
        from dia_ray.algo.disyre.ops import coin, gaussian_blur, uniform

        q = gaussian_blur(selected[level].float(), 1.0)
        lam = uniform(0.0, 1.0, g)
        sign = 1.0 if coin(0.5, g) else -1.0
        np.testing.assert_allclose(x_c.numpy(), np.clip(x.numpy() + sign * lam * (m * q).numpy(), 0, 1), atol=1e-6)


# --- the foreign-patch pool and the batch ---------------------------------------------------------------------

def test_patch_pool_tops_up_twice_per_batch_until_full_and_take_removes_one():
    pool = PatchPool(10, 8)
    x = torch.stack([_image(seed=s) for s in range(4)])
    pool.refill(x, _gen(12))
    assert len(pool) == 8  # two rounds of one crop per image
    pool.take(_gen(13))
    assert len(pool) == 7
    pool.refill(x, _gen(14))
    assert len(pool) == 10  # FIFO capped at its capacity


def test_patch_pool_crops_lie_inside_the_foreground_bounding_box():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 5:27, 9:20] = torch.linspace(0.1, 1.0, 11)  # columns carry their position
    pool = PatchPool(200, 8)
    for s in range(20):
        pool.refill(x, _gen(s))
    for crop in pool.crops:
        assert crop.shape == (1, 8, 8) and (crop > 0).all()


@pytest.mark.parametrize("variant", ["fpi", "dag"])
def test_corrupt_a_batch_keeps_shape_and_range_and_changes_pixels_only_inside_masks(variant):
    x = torch.stack([_image(3, seed=s) for s in range(6)])
    pool = PatchPool(512, 16)
    x_c, a, m = corrupt(x, pool, CorruptionParams.make(variant, 16), _gen(15))
    assert x_c.shape == x.shape and a.shape == (6,) and m.shape == (6, 32, 32)
    assert 0.0 <= x_c.min() and x_c.max() <= 1.0 and ((0 <= a) & (a <= 1)).all()
    changed = (x_c != x).any(dim=1)
    assert not (changed & (m == 0)).any()
    assert len(pool) == 12 - 6
