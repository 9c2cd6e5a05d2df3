"""SimCLR augmentation A (ALGORITHM.md §4.3; checklist 17, 18), checked against per-pixel Python/numpy/colorsys
computations that replay the documented draw order of the explicit generator."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from dia_ray.algo.augment import (
    affine_crop,
    color_jitter,
    inception_crop_theta,
    random_grayscale,
    random_hflip,
    random_resized_crop,
    simclr_augment,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# ---------------------------------------------------------------------------------------------------- flip (18)

def test_hflip_is_exact_flip_or_identity_about_half_the_time():
    x = torch.rand(1000, 3, 4, 5)
    out = random_hflip(x, _gen(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is exactly one of the two
    assert _within_binomial(sum(flipped), len(x), 0.5)


# --------------------------------------------------------------------------------------------- colour jitter (17)

def _contrast_ref(img: np.ndarray, f: float) -> np.ndarray:
    mean = img.mean(axis=(1, 2), keepdims=True)
    return np.clip((img - mean) * f + mean, 0.0, 1.0)


def _hsv_ref(img: np.ndarray, f_h: float, f_s: float, f_b: float) -> np.ndarray:
    out = np.empty_like(img)
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            r, g, b = (float(v) for v in img[:, i, j])
            mx, mn = max(r, g, b), min(r, g, b)
            hue = math.atan2(math.sqrt(3) * (g - b), 2 * r - g - b) % (2 * math.pi) / (2 * math.pi)
            sat = (mx - mn) / mx if mx != 0 else 0.0
            hue = (hue + f_h * 255 / 360) % 1.0
            h, s, v = (min(max(c, 0.0), 1.0) for c in (hue, sat * f_s, mx * f_b))
            out[:, i, j] = colorsys.hsv_to_rgb(h, s, v)
    return out


def test_hsv_reference_agrees_with_colorsys_on_saturation_and_value():
    # Guards the reference above: S and V are colorsys' (only the hue formula is the atan2 approximation).
    img = np.random.default_rng(0).random((3, 4, 4))
    got = _hsv_ref(img, 0.0, 1.0, 1.0)
    for i in range(4):
        for j in range(4):
            _, s_in, v_in = colorsys.rgb_to_hsv(*img[:, i, j])
            _, s_out, v_out = colorsys.rgb_to_hsv(*got[:, i, j])
            assert s_out == pytest.approx(s_in, abs=1e-12) and v_out == pytest.approx(v_in, abs=1e-12)


def test_color_jitter_matches_per_pixel_formula_in_both_orders():
    x = torch.rand(6, 3, 3, 4)
    x[0, :, 0, 0] = 0.0  # black pixel: S = 0/0 -> 0
    x[1, :, 1, 1] = 0.5  # grey pixel: hue atan2(0, 0)
    orders_seen = set()
    for seed in range(8):
        out = color_jitter(x, _gen(seed))
        g = _gen(seed)  # replay the documented draws: selection, coin, f_c, f_h, f_s, f_b
        selected = torch.rand(6, generator=g) < 0.8
        contrast_first = bool(torch.rand(1, generator=g) < 0.5)
        f_c, f_h, f_s, f_b = (lo + (hi - lo) * torch.rand(6, generator=g)
                              for lo, hi in ((0.6, 1.4), (-0.1, 0.1), (0.6, 1.4), (0.6, 1.4)))
        orders_seen.add(contrast_first)
        for i in range(6):
            img = x[i].double().numpy()
            if not selected[i]:
                assert torch.equal(out[i], x[i])
                continue
            if contrast_first:
                img = _hsv_ref(_contrast_ref(img, float(f_c[i])), float(f_h[i]), float(f_s[i]), float(f_b[i]))
            else:
                img = _contrast_ref(_hsv_ref(img, float(f_h[i]), float(f_s[i]), float(f_b[i])), float(f_c[i]))
            np.testing.assert_allclose(out[i].double().numpy(), img, atol=2e-5)
    assert orders_seen == {True, False}


def test_color_jitter_leaves_a_fifth_bit_identical_and_clamps_the_rest():
    x = torch.rand(2000, 3, 6, 6) * 2 - 1  # dissolved views live in [-1, 1]
    out = color_jitter(x, _gen(1))
    same = torch.tensor([torch.equal(out[i], x[i]) for i in range(len(x))])
    assert _within_binomial(int(same.sum()), len(x), 0.2)
    assert out[~same].min() >= 0 and out[~same].max() <= 1
    assert x[same].min() < 0  # pass-through samples are not clamped


# ------------------------------------------------------------------------------------------------ greyscale (17)

def test_grayscale_makes_a_fifth_luma_grey_and_leaves_the_rest():
    x = torch.rand(2000, 3, 4, 4)
    out = random_grayscale(x, _gen(2))
    grey = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert _within_binomial(int(grey.sum()), len(x), 0.2)
    xn = x.double().numpy()
    luma = 0.299 * xn[:, 0] + 0.587 * xn[:, 1] + 0.114 * xn[:, 2]
    np.testing.assert_allclose(out[grey][:, 0].double().numpy(), luma[grey.numpy()], atol=1e-6)
    assert torch.equal(out[~grey], x[~grey])


# ---------------------------------------------------------------------------------------- resized crop (17)

def _replay_theta(seed, n, height, width, scale, ratio):
    """The selection rule of §4.3 in plain Python on the generator's documented draws (a, ρ, b_x, b_y)."""
    g = _gen(seed)
    m = 10 * n
    a = (scale[0] + (scale[1] - scale[0]) * torch.rand(m, generator=g)).tolist()
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    rho = (lo + (hi - lo) * torch.rand(m, generator=g)).tolist()
    chosen = []
    for ai, ri in zip(a, rho):
        area = ai * height * width
        w, h = round(math.sqrt(area * math.exp(ri))), round(math.sqrt(area / math.exp(ri)))
        if 0 < w <= width and 0 < h <= height and len(chosen) < n:
            chosen.append((w, h))
    chosen += [(width, height)] * (n - len(chosen))
    ux, uy = torch.rand(n, generator=g).tolist(), torch.rand(n, generator=g).tolist()
    rows = []
    for (w, h), u, v in zip(chosen, ux, uy):
        bx = (w - width) + min(math.floor(u * (2 * (width - w) + 1)), 2 * (width - w))
        by = (h - height) + min(math.floor(v * (2 * (height - h) + 1)), 2 * (height - h))
        rows.append((w, h, bx, by))
    return rows


@pytest.mark.parametrize(
    "scale, ratio",
    [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (1 / 8, 8.0)), ((0.9, 1.0), (3.0, 4.0))],
    ids=["training", "few-valid-partial-fallback", "none-valid-full-fallback"],
)
def test_crop_theta_uses_first_valid_candidates_then_full_image(scale, ratio):
    n, height, width = 40, 12, 10
    theta = inception_crop_theta(n, height, width, _gen(3), scale, ratio)
    for i, (w, h, bx, by) in enumerate(_replay_theta(3, n, height, width, scale, ratio)):
        assert theta[i, 0, 0].item() == pytest.approx(w / width, abs=1e-6)
        assert theta[i, 1, 1].item() == pytest.approx(h / height, abs=1e-6)
        assert theta[i, 0, 2].item() == pytest.approx(bx / width, abs=1e-6)
        assert theta[i, 1, 2].item() == pytest.approx(by / height, abs=1e-6)
        assert theta[i, 0, 1] == 0 and theta[i, 1, 0] == 0


def test_crop_translation_is_inclusive_and_keeps_the_crop_inside():
    theta = inception_crop_theta(4000, 16, 16, _gen(4), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert torch.allclose(theta[:, 0, 0], torch.full((4000,), 0.5))  # w = 8 of 16
    offsets = set((theta[:, 0, 2] * 16).round().long().tolist())
    assert offsets == set(range(-8, 9))  # randint(w - W, W - w) with both ends reachable


def _bilinear_crop_ref(img: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """grid_sample(bilinear, align_corners=False) of the affine grid, in loops. Crop points stay within the image
    (|b| ≤ 1 − w/W), where reflection padding reduces to clamping the source coordinate to [0, size − 1]."""
    c, height, width = img.shape
    out = np.zeros_like(img)
    for i in range(height):
        for j in range(width):
            xn, yn = (2 * j + 1) / width - 1, (2 * i + 1) / height - 1
            xs, ys = theta[0, 0] * xn + theta[0, 2], theta[1, 1] * yn + theta[1, 2]
            px = min(max(((xs + 1) * width - 1) / 2, 0.0), width - 1.0)
            py = min(max(((ys + 1) * height - 1) / 2, 0.0), height - 1.0)
            x0, y0 = int(math.floor(px)), int(math.floor(py))
            x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
            fx, fy = px - x0, py - y0
            out[:, i, j] = ((1 - fy) * ((1 - fx) * img[:, y0, x0] + fx * img[:, y0, x1])
                            + fy * ((1 - fx) * img[:, y1, x0] + fx * img[:, y1, x1]))
    return out


def test_affine_crop_matches_bilinear_reference_on_non_square_images():
    x = torch.rand(5, 3, 6, 8)
    theta = inception_crop_theta(5, 6, 8, _gen(5))
    out = affine_crop(x, theta)
    for i in range(5):
        ref = _bilinear_crop_ref(x[i].double().numpy(), theta[i].double().numpy())
        np.testing.assert_allclose(out[i].double().numpy(), ref, atol=1e-5)


def test_full_scale_square_crop_is_identity():
    x = torch.rand(3, 3, 28, 28)
    out = random_resized_crop(x, _gen(6), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_crop_keeps_shape_and_respects_scale_ranges():
    x = torch.rand(8, 3, 28, 28)
    assert random_resized_crop(x, _gen(7)).shape == x.shape
    train = inception_crop_theta(4000, 224, 224, _gen(7))
    frac = (train[:, 0, 0] * train[:, 1, 1]).numpy()
    assert frac.min() >= 0.08 - 0.01 and frac.max() <= 1.0 and frac.min() < 0.1
    fixed = inception_crop_theta(4000, 224, 224, _gen(8), scale=(0.54, 0.54))
    w, h = (fixed[:, 0, 0] * 224).numpy(), (fixed[:, 1, 1] * 224).numpy()
    assert np.all(np.abs(w * h - 0.54 * 224 * 224) <= (w + h) / 2 + 1)  # only the pixel rounding of w and h


# --------------------------------------------------------------------------------------------------- A = all

def test_simclr_augment_is_reproducible_per_seed():
    x = torch.rand(16, 3, 28, 28)
    a, b = simclr_augment(x, _gen(9)), simclr_augment(x, _gen(9))
    c = simclr_augment(x, _gen(10))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert simclr_augment(x, None, crop_scale=(0.54, 1.0)).shape == x.shape


def test_simclr_augment_is_jitter_then_grey_then_crop_in_draw_order():
    """§4.3: A = colour jitter → random greyscale → random resized crop, each drawing from the one generator in that
    order. The composition in that order reproduces A bit for bit; every other order does not."""
    x = torch.rand(32, 3, 28, 28)
    got = simclr_augment(x, _gen(11))

    def compose(order):
        g = _gen(11)
        y = x
        for op in order:
            y = op(y, g)
        return y

    jitter, grey, crop = color_jitter, random_grayscale, random_resized_crop
    assert torch.equal(got, compose((jitter, grey, crop)))
    for order in ((grey, jitter, crop), (crop, jitter, grey), (jitter, crop, grey)):
        assert not torch.allclose(got, compose(order))


def test_training_and_evaluation_crop_scale_ranges():
    """Training crops draw area fractions from (0.08, 1); the CSI evaluation's from (0.54, 1) (§4.3, §5)."""
    for scale, lo in (((0.08, 1.0), 0.08), ((0.54, 1.0), 0.54)):
        theta = inception_crop_theta(4000, 224, 224, _gen(12), scale=scale)
        w, h = (theta[:, 0, 0] * 224).numpy(), (theta[:, 1, 1] * 224).numpy()
        frac = w * h / 224**2
        assert np.all(w * h >= lo * 224**2 - (w + h) / 2 - 1) and frac.max() <= 1.0
        assert np.quantile(frac, 0.02) < lo + 0.03  # the lower end of the range is reached
