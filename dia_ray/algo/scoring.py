"""CSI anomaly score and AUROC (ALGORITHM.md §5). Evaluation uses the training shift family, never dissolves.

Per image and shift k: z̄_k = mean over S random views of the *un-normalised* projection, l̄_k = mean shift logits.
From the M normal training images: axis a_{k,m} = z̄_k(x_m)/||z̄_k(x_m)||, w_sim[k] = 1/mean_m ||z̄_k(x_m)||,
w_shi[k] = 1/mean_m l̄_k(x_m)[k]. Score (higher = more normal):
    s(x) = (1/K) Σ_k [ w_sim[k] · max_m ⟨z̄_k(x), a_{k,m}⟩ + w_shi[k] · l̄_k(x)[k] ].
One matmul per shift instead of the reference's per-image Python loop (§10.9); RNG is a local torch.Generator
reseeded with s for sample s (§10.10: the training RNG is untouched).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dia_ray.algo.augment import random_hflip, simclr_augment
from dia_ray.algo.precision import Precision, autocast, channels_last
from dia_ray.algo.resolution import to_float01
from dia_ray.algo.shifts import apply_shift


@dataclass
class Features:
    z: torch.Tensor  # (K, N, d) mean un-normalised projections per shift
    logits: torch.Tensor  # (K, N, K) mean shift logits per shift


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    shift: str = "rotation",
    n_shifts: int = 4,
    samples: int = 10,
    crop_scale: tuple[float, float] = (0.54, 1.0),
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    seed: int = 0,
    precision: Precision = "fp32",
    on_batch: Callable[[int], None] | None = None,
) -> Features:
    """images: uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1]. v = A_eval(S_k(F(x))), a fresh flip per k.
    The network runs in ``precision``; features are averaged in fp32. ``on_batch(n)`` (progress) runs after
    each batch of n images."""
    was_training = model.training
    model.eval()
    images = torch.as_tensor(images)
    n = images.shape[0]
    z_sum: torch.Tensor | None = None
    l_sum: torch.Tensor | None = None
    for s in range(samples):
        gen = torch.Generator(device=device)
        gen.manual_seed(seed + s)
        zs, ls = [], []
        for start in range(0, n, batch_size):
            x = to_float01(images[start : start + batch_size]).to(device)
            views = torch.cat([apply_shift(random_hflip(x, gen), k, shift) for k in range(n_shifts)])
            views = simclr_augment(views, gen, crop_scale=crop_scale)
            with autocast(precision, views.device):
                _, z, logits = model(channels_last(views))
            b = x.shape[0]
            zs.append(z.float().view(n_shifts, b, -1))
            ls.append(logits.float().view(n_shifts, b, -1))
            if on_batch is not None:
                on_batch(b)
        z_s, l_s = torch.cat(zs, dim=1), torch.cat(ls, dim=1)
        z_sum = z_s if z_sum is None else z_sum + z_s
        l_sum = l_s if l_sum is None else l_sum + l_s
    model.train(was_training)
    assert z_sum is not None and l_sum is not None
    return Features(z=z_sum / samples, logits=l_sum / samples)


@dataclass
class CSIWeights:
    axis: torch.Tensor  # (K, M, d) normalised train features
    w_sim: torch.Tensor  # (K,)
    w_shi: torch.Tensor  # (K,)


def csi_weights(train: Features) -> CSIWeights:
    k = train.z.shape[0]
    norms = train.z.norm(dim=2)  # (K, M)
    axis = train.z / norms.clamp_min(1e-12).unsqueeze(-1)
    w_sim = 1.0 / norms.mean(dim=1)
    correct = train.logits[torch.arange(k), :, torch.arange(k)]  # (K, M): logit of the right shift
    w_shi = 1.0 / correct.mean(dim=1)
    return CSIWeights(axis=axis, w_sim=w_sim, w_shi=w_shi)


def csi_score(test: Features, w: CSIWeights) -> torch.Tensor:
    """(N,) scores, higher = more normal. Test features are NOT normalised before the dot product."""
    k = test.z.shape[0]
    sim = torch.einsum("knd,kmd->knm", test.z, w.axis).amax(dim=2)  # (K, N)
    shi = test.logits[torch.arange(k), :, torch.arange(k)]  # (K, N)
    return (w.w_sim.unsqueeze(1) * sim + w.w_shi.unsqueeze(1) * shi).mean(dim=0)


def auroc(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Normal = positive label 1, score higher = more normal (sklearn's roc_auc_score)."""
    s = np.asarray(torch.as_tensor(scores).detach().cpu().numpy(), dtype=np.float64)
    y = np.asarray(torch.as_tensor(labels).cpu().numpy()).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("AUROC needs both normal (1) and anomalous (0) test images")
    return float(roc_auc_score(y, s))
