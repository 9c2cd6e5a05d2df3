"""DeLong's AUROC variance (Sun & Xu's fast form) against a brute-force O(m·n) computation, sklearn and simulation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dia_ray.results.stats import (
    auroc,
    auroc_ci,
    delong_components,
    delong_test,
    mean_auroc_ci,
    paired_mean_delong_test,
)


def brute_force(labels, scores) -> tuple[float, float]:
    """DeLong (1988) written out: ψ over every (normal, anomaly) pair with explicit loops."""
    xs = [s for s, y in zip(scores, labels) if y == 1]
    ys = [s for s, y in zip(scores, labels) if y == 0]
    m, n = len(xs), len(ys)
    psi = [[1.0 if x > y else 0.5 if x == y else 0.0 for y in ys] for x in xs]
    v10 = [sum(row) / n for row in psi]
    v01 = [sum(psi[i][j] for i in range(m)) / m for j in range(n)]
    auc = sum(v10) / m
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


def sample(rng, m=40, n=55, separation=1.0, rounding=None):
    labels = rng.permutation(np.r_[np.ones(m, int), np.zeros(n, int)])
    scores = separation * labels + rng.normal(size=m + n)
    return labels, (np.round(scores, rounding) if rounding is not None else scores)


@pytest.mark.parametrize("rounding", [None, 1, 0])  # 1 and 0 decimals create many ties
def test_fast_delong_variance_equals_brute_force(rounding):
    labels, scores = sample(np.random.default_rng(1), rounding=rounding)
    auc, v10, v01 = delong_components(labels, scores)
    fast_var = v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size
    ref_auc, ref_var = brute_force(labels, scores)
    assert auc[0] == pytest.approx(ref_auc, abs=1e-12)
    assert fast_var == pytest.approx(ref_var, rel=1e-10)
    ci = auroc_ci(labels, scores)
    assert ci.se == pytest.approx(np.sqrt(ref_var), rel=1e-10)
    assert ci.low == pytest.approx(max(0, ref_auc - 1.959963984540054 * np.sqrt(ref_var)), abs=1e-12)


def test_auroc_equals_sklearn_with_normal_as_positive():
    rng = np.random.default_rng(2)
    for rounding in (None, 1):
        labels, scores = sample(rng, m=17, n=91, separation=0.7, rounding=rounding)
        assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_ci_contains_the_estimate_and_shrinks_with_more_test_images():
    rng = np.random.default_rng(3)
    small, large = auroc_ci(*sample(rng, 30, 30)), auroc_ci(*sample(rng, 1000, 1000))
    for ci in (small, large):
        assert 0.0 <= ci.low < ci.auroc < ci.high <= 1.0
    assert (large.high - large.low) < (small.high - small.low) / 4


def test_ci_of_a_perfect_separator_is_clipped_at_one():
    labels = np.r_[np.ones(10, int), np.zeros(10, int)]
    ci = auroc_ci(labels, labels + 0.1 * np.arange(20) / 20)
    assert (ci.auroc, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_ci_covers_the_true_auroc_about_95_percent_of_the_time():
    # Binormal model: AUROC = Φ(d / √2) for unit-variance normals separated by d.
    from scipy.stats import norm
    rng = np.random.default_rng(4)
    truth = norm.cdf(1.0 / np.sqrt(2))
    covered = [auroc_ci(*sample(rng, 60, 80, separation=1.0)) for _ in range(400)]
    rate = np.mean([c.low <= truth <= c.high for c in covered])
    assert 0.91 <= rate <= 0.98


def test_seed_mean_ci_on_one_test_set_uses_the_averaged_components():
    rng = np.random.default_rng(5)
    labels, base = sample(rng)
    seeds = [base + 0.3 * rng.normal(size=base.size) for _ in range(3)]
    ci = mean_auroc_ci([(labels, s) for s in seeds])
    assert ci.auroc == pytest.approx(np.mean([roc_auc_score(labels, s) for s in seeds]))
    # Brute force for the mean: the seed-mean of ψ is the kernel of a single U-statistic.
    xs, ys = [np.array([s[labels == c] for s in seeds]) for c in (1, 0)]
    psi = np.mean([(x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :]) for x, y in zip(xs, ys)], axis=0)
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    assert ci.se ** 2 == pytest.approx(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size, rel=1e-10)
    # Highly correlated seeds share most of their test-set uncertainty: not 1/3 of one seed's variance.
    single = auroc_ci(labels, seeds[0])
    assert ci.se > single.se / np.sqrt(3) * 1.3


def test_seed_mean_ci_over_different_test_sets_adds_independent_variances():
    rng = np.random.default_rng(6)
    runs = [sample(rng, 30 + k, 40) for k in range(3)]
    ci = mean_auroc_ci(runs)
    expected = sum(brute_force(*r)[1] for r in runs) / 9
    assert ci.se ** 2 == pytest.approx(expected, rel=1e-10)


def test_paired_test_detects_clearly_different_scorers():
    rng = np.random.default_rng(7)
    labels = rng.permutation(np.r_[np.ones(80, int), np.zeros(120, int)])
    noise = rng.normal(size=labels.size)
    good, weak = 2.0 * labels + noise, 0.5 * labels + noise + rng.normal(size=labels.size)
    test = delong_test(labels, good, weak)
    assert test.p < 0.05 and test.z > 0 and test.difference > 0
    assert test.auroc_a == pytest.approx(roc_auc_score(labels, good))
    assert test.auroc_b == pytest.approx(roc_auc_score(labels, weak))


def test_paired_test_of_identical_scorers_is_not_significant():
    labels, scores = sample(np.random.default_rng(8))
    same = delong_test(labels, scores, scores.copy())
    assert (same.z, same.p) == (0.0, 1.0)
    monotone = delong_test(labels, scores, np.exp(scores))  # same ranking, same AUROC
    assert monotone.p == 1.0


def test_paired_test_of_similar_scorers_is_not_significant():
    rng = np.random.default_rng(9)
    labels, scores = sample(rng)
    p = delong_test(labels, scores + 0.05 * rng.normal(size=scores.size), scores).p
    assert p > 0.05


def test_paired_test_z_matches_brute_force_variance_of_the_difference():
    rng = np.random.default_rng(10)
    labels, a = sample(rng, 25, 30, rounding=1)
    b = np.round(a + rng.normal(size=a.size), 1)
    # Var(A − B) from the components of the difference, written out.
    xa, ya, xb, yb = a[labels == 1], a[labels == 0], b[labels == 1], b[labels == 0]
    psi = lambda x, y: np.array([[1.0 if u > v else 0.5 if u == v else 0.0 for v in y] for u in x])  # noqa: E731
    d = psi(xa, ya) - psi(xb, yb)
    var = d.mean(axis=1).var(ddof=1) / len(xa) + d.mean(axis=0).var(ddof=1) / len(ya)
    test = delong_test(labels, a, b)
    assert test.z == pytest.approx(d.mean() / np.sqrt(var), rel=1e-10)


def test_pooled_seeds_test_averages_the_paired_differences():
    rng = np.random.default_rng(11)
    labels, _ = sample(rng, 50, 50)
    pairs = [(labels, 1.2 * labels + rng.normal(size=100), 0.4 * labels + rng.normal(size=100)) for _ in range(3)]
    test = paired_mean_delong_test(pairs)
    assert test.pairs == 3
    assert test.difference == pytest.approx(np.mean([roc_auc_score(labels, a) - roc_auc_score(labels, b)
                                                     for _, a, b in pairs]))
    assert test.p < 0.05


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([1, 1, 1], [0.1, 0.2, 0.3], "both normal"),
    ([0, 1, 2], [0.1, 0.2, 0.3], r"0 \(anomaly\) or 1 \(normal\)"),
    ([0, 1], [0.1, 0.2, 0.3], "do not match"),
    ([0, 1], [0.1, float("nan")], "NaN"),
])
def test_bad_inputs_raise_clear_errors(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        auroc(labels, scores)
