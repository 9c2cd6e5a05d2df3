"""CSI score and AUROC (ALGORITHM.md §5; checklist 22–26), checked against an explicit per-image loop over the §5
formulas, sklearn and pair counting, and with recording models for what the feature extractor feeds the network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from dia_ray.algo import scoring
from dia_ray.algo.scoring import (
    CSIWeights,
    Features,
    auroc,
    csi_score,
    csi_weights,
    extract_features,
)

K = 4


def _features(n: int, d: int, seed: int, logit_offset: float = 2.0) -> Features:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(K, n, d, generator=g, dtype=torch.float64) * torch.rand(K, n, 1, generator=g, dtype=torch.float64)
    logits = torch.randn(K, n, K, generator=g, dtype=torch.float64) + logit_offset
    return Features(z=z, logits=logits)


def _loop_weights(train: Features) -> tuple[list[float], list[float], list[list[list[float]]]]:
    """§5: axis a_{k,m} = z̄_k(x_m)/‖z̄_k(x_m)‖, w_sim[k] = 1/mean_m ‖z̄_k(x_m)‖, w_shi[k] = 1/mean_m l̄_k(x_m)[k]."""
    w_sim, w_shi, axis = [], [], []
    for k in range(K):
        norms = [math.sqrt(sum(v * v for v in train.z[k, m].tolist())) for m in range(train.z.shape[1])]
        w_sim.append(1.0 / (sum(norms) / len(norms)))
        correct = [float(train.logits[k, m, k]) for m in range(train.z.shape[1])]
        w_shi.append(1.0 / (sum(correct) / len(correct)))
        axis.append([[v / nm for v in train.z[k, m].tolist()] for m, nm in enumerate(norms)])
    return w_sim, w_shi, axis


def _loop_scores(test: Features, train: Features) -> list[float]:
    """s(x) = (1/K) Σ_k [w_sim[k]·max_m ⟨z̄_k(x), a_{k,m}⟩ + w_shi[k]·l̄_k(x)[k]], test vector NOT normalised."""
    w_sim, w_shi, axis = _loop_weights(train)
    scores = []
    for i in range(test.z.shape[1]):
        total = 0.0
        for k in range(K):
            zk = test.z[k, i].tolist()
            best = max(sum(p * q for p, q in zip(zk, a)) for a in axis[k])
            total += w_sim[k] * best + w_shi[k] * float(test.logits[k, i, k])
        scores.append(total / K)
    return scores


# ---------------------------------------------------------------------------------------- weights, score (23–24)

def test_csi_weights_equal_the_per_shift_train_statistics():
    train = _features(7, 5, seed=0)
    w = csi_weights(train)
    w_sim, w_shi, axis = _loop_weights(train)
    assert w.w_sim.tolist() == pytest.approx(w_sim, rel=1e-12)
    assert w.w_shi.tolist() == pytest.approx(w_shi, rel=1e-12)
    assert np.allclose(w.axis.numpy(), np.array(axis), atol=1e-12)


def test_csi_score_equals_explicit_per_image_loop():
    train, test = _features(9, 6, seed=1), _features(11, 6, seed=2)
    scores = csi_score(test, csi_weights(train))
    assert scores.shape == (11,)
    assert scores.tolist() == pytest.approx(_loop_scores(test, train), rel=1e-10)


def test_test_features_are_not_normalised_before_the_dot_product():
    train, test = _features(6, 4, seed=3), _features(5, 4, seed=4)
    w = csi_weights(train)
    no_shift = CSIWeights(axis=w.axis, w_sim=w.w_sim, w_shi=torch.zeros(K, dtype=torch.float64))
    base = csi_score(test, no_shift)
    doubled = csi_score(Features(z=test.z * 2, logits=test.logits), no_shift)
    assert torch.allclose(doubled, 2 * base)


def test_score_is_invariant_to_a_global_rescale_of_the_weights_but_not_per_shift_changes():
    train, test = _features(20, 6, seed=5), _features(60, 6, seed=6)
    labels = (torch.arange(60) % 2).numpy()
    w = csi_weights(train)
    reference = auroc(csi_score(test, w), labels)
    scaled = CSIWeights(axis=w.axis, w_sim=w.w_sim * 7.5, w_shi=w.w_shi * 7.5)
    assert auroc(csi_score(test, scaled), labels) == reference
    assert torch.allclose(csi_score(test, scaled), 7.5 * csi_score(test, w))
    factors = torch.tensor([25.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    per_shift = CSIWeights(axis=w.axis, w_sim=w.w_sim * factors, w_shi=w.w_shi)
    assert auroc(csi_score(test, per_shift), labels) != reference


# ----------------------------------------------------------------------------------------------- AUROC (25)

def test_auroc_of_a_perfect_separator_is_one_and_reversed_is_zero():
    labels = np.array([1, 1, 1, 0, 0])  # 1 = normal, higher score = more normal
    assert auroc(torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2]), labels) == 1.0
    assert auroc(-torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2]), labels) == 0.0


def test_auroc_equals_sklearn_and_pair_counting():
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=80), 1)  # rounded: ties count one half
    labels = rng.integers(0, 2, size=80)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))
    assert auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(pairs, abs=1e-12)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        auroc(np.array([0.1, 0.2]), np.array([1, 1]))


# -------------------------------------------------------------------------------- feature extraction (22, 26)

class RecordingModel(nn.Module):
    """z = per-view channel means (3-d), logits = a fixed linear map of them; records inputs and training flag."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, K)
        self.inputs: list[torch.Tensor] = []
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor):
        self.inputs.append(x.detach().clone())
        self.modes.append(self.training)
        f = x.mean(dim=(2, 3))
        return f, f, self.head(f)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)


def test_extract_features_runs_the_model_in_eval_mode_and_restores_it():
    model = RecordingModel().train()
    feats = extract_features(model, _images(6), samples=2, batch_size=4)
    assert model.modes and not any(model.modes)
    assert model.training
    assert feats.z.shape == (K, 6, 3) and feats.logits.shape == (K, 6, K)
    assert sum(len(x) for x in model.inputs) == 2 * 6 * K


def test_extract_features_is_deterministic_and_reseeds_per_sample():
    model = RecordingModel()
    images = _images(5, seed=1)
    two = extract_features(model, images, samples=2, seed=0)
    again = extract_features(model, images, samples=2, seed=0)
    assert torch.equal(two.z, again.z) and torch.equal(two.logits, again.logits)
    first = extract_features(model, images, samples=1, seed=0)
    second = extract_features(model, images, samples=1, seed=1)  # sample s uses seed s
    assert torch.allclose(two.z, (first.z + second.z) / 2, atol=1e-6)
    assert not torch.allclose(first.z, second.z)


def test_rotation_eval_gives_each_shifted_view_its_own_flip(monkeypatch):
    """Augmentation neutralised: the view of image i under shift k is rot90^k(F_k(x_i)) with F_k drawn per k."""
    monkeypatch.setattr(scoring, "simclr_augment", lambda views, gen, crop_scale: views)
    model = RecordingModel()
    n = 64
    images = _images(n, seed=2)
    extract_features(model, images, samples=1, batch_size=n)
    (views,) = model.inputs
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    flips = torch.zeros(K, n, dtype=torch.bool)
    for k in range(K):
        for i in range(n):
            upright = torch.rot90(views[k * n + i], -k, dims=(-2, -1))
            if torch.equal(upright, x[i]):
                continue
            assert torch.equal(upright, x[i].flip(-1)), "each view is a rotation of the image or of its flip"
            flips[k, i] = True
    assert 0.3 * n * K < int(flips.sum()) < 0.7 * n * K
    assert all(not torch.equal(flips[k], flips[0]) for k in range(1, K)), "a fresh flip per shift"


def test_extract_features_averages_over_samples_of_unnormalised_projections(monkeypatch):
    monkeypatch.setattr(scoring, "simclr_augment", lambda views, gen, crop_scale: views)
    model = RecordingModel()
    images = _images(3, seed=3)
    feats = extract_features(model, images, samples=3, batch_size=2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    # with augmentation off, flips and rotations leave the channel means unchanged: z̄_k(x) = mean colour of x
    for k in range(K):
        assert torch.allclose(feats.z[k], x.mean(dim=(2, 3)), atol=1e-6)


def test_evaluation_uses_ten_samples_the_eval_crop_and_rotations_in_eval_mode(monkeypatch):
    """Checklist 22 through loops.evaluate with the paper defaults: S = 10 samples of every image under the 4
    rotations, augmented with crop scale (0.54, 1) — not the training (0.08, 1) — in eval mode."""
    from dia_ray.algo.loops import DIAData, evaluate
    from dia_ray.config import TrainConfig

    scales = []
    real = scoring.simclr_augment

    def spy(views, gen, crop_scale):
        scales.append(tuple(crop_scale))
        return real(views, gen, crop_scale=crop_scale)

    monkeypatch.setattr(scoring, "simclr_augment", spy)
    model = RecordingModel().train()
    data = DIAData.from_arrays(_images(6, seed=4), _images(8, seed=5), np.arange(8) % 2)
    score, scores = evaluate(model, data, TrainConfig(dataset="synthetic"))
    assert scales == [(0.54, 1.0)] * 20  # 10 samples for the train bank, 10 for the test set (one batch each)
    assert [len(x) for x in model.inputs] == [6 * K] * 10 + [8 * K] * 10
    assert not any(model.modes) and model.training
    assert scores.shape == (8,) and 0.0 <= score <= 1.0
