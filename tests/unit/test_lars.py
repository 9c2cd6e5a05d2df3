"""LARS(SGD) and the warm-up + cosine schedule (ALGORITHM.md §4.7; checklist 19, 21)."""

from __future__ import annotations

import math

import pytest
import torch

from dia_ray.algo.lars import LARS, fractional_epoch, lr_at
from dia_ray.config import OptimConfig

LR, MOM, WD, TRUST, EPS = 0.1, 0.9, 1e-6, 0.001, 1e-8


def _toy_grads(w: torch.Tensor, b: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a small regression loss at the current weights (fixed data per step)."""
    gen = torch.Generator().manual_seed(100 + step)
    x, y = (torch.randn(5, n, generator=gen, dtype=w.dtype) for n in (3, 2))
    w_, b_ = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ((x @ w_ + b_ - y) ** 2).sum().backward()
    return w_.grad, b_.grad


def _hand_step(values: list[list[float]], grads: list[list[float]], bufs: list[list[float] | None], lr: float):
    """torchlars + SGD per element, in plain Python lists."""
    new_values, new_bufs = [], []
    for p, g, buf in zip(values, grads, bufs):
        p_norm = math.sqrt(sum(v * v for v in p))
        g_norm = math.sqrt(sum(v * v for v in g))
        local = TRUST * p_norm / (g_norm + WD * p_norm + EPS) if p_norm > 0 and g_norm > 0 else 1.0
        d = [(gi + WD * pi) * local for pi, gi in zip(p, g)]
        buf = d if buf is None else [MOM * bi + di for bi, di in zip(buf, d)]
        new_values.append([pi - lr * bi for pi, bi in zip(p, buf)])
        new_bufs.append(buf)
    return new_values, new_bufs


def test_lars_matches_hand_written_update_for_two_steps():
    w = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)  # ‖p‖ = 0: local LR falls back to 1
    pw, pb = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
    opt = LARS([pw, pb], lr=LR, momentum=MOM, weight_decay=WD, trust_coef=TRUST, eps=EPS)
    values = [w.flatten().tolist(), b.tolist()]
    bufs: list = [None, None]
    for step, lr in enumerate((LR, 0.55)):  # the schedule changes the LR between steps
        for group in opt.param_groups:
            group["lr"] = lr
        gw, gb = _toy_grads(pw, pb, step)
        pw.grad, pb.grad = gw.clone(), gb.clone()
        opt.step()
        values, bufs = _hand_step(values, [gw.flatten().tolist(), gb.tolist()], bufs, lr)
        assert pw.detach().flatten().tolist() == pytest.approx(values[0], rel=1e-12, abs=1e-15)
        assert pb.detach().tolist() == pytest.approx(values[1], rel=1e-12, abs=1e-15)
        assert torch.equal(pw.grad, gw)  # the gradient itself is not overwritten


def test_lars_equals_torchlars_style_wrapper_around_sgd():
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ref.load_state_dict(ours.state_dict())
    lars = LARS(ours.parameters(), lr=LR)
    sgd = torch.optim.SGD(ref.parameters(), lr=LR, momentum=MOM, weight_decay=0)  # torchlars hides SGD's wd
    for step in range(3):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        for model in (ours, ref):
            model.zero_grad()
            model(x).pow(2).mean().backward()
        with torch.no_grad():  # torchlars' apply_adaptive_lrs, per parameter tensor
            for p in ref.parameters():
                p_norm, g_norm = p.norm(), p.grad.norm()
                local = TRUST * p_norm / (g_norm + WD * p_norm + EPS) if p_norm > 0 and g_norm > 0 else 1.0
                p.grad.add_(p, alpha=WD).mul_(local)
        lars.step()
        sgd.step()
        for a, b in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_lars_skips_parameters_without_gradient():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = LARS([p, q], lr=LR)
    p.grad = torch.full((3,), 0.5)
    opt.step()
    assert torch.equal(q.detach(), torch.ones(3)) and "momentum_buffer" not in opt.state[q]
    assert not torch.equal(p.detach(), torch.ones(3))


def test_lr_schedule_trace():
    cfg = OptimConfig()
    assert lr_at(fractional_epoch(0, 0, 57), cfg) == pytest.approx(0.1)  # iteration 0 runs at 0.1
    assert lr_at(5.0, cfg) == pytest.approx(0.55)
    assert lr_at(10.0, cfg) == pytest.approx(1.0)
    assert lr_at(10.0 + 1e-9, cfg) == pytest.approx(1.0)  # continuous at the hand-over
    assert lr_at(200.0, cfg) == pytest.approx((1 + math.cos(math.pi * 190 / 1000)) / 2)
    assert lr_at(200.0, cfg) == pytest.approx(0.91, abs=0.005)
    assert lr_at(510.0, cfg) == pytest.approx(0.5)
    assert lr_at(1010.0, cfg) == pytest.approx(0.0, abs=1e-12)
    after = [lr_at(10 + e, cfg) for e in range(0, 1000, 50)]
    assert after == sorted(after, reverse=True)


def test_lr_schedule_uses_config_values():
    cfg = OptimConfig(lr=0.2, warmup_epochs=4.0, warmup_multiplier=5.0, cosine_t_max=100.0)
    assert lr_at(2.0, cfg) == pytest.approx(0.2 * (1 + 4 * 0.5))
    assert lr_at(54.0, cfg) == pytest.approx(1.0 * 0.5)


def test_fractional_epoch_uses_full_loader_length():
    assert fractional_epoch(3, 50, 200) == 3.25
    assert fractional_epoch(0, 200, 1000) == 0.2  # epoch cut at 201 iterations, L stays the full loader
    with pytest.raises(ValueError):
        fractional_epoch(0, 0, 0)
