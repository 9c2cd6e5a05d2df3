"""AUROC confidence intervals and paired tests by DeLong's method (DeLong et al. 1988), computed with the fast
midrank algorithm of Sun & Xu (2014, IEEE SPL 21(11)): O(N log N) per score vector instead of O(m·n).

Conventions (ALGORITHM.md §5, §8.25): label 1 = normal = positive, 0 = anomaly; a higher score means more normal.

The test images are the random unit. For a positive (normal) image i and a negative image j, with
ψ(x, y) = 1 if x > y, ½ if x = y, 0 otherwise, the structural components are
``v10[i] = mean_j ψ(x_i, y_j)`` and ``v01[j] = mean_i ψ(x_i, y_j)``; AUROC = mean(v10) = mean(v01) and
``Var(AUROC) = var(v10)/m + var(v01)/n`` (sample variances, m positives, n negatives).

Several runs (seeds) scored on the same test set are combined exactly: any weighted sum of their AUROCs - the
seed mean, or the mean difference of paired DIA and CSI seeds - is again a two-sample U-statistic whose components
are the same weighted sums of the per-run components, so the correlation between runs that share the test images is
accounted for. Runs scored on different test sets (e.g. different subsamples) are treated as independent. Either way
the variance is the test-set sampling variance of the seed mean, conditional on the trained models; the spread
between seeds (training randomness) is not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import norm, rankdata

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class AurocCI:
    auroc: float
    low: float
    high: float
    se: float
    level: float = 0.95


@dataclass(frozen=True)
class DelongTest:
    """Two-sided test of H0: AUROC_a = AUROC_b (both means over the paired runs)."""

    auroc_a: float
    auroc_b: float
    z: float
    p: float
    pairs: int = 1

    @property
    def difference(self) -> float:
        return self.auroc_a - self.auroc_b


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """labels (N,) in {0, 1}; scores (N,) or (k, N) → (bool positives (N,), float scores (k, N))."""
    y = np.asarray(labels)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if y.ndim != 1 or s.ndim != 2 or s.shape[1] != y.shape[0]:
        raise ValueError(f"scores {np.shape(scores)} do not match labels {y.shape} (one score per test image)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (anomaly) or 1 (normal)")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("AUROC needs both normal (1) and anomalous (0) test images")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y == 1, s


def delong_components(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu's midrank form of the structural components.

    scores: (N,) or (k, N) for k scorers of the same N test images. Returns ``auroc (k,)``, ``v10 (k, m)`` over the
    m positives and ``v01 (k, n)`` over the n negatives.
    """
    positive, s = _check(labels, scores)
    x, y = s[:, positive], s[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)  # midranks in the pooled sample
    # A positive's pooled midrank minus its midrank among positives = negatives below it (+½ per tie).
    v10 = (tz[:, :m] - rankdata(x, axis=1)) / n
    v01 = 1.0 - (tz[:, m:] - rankdata(y, axis=1)) / m
    return v10.mean(axis=1), v10, v01


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """AUROC of one score vector (normal = positive), ties counted ½ (equals sklearn's roc_auc_score)."""
    return float(delong_components(labels, scores)[0][0])


def _combine(runs: Sequence[tuple[ArrayLike, ArrayLike, np.ndarray]]) -> tuple[float, float]:
    """Estimate and variance of Σ_runs w·AUROC(scores) where each run is (labels, scores (k, N), weights (k,)).

    Runs with identical labels are taken to be the same test set (same images, same order) and their components
    are summed before the variance is taken; distinct test sets add their variances.
    """
    groups: dict[bytes, list] = {}
    for labels, scores, weights in runs:
        y = np.asarray(labels).astype(np.int8)
        auc, v10, v01 = delong_components(y, scores)
        key = y.tobytes()
        if key not in groups:
            groups[key] = [0.0, 0.0, 0.0]
        # Elementwise products, not `weights @ v`: BLAS may fuse multiply-adds, and then identical scorers would
        # leave a rounding residue instead of an exact zero difference.
        w = np.asarray(weights, dtype=np.float64)[:, None]
        acc = groups[key]
        acc[0] = acc[0] + (w[:, 0] * auc).sum()
        acc[1] = acc[1] + (w * v10).sum(axis=0)
        acc[2] = acc[2] + (w * v01).sum(axis=0)
    estimate, variance = 0.0, 0.0
    for est, v10, v01 in groups.values():
        estimate += float(est)
        m, n = v10.shape[0], v01.shape[0]
        if m < 2 or n < 2:
            return estimate, float("nan")
        variance += float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    return estimate, variance


def mean_auroc_ci(runs: Sequence[tuple[ArrayLike, ArrayLike]], level: float = 0.95) -> AurocCI:
    """DeLong CI of the mean AUROC over ``runs`` = [(labels, scores), ...] (e.g. the seeds of one config).
    Normal approximation on the AUROC scale, clipped to [0, 1]."""
    if not runs:
        raise ValueError("no runs to compute an AUROC confidence interval from")
    w = np.array([1.0 / len(runs)])
    estimate, variance = _combine([(labels, scores, w) for labels, scores in runs])
    se = float(np.sqrt(variance))
    half = float(norm.ppf(0.5 + level / 2)) * se
    return AurocCI(estimate, max(0.0, estimate - half), min(1.0, estimate + half), se, level)


def auroc_ci(labels: ArrayLike, scores: ArrayLike, level: float = 0.95) -> AurocCI:
    """DeLong CI of one score vector's AUROC."""
    return mean_auroc_ci([(labels, scores)], level)


def paired_mean_delong_test(pairs: Sequence[tuple[ArrayLike, ArrayLike, ArrayLike]]) -> DelongTest:
    """Paired DeLong test of the mean AUROC difference over ``pairs`` = [(labels, scores_a, scores_b), ...]; each
    pair is two scorers of the same test set (same labels, same order), e.g. DIA and CSI trained with the same seed.
    """
    if not pairs:
        raise ValueError("no paired runs to test")
    w = np.array([1.0, -1.0]) / len(pairs)
    runs = [(labels, np.vstack([np.asarray(a, float), np.asarray(b, float)]), w) for labels, a, b in pairs]
    difference, variance = _combine(runs)
    mean_a = float(np.mean([auroc(labels, a) for labels, a, _ in pairs]))
    if variance > 0:
        z = difference / np.sqrt(variance)
    elif np.isnan(variance):
        z = float("nan")
    else:  # the two scorers rank every normal/anomalous pair alike: no evidence of a difference
        z = 0.0 if difference == 0 else float(np.sign(difference)) * float("inf")
    p = float(2 * norm.sf(abs(z))) if not np.isnan(z) else float("nan")
    return DelongTest(mean_a, mean_a - difference, float(z), p, len(pairs))


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> DelongTest:
    """Paired DeLong test of two scorers on the same test set (Sun & Xu's fast algorithm)."""
    return paired_mean_delong_test([(labels, scores_a, scores_b)])
