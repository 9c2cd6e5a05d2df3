"""The dissolving transformation D_t and its heuristic variants (ALGORITHM.md §2.2, §3; checklist 1–8), checked
against closed forms, explicit loops and diffusers' own scheduler step — never against the code under test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dia_ray.algo.ddpm import build_scheduler, build_unet
from dia_ray.algo.dissolve import (
    BankDissolver,
    BlurDissolver,
    DiffusionDissolver,
    dissolve,
    gaussian_blur,
    gaussian_kernel1d,
    gaussian_sigma,
    make_dissolver,
    median_blur,
    sample_group_timesteps,
)
from dia_ray.algo.loops import build_views, contrastive_loss
from dia_ray.algo.resnet import ResNet18
from dia_ray.algo.resolution import check_resolution, from_ddpm, to_ddpm
from dia_ray.config import DDPMConfig, TrainConfig, UNetConfig

T = 1000
TINY_UNET = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=8)


class StubUNet(nn.Module):
    """ε̂ = eps_fn(x, t); records every input batch and timestep vector it receives."""

    def __init__(self, eps_fn=lambda x, t: torch.zeros_like(x)):
        super().__init__()
        self.eps_fn = eps_fn
        self.inputs: list[torch.Tensor] = []
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        self.inputs.append(x.detach().clone())
        self.timesteps.append(t.detach().clone())
        return SimpleNamespace(sample=self.eps_fn(x, t))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cosine_alpha_bar(u: np.ndarray, s: float = 0.008) -> np.ndarray:
    """§2.2 closed form in float64 (unnormalised: the f(0) factor cancels in every ratio used here)."""
    return np.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2


def _cosine_betas() -> np.ndarray:
    u = np.arange(T, dtype=np.float64)
    return np.clip(1.0 - _cosine_alpha_bar(u + 1) / _cosine_alpha_bar(u), 0.0, 0.999)


def _alphas_cumprod() -> torch.Tensor:
    return build_scheduler().alphas_cumprod


def _expected_dissolve(y: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """clamp(y/√ᾱ_t − √(1/ᾱ_t − 1)·ε̂, −1, 1) in float64, one t per sample."""
    a = ac.double()[t].view(-1, 1, 1, 1)
    return (y.double() / a.sqrt() - (1.0 / a - 1.0).sqrt() * eps.double()).clamp(-1.0, 1.0)


def _flip_state(received: torch.Tensor, original: torch.Tensor, f=lambda v: v) -> bool:
    """True if ``received`` is f(flipped original), False if it is f(original); fails if it is neither."""
    if torch.equal(received, f(original)):
        return False
    assert torch.equal(received, f(original.flip(-1))), "neither the upright image nor its horizontal flip"
    return True


# ------------------------------------------------------------------------------------------ D_t itself (1–3)

def test_dissolve_keeps_shape_and_range():
    y = torch.rand(6, 3, 32, 32)
    big_eps = torch.randn(6, 3, 32, 32, generator=_gen(0)) * 10
    out = dissolve(StubUNet(lambda x, t: big_eps), y, torch.full((6,), 99), _alphas_cumprod())
    assert out.shape == y.shape and out.dtype == y.dtype and out.device == y.device
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert (out < 0).any(), "raw01 mode must leave the output in [-1, 1], not map it back to [0, 1]"


def test_dissolver_output_has_input_shape_dtype_device_and_reference_range():
    x = torch.rand(5, 3, 28, 28)
    stub = StubUNet(lambda y, t: torch.ones_like(y) * 8.0)  # pushes values below 0
    out = DiffusionDissolver(stub, _alphas_cumprod(), (30, 130), 32)(x, None, 4, _gen(0))
    assert out.shape == (4 * 5, 3, 28, 28) and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= -1.0 and out.max() <= 1.0 and (out < 0).any()


def test_dissolve_equals_x0_prediction_closed_form_with_a_fixed_stub_noise():
    """Checklist 2 to 1e-6 over the whole t range. Small t needs √(1/ᾱ − 1) without float32 cancellation: computing
    1/ᾱ − 1 in float32 costs ≈2e-5 at t = 0 and ≈1.5e-6 at t = 30 (the reference precomputes it in float64);
    ((1 − ᾱ)/ᾱ) is exact to float32 rounding because 1 − ᾱ is computed exactly (Sterbenz)."""
    y = torch.rand(8, 3, 32, 32, generator=_gen(1))
    eps = torch.randn(8, 3, 32, 32, generator=_gen(2)) * 3
    t = torch.tensor([0, 30, 31, 99, 129, 229, 529, 999])
    ac = _alphas_cumprod()
    out = dissolve(StubUNet(lambda x, tt: eps), y, t, ac)
    assert torch.allclose(out.double(), _expected_dissolve(y, eps, t, ac), atol=1e-6, rtol=0)
    assert ((out == 1.0) | (out == -1.0)).any(), "the case should exercise the clamp"


def test_dissolve_draws_no_randomness():
    y = torch.rand(4, 3, 32, 32)
    eps = torch.randn(4, 3, 32, 32)
    t = torch.tensor([30, 60, 90, 120])
    stub = StubUNet(lambda x, tt: eps)
    torch.manual_seed(0)
    first = dissolve(stub, y, t, _alphas_cumprod())
    torch.manual_seed(123)  # a different global RNG state must not matter
    second = dissolve(stub, y, t, _alphas_cumprod())
    assert torch.equal(first, second)


def test_dissolve_with_zero_noise_is_rescaled_input():
    y = torch.rand(3, 3, 32, 32)
    ac = _alphas_cumprod()
    t = torch.tensor([0, 30, 99])
    out = dissolve(StubUNet(), y, t, ac)
    expected = (y.double() / ac.double()[t].sqrt().view(-1, 1, 1, 1)).clamp(-1, 1)
    assert torch.allclose(out.double(), expected, atol=1e-6, rtol=0)
    assert torch.allclose(out[0], y[0] / 0.99998, atol=1e-5)  # t = 0: y / sqrt(0.99996)


def test_dissolve_equals_diffusers_pred_original_sample_per_sample_t():
    """The independent route of §3.6: DDPMScheduler.step(ε̂, t, y).pred_original_sample with clip_sample=True."""
    scheduler = build_scheduler()
    y = torch.rand(8, 3, 32, 32, generator=_gen(3))
    eps = torch.randn(8, 3, 32, 32, generator=_gen(4))
    t = torch.tensor([0, 1, 30, 45, 60, 77, 99, 129])
    out = dissolve(StubUNet(lambda x, tt: eps), y, t, scheduler.alphas_cumprod)
    for i in range(8):
        ref = scheduler.step(eps[i : i + 1], int(t[i]), y[i : i + 1], generator=_gen(i)).pred_original_sample
        assert torch.allclose(out[i : i + 1], ref, atol=1e-6, rtol=0)


def test_pm1_mode_maps_input_to_minus_one_one_and_output_back():
    y = torch.rand(4, 3, 32, 32)
    eps = torch.randn(4, 3, 32, 32)
    t = torch.tensor([30, 50, 70, 90])
    ac = _alphas_cumprod()
    stub = StubUNet(lambda x, tt: eps)
    out = dissolve(stub, y, t, ac, input_range="pm1")
    assert torch.allclose(stub.inputs[0], 2 * y - 1, atol=1e-7)
    expected = (_expected_dissolve(2 * y - 1, eps, t, ac) + 1) / 2
    assert torch.allclose(out.double(), expected, atol=1e-6, rtol=0)
    assert out.min() >= 0.0 and out.max() <= 1.0


# --------------------------------------------------------------------------------------- cosine schedule (4)

def test_cosine_schedule_matches_closed_form_in_float64():
    scheduler = build_scheduler()
    assert scheduler.config.num_train_timesteps == T and len(scheduler.betas) == T
    assert np.allclose(scheduler.betas.double().numpy(), _cosine_betas(), atol=1e-6, rtol=0)
    alpha_bar = np.cumprod(1.0 - _cosine_betas())
    assert np.allclose(scheduler.alphas_cumprod.double().numpy(), alpha_bar, atol=1e-5, rtol=0)


@pytest.mark.parametrize("t, value", [(0, 0.99996), (30, 0.99647), (99, 0.97209), (129, 0.95461), (229, 0.86877),
                                      (329, 0.74741), (529, 0.44719)])
def test_alpha_bar_sanity_values_of_the_spec(t, value):
    assert float(_alphas_cumprod()[t]) == pytest.approx(value, abs=1e-4)


def test_alpha_bar_30_and_99_within_spec_tolerance():
    ac = _alphas_cumprod()
    assert float(ac[30]) == pytest.approx(0.9965, abs=1e-3)
    assert float(ac[99]) == pytest.approx(0.972, abs=1e-3)


# ------------------------------------------------------------------------------------- timestep sampling (5)

def test_sampled_timesteps_are_truncated_uniform_integers():
    g = _gen(5)
    t = sample_group_timesteps(4, 30, 130, generator=g)
    u = torch.rand(4, generator=_gen(5))  # the same stream: t = trunc(U·(hi − lo) + lo)
    assert t.dtype == torch.int64 and t.shape == (4,)
    assert t.tolist() == [math.floor(float(v) * 100 + 30) for v in u]


def test_reference_default_range_covers_exactly_30_to_99():
    g = _gen(6)
    draws = torch.cat([sample_group_timesteps(4, 30, 100, generator=g) for _ in range(5000)])
    assert set(draws.tolist()) == set(range(30, 100))


def test_dissolver_shares_one_t_per_group_and_draws_four_independent_groups():
    b, calls = 5, 40
    stub = StubUNet()
    dissolver = DiffusionDissolver(stub, _alphas_cumprod(), (30, 130), 32)
    g = _gen(7)
    for _ in range(calls):
        dissolver(torch.rand(b, 3, 28, 28), None, 4, g)
    assert len(stub.timesteps) == calls and dissolver.calls == calls  # the 4 groups go through ONE UNet call
    per_group = []
    for t in stub.timesteps:
        assert t.shape == (4 * b,) and t.dtype == torch.int64
        groups = t.view(4, b)
        assert (groups == groups[:, :1]).all(), "one t shared by the B images of a group"
        assert ((groups >= 30) & (groups < 130)).all()
        per_group.append(groups[:, 0])
    per_group = torch.stack(per_group)  # (calls, 4)
    distinct_in_call = [len(set(row.tolist())) for row in per_group]
    assert max(distinct_in_call) == 4 and sum(d > 1 for d in distinct_in_call) >= calls - 2
    assert len(set(per_group.flatten().tolist())) > 50  # fresh draws, not a fixed table


# ------------------------------------------------------------------------------------- order and flips (3.3, 6)

def test_ddpm_only_sees_upright_padded_images_at_its_resolution():
    """Checklist 6 through the real batch builder: every UNet input is the flipped or unflipped, zero-padded
    original — not rotated, cropped or jittered — at 32 px; the shift is applied afterwards."""
    b = 3
    x = torch.rand(b, 3, 28, 28)
    stub = StubUNet()
    dissolver = DiffusionDissolver(stub, _alphas_cumprod(), (30, 130), 32)
    build_views(x, torch.arange(b), TrainConfig(dataset="synthetic"), dissolver, _gen(8))
    (received,) = stub.inputs
    assert received.shape == (4 * b, 3, 32, 32)
    for row in range(4 * b):
        i = row % b
        _flip_state(received[row], F.pad(x[i], (2, 2, 2, 2)))
        assert received[row, :, :2].abs().sum() == 0 and received[row, :, :, -2:].abs().sum() == 0


def test_each_group_gets_a_fresh_flip():
    b, calls = 8, 25
    x = torch.rand(b, 3, 28, 28)
    stub = StubUNet()
    dissolver = DiffusionDissolver(stub, _alphas_cumprod(), (30, 130), 32)
    g = _gen(9)
    for _ in range(calls):
        dissolver(x, None, 4, g)
    padded = F.pad(x, (2, 2, 2, 2))
    flips = torch.tensor([[[_flip_state(inp[k * b + i], padded[i]) for i in range(b)] for k in range(4)]
                          for inp in stub.inputs])  # (calls, 4, B)
    n = flips.numel()
    assert abs(int(flips.sum()) - n / 2) <= 5 * math.sqrt(n / 4)
    differs = [(f != f[0]).any().item() for f in flips]
    assert all(differs), "the 4 groups of a call must not share one flip pattern"


# ------------------------------------------------------------------------------------ resolution pipeline (7)

def test_medmnist_round_trip_is_identity_with_zero_noise_and_unit_alpha():
    x = torch.rand(4, 3, 28, 28)
    stub = StubUNet()
    out = DiffusionDissolver(stub, torch.ones(T), (30, 130), 32)(x, None, 4, _gen(10))
    assert out.shape == (16, 3, 28, 28)
    for row in range(16):
        _flip_state(out[row], x[row % 4])
    assert stub.inputs[0].shape[-1] == 32


@pytest.mark.parametrize("size", [64, 224])
def test_folder_path_resizes_bilinear_without_antialias_both_ways(size):
    r = 32
    x = torch.rand(1, 3, size, size)
    stub = StubUNet()
    out = DiffusionDissolver(stub, torch.ones(T), (30, 130), r)(x, None, 4, _gen(11))
    def down(v: torch.Tensor) -> torch.Tensor:
        return F.interpolate(v, size=(r, r), mode="bilinear", align_corners=False, antialias=False)

    def up(v: torch.Tensor) -> torch.Tensor:
        return F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False, antialias=False)

    for k in range(4):
        flipped = _flip_state(stub.inputs[0][k : k + 1], x, down)
        w = x.flip(-1) if flipped else x
        assert torch.allclose(out[k : k + 1], up(down(w)), atol=1e-6)
    antialiased = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
    assert not torch.allclose(to_ddpm(x, r), antialiased, atol=1e-3)


def test_resolution_helpers_pad_and_crop_medmnist():
    x = torch.rand(2, 3, 28, 28)
    padded = to_ddpm(x, 32)
    assert padded.shape[-1] == 32 and torch.equal(padded[..., 2:30, 2:30], x)
    assert padded.sum() == pytest.approx(float(x.sum()), rel=1e-6)  # the border is zero (raw [0,1] scale)
    assert torch.equal(from_ddpm(padded, 28), x)
    same = torch.rand(1, 3, 32, 32)
    assert torch.equal(to_ddpm(same, 32), same) and torch.equal(from_ddpm(same, 32), same)  # CIFAR-like: identity
    with pytest.raises(ValueError, match="resolution 32"):
        check_resolution(28, 64)


# ------------------------------------------------------------------------------------------ no gradient (8)

def test_no_gradient_reaches_the_ddpm_through_a_training_step():
    unet = build_unet(DDPMConfig(unet=TINY_UNET))
    dissolver = DiffusionDissolver(unet, _alphas_cumprod(), (30, 130), 32)
    unet.requires_grad_(True)  # even trainable weights must stay untouched: dissolving runs under no_grad
    cfg = TrainConfig(dataset="synthetic")
    model = ResNet18()
    x = torch.rand(2, 3, 28, 28)
    views, labels, branches = build_views(x, torch.arange(2), cfg, dissolver, _gen(12))
    assert branches == 3 and not views.requires_grad
    loss, _ = contrastive_loss(model, views, labels, branches, cfg)
    loss.backward()
    assert all(p.grad is None for p in unet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ------------------------------------------------------------------------------------- heuristic blurs (3.5)

@pytest.mark.parametrize("k, taps", [
    (3, [1, 2, 1]), (5, [1, 4, 6, 4, 1]), (7, [2, 7, 14, 18, 14, 7, 2]),
])
def test_small_gaussian_kernels_are_opencv_fixed_tables(k, taps):
    """cv2.getGaussianKernel(k, 0) for odd k <= 7 is OpenCV's small_gaussian_tab, not the sigma formula (§3.5)."""
    kernel = gaussian_kernel1d(k)
    assert kernel.tolist() == [t / sum(taps) for t in taps]  # exact: dyadic fractions
    if k == 7:
        assert kernel[3] == 0.28125  # vs 0.2855 from the sigma formula (sigma 1.4)


def test_kernel_11_uses_the_sigma_formula():
    sigma = 0.3 * ((11 - 1) * 0.5 - 1) + 0.8
    assert sigma == pytest.approx(2.0) and gaussian_sigma(11) == pytest.approx(sigma)
    raw = [math.exp(-((i - 5) ** 2) / (2 * sigma**2)) for i in range(11)]
    expected = [v / math.fsum(raw) for v in raw]
    assert gaussian_kernel1d(11).tolist() == pytest.approx(expected, rel=1e-12)
    assert sum(expected) == pytest.approx(1.0) and expected[5] == pytest.approx(0.200565, abs=1e-6)


def test_even_kernel_sizes_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel1d(4)


def _loop_conv_zero_pad(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    c, h, w = img.shape
    k = kernel.shape[0]
    p = k // 2
    out = np.zeros_like(img)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for a in range(k):
                    for b in range(k):
                        y, x = i + a - p, j + b - p
                        if 0 <= y < h and 0 <= x < w:
                            acc += kernel[a, b] * img[ch, y, x]
                out[ch, i, j] = acc
    return out


@pytest.mark.parametrize("k, taps", [(3, [1, 2, 1]), (7, [2, 7, 14, 18, 14, 7, 2]), (11, None)])
def test_gaussian_blur_equals_zero_padded_loop_convolution(k, taps):
    img = np.random.default_rng(k).random((2, 9, 10))
    if taps is None:
        sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8
        g = np.exp(-((np.arange(k) - (k - 1) / 2) ** 2) / (2 * sigma**2))
    else:
        g = np.array(taps, dtype=np.float64)
    g /= g.sum()
    expected = _loop_conv_zero_pad(img, np.outer(g, g))
    out = gaussian_blur(torch.from_numpy(img).float()[None], k)[0].double().numpy()
    assert np.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_median_blur_equals_numpy_median_over_zero_padded_window(k):
    img = np.random.default_rng(10 + k).random((2, 8, 9)).astype(np.float32)
    p = k // 2
    padded = np.pad(img, ((0, 0), (p, p), (p, p)))
    expected = np.empty_like(img)
    for ch in range(2):
        for i in range(8):
            for j in range(9):
                expected[ch, i, j] = np.median(padded[ch, i : i + k, j : j + k])
    out = median_blur(torch.from_numpy(img)[None], k)[0].numpy()
    assert np.array_equal(out, expected)


def test_blur_dissolver_blurs_flipped_groups_and_draws_no_t():
    b = 3
    x = torch.rand(b, 3, 28, 28)
    dissolver = BlurDissolver("gaussian", 7)
    out = dissolver(x, None, 4, _gen(13))
    assert out.shape == (4 * b, 3, 28, 28)
    for row in range(4 * b):
        _flip_state(out[row : row + 1], x[row % b : row % b + 1], lambda v: gaussian_blur(v, 7))


def test_blur_dissolver_resize_goes_through_nearest_resolution():
    x = torch.rand(1, 3, 64, 64)
    out = BlurDissolver("median", 3, resize_to=32).blur(x)
    down = F.interpolate(x, size=(32, 32), mode="nearest")
    assert torch.equal(out, F.interpolate(median_blur(down, 3), size=(64, 64), mode="nearest"))


# ------------------------------------------------------------------------------------------------ bank

def test_bank_dissolver_draws_one_stored_version_per_image_per_group():
    m, k, b = 5, 3, 4
    versions = torch.rand(m, k, 3, 32, 32, generator=_gen(14))
    idx = torch.tensor([3, 0, 4, 3])
    bank = BankDissolver(versions)
    g = _gen(15)
    picks = []
    for _ in range(60):
        out = bank(torch.rand(b, 3, 28, 28), idx, 4, g)
        assert out.shape == (4 * b, 3, 28, 28) and out.dtype == torch.float32
        call = []
        for row in range(4 * b):
            matches = [v for v in range(k) if torch.equal(out[row], versions[idx[row % b], v, :, 2:30, 2:30])]
            assert len(matches) == 1, "each row must be exactly one stored version of its own image"
            call.append(matches[0])
        picks.append(call)
    picks = torch.tensor(picks)  # (calls, 4·B)
    assert set(picks.flatten().tolist()) == set(range(k))
    per_image_groups = picks.view(60, 4, b)
    assert (per_image_groups != per_image_groups[:, :1]).any(), "groups draw their versions independently"


# ------------------------------------------------------------------------------------------- make_dissolver

def test_make_dissolver_picks_the_operator_of_the_method():
    assert make_dissolver("none") is None
    blur = make_dissolver("median", kernel_size=3, blur_resize=True, resolution=32)
    assert isinstance(blur, BlurDissolver) and blur.kind == "median" and blur.kernel_size == 3
    assert blur.resize_to == 32
    assert make_dissolver("gaussian").resize_to is None
    assert isinstance(make_dissolver("diffusion", bank_versions=torch.zeros(1, 1, 3, 32, 32)), BankDissolver)
    online = make_dissolver("diffusion", unet=StubUNet(), alphas_cumprod=_alphas_cumprod(), t_range=(130, 230))
    assert isinstance(online, DiffusionDissolver) and (online.t_min, online.t_max) == (130, 230)
    with pytest.raises(ValueError, match="DDPM"):
        make_dissolver("diffusion")
