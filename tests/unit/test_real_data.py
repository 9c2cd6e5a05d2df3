"""Real data: CSI trained and scored on the real BreastMNIST file (../shared/data/breastmnist.npz), the plain loop
of dia_ray.algo.loops (what every Ray Train worker runs), at a budget of ≈ 1.5 min on an idle 2-core machine.

The setting is the reference's literal one (normal class 0, which its README command ran; ALGORITHM.md §6), the paper
budget cut to 4 epochs (the whole 147-image normal set each epoch, batch 32) and 2 evaluation samples. With the
paper's normal class 1, CSI needs far longer than a test can run to beat chance (measured at 3 epochs: 0.458 and
0.464, seeds 0/1; the paper's own CSI number after 200 epochs is 0.546)."""

from __future__ import annotations

import pytest

from dia_ray.algo.loops import DIAData, fit
from dia_ray.config import EvalConfig, TrainConfig
from dia_ray.data import load_dataset

# Measured with this budget (torch 2.13 CPU, 2 threads), AUROC after epochs 1-4: seed 0 0.538, 0.449, 0.640, 0.598;
# seed 1 0.530, 0.481, 0.555, 0.545; seed 2 0.362, 0.400, 0.561, 0.564. The test runs seed 0 (deterministic up to float summation order), so its last-epoch
# 0.598 must stay above the bound; a pipeline that loses the signal (e.g. random or constant scores) lands near 0.5.
BOUND = 0.55


@pytest.mark.realdata
def test_csi_on_real_breastmnist_beats_a_measured_bound(shared_data):
    ds = load_dataset("breastmnist", shared_data, normal_class="0")
    assert ds.train.images.shape == (147, 28, 28, 3) and len(ds.test) == 156
    cfg = TrainConfig(dataset="breastmnist", method="csi", normal_class="0", epochs=4, seed=0,
                      eval=EvalConfig(samples=2, every=4))
    state = fit(cfg, DIAData.from_arrays(ds.train.images, ds.test.images, ds.test.labels), None)
    assert state.epoch == 4 and state.step == 4 * 5  # ⌈147 / 32⌉ = 5 iterations per epoch
    assert state.last_auroc > BOUND
