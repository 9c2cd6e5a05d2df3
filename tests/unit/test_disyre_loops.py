"""DISYRE training loop (DISYRE.md §3–4; checklist 8, 10): loss and optimiser against independent computations,
data-parallel batches, exact resume, the fit protocol shared with DIA, and a short run on the synthetic data that
must rank anomalous test images as more anomalous than normal ones."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup

from dia_ray.algo.disyre.corruption import PatchPool
from dia_ray.algo.disyre.loops import (DisyreSetup, corrupted_batch, epoch_generator, fit_disyre, lr_at,
                                       map_sample_indices, new_disyre_state, step_indices, train_epoch)
from dia_ray.algo.loops import DIAData
from dia_ray.config import BUDGETS, DisyreConfig, TrainConfig, deep_update, parse
from dia_ray.data import load_dataset

TINY_UNET = {"block_out_channels": (8, 16), "attention_levels": (1,), "layers_per_block": 1, "norm_num_groups": 8}


def _cfg(**disyre) -> TrainConfig:
    base = {"batch_size": 4, "steps_per_epoch": 1, "inference_steps": 2, "map_samples": 2, "unet": TINY_UNET}
    return parse(TrainConfig, {"dataset": "synthetic", "method": "disyre", "epochs": 2,
                               "eval": {"every": 1, "batch_size": 16}, "disyre": {**base, **disyre}})


def _data(n_train=12, n_test=10, rgb=False, seed=0) -> DIAData:
    rng = np.random.default_rng(seed)
    grey = rng.integers(20, 230, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    images = rng.integers(20, 230, size=(n_train + n_test, 28, 28, 3), dtype=np.uint8) if rgb else \
        np.repeat(grey[..., None], 3, axis=-1)
    labels = np.array([1, 0] * (n_test // 2))
    return DIAData.from_arrays(images[:n_train], images[n_train:], labels)


def test_adamw_hyperparameters_are_the_codes():
    opt = new_disyre_state(TrainConfig(dataset="synthetic", method="disyre"), _data()).optimizer
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (1e-4, (0.95, 0.999), 1e-6, 1e-8)
    d = TrainConfig(dataset="synthetic", method="disyre")
    assert (d.disyre.warmup_steps, d.disyre.clip_grad_norm, d.disyre.batch_size) == (500, 1.0, 96)
    assert d.epochs * d.disyre.steps_per_epoch == 100_000  # the code's 100k steps


@pytest.mark.parametrize(("warmup", "total"), [(500, 100_000), (3, 30), (0, 10)])
def test_lr_schedule_is_diffusers_cosine_with_warmup(warmup, total):
    cfg = DisyreConfig(warmup_steps=warmup, lr=1e-3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    for step in sorted({0, 1, 2, warmup // 2, warmup, warmup + 1, total // 2, total - 1}):
        while sched.last_epoch < step:
            opt.step()
            sched.step()
        assert lr_at(step, total, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step


def test_one_step_is_clipped_adamw_on_the_mse_between_restoration_and_clean_image():
    """Replays the step's batch with the same random stream, then checks loss = mean (R(x_c, t(a)) − x)² and the
    first AdamW update p ← p(1 − lr·wd) − lr·ĝ/(|ĝ| + eps) with ĝ the gradient clipped to norm 0.01."""
    cfg = _cfg(warmup_steps=0, lr=1e-3, clip_grad_norm=0.01, weight_decay=0.1, augment=True)
    data = _data()
    state = new_disyre_state(cfg, data)
    ref = copy.deepcopy(state.model)
    metrics = train_epoch(state, data, cfg)

    d, setup = cfg.disyre, state.setup
    idx = step_indices(len(data.train), d.batch_size, 0, cfg.seed)
    x, x_c, t = corrupted_batch(setup.images(data.train[idx]), setup, d, PatchPool(d.pool_size, setup.params.box),
                                epoch_generator(cfg.seed, 0, 0))
    loss = ((ref(x_c, t).sample - x) ** 2).mean()
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    grads = [p.grad for p in ref.parameters()]
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert norm > 0.01  # clipping is active
    scale = 0.01 / (norm + 1e-6)
    for p, q in zip(ref.parameters(), state.model.parameters()):
        g = p.grad * scale
        want = p.detach() * (1 - 1e-3 * 0.1) - 1e-3 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(q.detach(), want, rtol=1e-4, atol=1e-6)


def test_targets_are_clean_patches_and_t_is_the_severity_index():
    cfg = _cfg()
    data = _data()
    setup = DisyreSetup.resolve(cfg.disyre, data.train)
    x01 = setup.images(data.train[:4])
    x, x_c, t = corrupted_batch(x01, setup, cfg.disyre.model_copy(update={"augment": False}),
                                PatchPool(512, setup.params.box), torch.Generator().manual_seed(0))
    assert torch.equal(x[..., 2:30, 2:30], x01) and x[..., :2, :].abs().max() == 0  # no noise anywhere
    assert x_c.shape == x.shape == (4, 1, 32, 32) and t.dtype == torch.long and ((0 <= t) & (t <= 99)).all()


def test_two_ranks_take_contiguous_halves_of_the_global_batch_and_passes_cover_every_image():
    for step in range(5):
        whole = step_indices(10, 6, step, seed=3)
        halves = [step_indices(10, 6, step, seed=3, rank=r, world=2) for r in (0, 1)]
        assert torch.equal(torch.cat(halves), whole)
    stream = torch.cat([step_indices(10, 5, s, seed=3) for s in range(4)])
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert len(step_indices(10, 5, 0, seed=3, rank=1, world=2)) == 2  # cut to a multiple of the world size


def test_channels_auto_detects_grey_and_colour():
    assert DisyreSetup.resolve(DisyreConfig(), _data().train).channels == 1
    assert DisyreSetup.resolve(DisyreConfig(), _data(rgb=True).train).channels == 3
    assert DisyreSetup.resolve(DisyreConfig(channels=3), _data().train).channels == 3


def test_fit_evaluates_on_schedule_calls_the_hook_every_epoch_and_keeps_the_maps_of_the_last_evaluation():
    cfg = _cfg().model_copy(update={"epochs": 3, "eval": TrainConfig(dataset="x").eval.model_copy(
        update={"every": 2, "batch_size": 4})})
    data = _data(rgb=True)
    seen = []
    state = fit_disyre(cfg, data, on_epoch=lambda st, m: seen.append((st.epoch, "auroc" in m)))
    assert seen == [(1, False), (2, True), (3, True)]
    assert [("auroc" in h) for h in state.history] == [False, True, True]
    for h in state.history[1:]:
        assert {"auroc_mean", "auroc_max", "auroc_topk"} <= set(h) and h["auroc"] == h["auroc_topk"]
    assert state.last_auroc == state.history[-1]["auroc"]
    assert state.best_auroc == max(h["auroc"] for h in state.history if "auroc" in h)
    assert len(state.last_scores) == 10 and state.images_seen == 3 * 4 and state.images_scored == 20
    maps = state.maps
    assert maps["index"].tolist() == map_sample_indices(data.test_labels, 2) == [0, 1, 2, 3]
    assert maps["inputs"].shape == (4, 28, 28, 3) and maps["restored"].shape == (4, 2, 28, 28, 3)
    assert maps["maps"].shape == (4, 28, 28) and maps["labels"].tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(-maps["scores"], np.asarray(state.last_scores)[:4], rtol=1e-6)
    assert maps["timesteps"].tolist() == [99, 49]


def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one():
    cfg = _cfg(steps_per_epoch=2)
    data = _data()
    straight = fit_disyre(cfg, data)
    first = fit_disyre(cfg.model_copy(update={"epochs": 1}), data)
    resumed = new_disyre_state(cfg, data)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    resumed = fit_disyre(cfg, data, state=resumed)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert resumed.last_scores == straight.last_scores and resumed.step == straight.step == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_config_hash_of_disyre_ignores_dia_fields_and_dia_ignores_disyre():
    base = {"dataset": "synthetic", "method": "disyre"}
    h = TrainConfig(**base).config_hash()
    assert TrainConfig(**base, shift="cutperm", batch_size=64).config_hash() == h
    assert TrainConfig(**base, disyre=DisyreConfig(variant="fpi")).config_hash() != h
    assert TrainConfig(**base, epochs=3).config_hash() != h
    dia = TrainConfig(dataset="synthetic", method="dia")
    assert TrainConfig(dataset="synthetic", method="dia", disyre=DisyreConfig(variant="fpi")).config_hash() == \
        dia.config_hash()
    assert TrainConfig(**base).dissolve.kind == "none"  # no DDPM needed


# A short run at the `small` budget (6 epochs x 5 steps of 16 images, 16-32 UNet, N = 2 restorations) on the
# synthetic data, whose anomalies are 1-2 px specks, a thin line or a checkerboard patch. Measured on this machine
# (2 shared cores), last-epoch AUROC of the top-k-mean score (mean-of-map / max in brackets): seed 0: 0.981 (0.690 /
# 0.951), seed 1: 0.985 (0.642 / 0.938), seed 2: 0.956 (0.665 / 0.957), seed 3: 0.981 (0.687 / 0.963), seed 4: 0.990
# (0.598 / 0.995); with N = 4 within 0.002 of these. The untrained network scores 0.54 (top-k), so the bound needs
# the training; chance is 0.5.
@pytest.fixture(scope="module")
def synthetic(synthetic_root):
    return load_dataset("synthetic", synthetic_root)


def test_short_run_scores_anomalous_synthetic_images_as_more_anomalous(synthetic):
    cfg = parse(TrainConfig, deep_update({"dataset": "synthetic", "method": "disyre", "seed": 1},
                                         deep_update(BUDGETS["small"]["train"], {"eval": {"every": 6}})))
    data = DIAData.from_arrays(synthetic.train.images, synthetic.test.images, synthetic.test.labels)
    state = fit_disyre(cfg, data)
    assert state.history[-1]["loss"] < 0.5 * state.history[0]["loss"]
    assert state.last_auroc > 0.9
    assert state.history[-1]["auroc_max"] > 0.8


def test_large_colour_images_train_on_patches_and_are_scored_with_full_size_maps():
    rng = np.random.default_rng(1)
    images = rng.integers(20, 230, size=(6, 160, 160, 3), dtype=np.uint8)
    data = DIAData.from_arrays(images[:4], images[4:], np.array([1, 0]))
    cfg = _cfg(patch_size=64, map_samples=1).model_copy(update={"epochs": 1})
    state = fit_disyre(cfg, data)
    assert (state.setup.patch, state.setup.channels, state.setup.params.box) == (64, 3, 32)
    assert state.maps["maps"].shape == (2, 160, 160) and state.maps["restored"].shape == (2, 2, 160, 160, 3)
    assert np.isfinite(state.maps["maps"]).all() and len(state.last_scores) == 2
