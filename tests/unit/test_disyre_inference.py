"""DISYRE anomaly maps, sliding windows and image scores (DISYRE.md §5; checklist 11–15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dia_ray.algo.disyre.inference import (anomaly_maps, image_scores, importance_map, map_method, mean_single_step,
                                           multi_step, topk_count, window_starts)
from dia_ray.algo.disyre.schedule import gammas


class Net(torch.nn.Module):
    """R(x, t) = f(x, t), recording every call's batch."""

    def __init__(self, f):
        super().__init__()
        self.f, self.calls = f, []

    def forward(self, x, t, return_dict=False):
        self.calls.append((x.clone(), t.clone()))
        return (self.f(x, t),)


def _images(n=3, c=1, side=32, seed=0, zero_rows=4):
    x = 0.05 + 0.9 * torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed))
    x[..., :zero_rows, :] = 0.0  # background
    return x


def _w(x):
    return (x > 0).float().flatten(1).mean(1).view(-1, 1, 1, 1)


def test_identity_network_gives_a_zero_map():
    x = _images()
    s, restored = mean_single_step(Net(lambda x, t: x), x, [99, 74, 49, 24])
    assert s.abs().max() == 0 and restored.shape == (3, 4, 1, 32, 32)


def test_zero_network_gives_w_times_x_on_the_foreground():
    x = _images()
    s, _ = mean_single_step(Net(lambda x, t: torch.zeros_like(x)), x, [99, 74, 49, 24])
    torch.testing.assert_close(s, _w(x) * x)
    assert s[..., :4, :].abs().max() == 0


def test_mean_single_step_averages_the_per_step_residuals_and_calls_the_network_n_times():
    x = _images(c=3)
    before = x.clone()
    net = Net(lambda x, t: x * (t.view(-1, 1, 1, 1) / 100.0))
    s, restored = mean_single_step(net, x, [99, 74, 49, 24])
    assert len(net.calls) == 4 and [int(t[0]) for _, t in net.calls] == [99, 74, 49, 24]
    assert all(torch.equal(inp, before) for inp, _ in net.calls)  # the input is never updated
    assert torch.equal(x, before)
    want = np.mean([np.abs(before.numpy() * (1 - t / 100.0)) for t in (99, 74, 49, 24)], axis=0)
    want = want * _w(before).numpy() * (before.numpy() > 0)
    np.testing.assert_allclose(s.numpy(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(restored[:, 1], before * 0.74)


def test_multi_step_is_the_cold_diffusion_update_with_reversed_gammas():
    x = _images(seed=1)
    f = lambda x, t: 0.8 * x + 0.05 + t.view(-1, 1, 1, 1) / 1000.0  # noqa: E731
    ts = [99, 79, 59, 39, 19]
    s, iterates = multi_step(Net(f), x, ts, 100)
    g = gammas(100).numpy()
    c = [g[99 - t] for t in ts]
    xk, acc = x.numpy().astype(np.float64), 0.0
    for k, t in enumerate(ts):
        x_hat = 0.8 * xk + 0.05 + t / 1000.0
        acc = acc + np.abs(xk - x_hat)
        xk = np.clip(x_hat if k == len(ts) - 1 else x_hat + c[k + 1] / c[k] * (xk - x_hat), 0, 1)
        np.testing.assert_allclose(iterates[:, k].numpy(), xk, rtol=1e-5, atol=1e-6)
    final = torch.from_numpy(xk).float()
    want = acc / len(ts) * _w(final).numpy() * (xk > 0)
    np.testing.assert_allclose(s.numpy(), want, rtol=1e-5, atol=1e-6)
    assert [round(c[k + 1] / c[k], 2) for k in range(4)] == [0.80, 0.53, 0.34, 0.21]


def test_small_images_are_padded_to_one_window_and_cropped_back():
    x = _images(n=2, c=3, side=28, zero_rows=0)
    net = Net(lambda x, t: torch.zeros_like(x))
    maps, restored = anomaly_maps(net, x, 32, map_method("mean-single-step", [99, 49], 100))
    assert len(net.calls) == 2 and net.calls[0][0].shape == (2, 3, 32, 32)  # one window per image, N calls
    assert maps.shape == (2, 28, 28) and restored.shape == (2, 2, 3, 28, 28)
    w = 28 * 28 / 32**2  # the pad ring is background
    torch.testing.assert_close(maps, (w * x).mean(1))


def test_window_grid_stride_and_padding():
    assert window_starts(224, 128) == (224, [0, 32, 64, 96])
    assert window_starts(200, 128) == (224, [0, 32, 64, 96])
    assert window_starts(128, 128) == (128, [0])
    assert window_starts(64, 32) == (64, [0, 8, 16, 24, 32])


def test_importance_map_is_a_gaussian_with_sigma_an_eighth_of_the_patch_and_floor():
    g = importance_map(128)
    r = np.arange(128) - 63.5
    want = np.exp(-0.5 * (r / 16.0) ** 2)
    np.testing.assert_allclose(g.numpy(), np.maximum(np.outer(want, want), 1e-3), rtol=1e-5, atol=1e-7)
    assert g.min().item() == pytest.approx(1e-3)


def test_sliding_windows_blend_per_window_maps_with_the_importance_weights():
    """R ≡ 0: each window's map is w_window · x, so the blend is x · Σ g w_i / Σ g (independent numpy loop)."""
    side, patch = 96, 64
    x = _images(n=2, side=side, seed=3, zero_rows=0)
    x[..., :, :40] = 0.0  # a background band: windows differ in w
    net = Net(lambda x, t: torch.zeros_like(x))
    maps, _ = anomaly_maps(net, x, patch, map_method("mean-single-step", [99], 100), batch_size=7)
    padded, starts = window_starts(side, patch)
    assert padded == 96 and starts == [0, 16, 32]
    assert sum(len(c[0]) for c in net.calls) == 2 * 9  # 9 windows per image, batched
    g = importance_map(patch).numpy()
    xn = x.numpy()
    num, den = np.zeros((2, side, side)), np.zeros((side, side))
    for y in starts:
        for z in starts:
            win = xn[:, 0, y:y + patch, z:z + patch]
            w = (win > 0).mean(axis=(1, 2))
            num[:, y:y + patch, z:z + patch] += g * w[:, None, None] * win
            den[y:y + patch, z:z + patch] += g
    np.testing.assert_allclose(maps.numpy(), num / den, rtol=1e-5, atol=1e-7)


def test_image_of_the_patch_size_is_not_windowed():
    x = _images(n=2, side=64)
    net = Net(lambda x, t: x)
    anomaly_maps(net, x, 64, map_method("mean-single-step", [99, 49], 100))
    assert [c[0].shape for c in net.calls] == [(2, 1, 64, 64)] * 2


def test_image_scores_are_mean_max_and_topk_mean():
    maps = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(4))
    scores = image_scores(maps)
    flat = maps.flatten(1).numpy()
    np.testing.assert_allclose(scores["mean"].numpy(), flat.mean(1), rtol=1e-6)
    np.testing.assert_allclose(scores["max"].numpy(), flat.max(1))
    np.testing.assert_allclose(scores["topk"].numpy(), np.sort(flat, 1)[:, -6:].mean(1), rtol=1e-6)
    same = image_scores(maps[:1].expand(3, 32, 32))
    assert all(len(set(v.tolist())) == 1 for v in same.values())


def test_topk_count_scales_100_at_128_squared_with_the_area():
    assert topk_count(128, 128) == 100
    assert topk_count(32, 32) == 6
    assert topk_count(28, 28) == 5
    assert topk_count(224, 224) == 306
    assert topk_count(4, 4) == 1
