"""DISYRE severity schedule (DISYRE.md §2.5, §5.1; checklist 1–3) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from dia_ray.algo.disyre.schedule import gammas, inference_timesteps, severity_to_t
from dia_ray.config import DisyreConfig
from pydantic import ValidationError


def _gammas_by_loop(steps: int = 100) -> list[float]:
    betas = [1e-3 + (0.2 - 1e-3) * i / (steps - 1) for i in range(steps)]
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(math.sqrt(prod))
    return out


def test_gammas_match_the_cumulative_product_and_the_spec_values():
    g = gammas(100)
    assert g.shape == (100,)
    assert torch.allclose(g, torch.tensor(_gammas_by_loop(), dtype=torch.float64), rtol=1e-12, atol=1e-14)
    for i, want in ((0, 0.9995), (20, 0.7987), (40, 0.4194), (60, 0.142), (80, 0.030), (99, 0.0045)):
        assert g[i].item() == pytest.approx(want, abs=6e-4), i
    assert (g[1:] < g[:-1]).all()


def test_t_is_the_argmin_of_the_gamma_distance_and_inverse_severity():
    a = torch.tensor([1.0, 0.9, 0.5, 0.25, 0.1, 0.05, 0.0])
    assert severity_to_t(a).tolist() == [0, 13, 36, 51, 65, 74, 99]
    g = _gammas_by_loop()
    for value in torch.linspace(0, 1, 101).tolist():
        want = min(range(100), key=lambda i: abs(g[i] - value))
        assert severity_to_t(torch.tensor([value])).item() == want


def test_trailing_inference_timesteps():
    assert inference_timesteps(100, 5) == [99, 79, 59, 39, 19]
    assert inference_timesteps(100, 4) == [99, 74, 49, 24]
    assert inference_timesteps(100, 1) == [99]


def test_inference_steps_must_divide_the_schedule():
    with pytest.raises(ValidationError, match="must divide"):
        DisyreConfig(inference_steps=3)
    assert DisyreConfig(schedule_steps=60, inference_steps=3).inference_steps == 3
