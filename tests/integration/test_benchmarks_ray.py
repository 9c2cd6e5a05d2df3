"""The Ray part of ``python -m benchmarks`` (issue 13 (e)) at a tiny size on the session's local cluster: a 1-worker
Ray Train run takes turns with the plain loop, a Ray Data pool and the plain loop build the same bank; the ratios
come out positive and finite. No timing is asserted."""

from __future__ import annotations

import math

import pytest

from benchmarks.config import TINY
from benchmarks.ray_overhead import ray_overheads
from benchmarks.report import check_targets

pytestmark = pytest.mark.integration


def test_ray_overheads_measure_train_and_bank_build_side_by_side(ray_cluster, synthetic_root, tmp_path):
    res = ray_overheads(TINY, synthetic_root, tmp_path / "ray", (30, 130))
    train, bank = res["train"], res["bank_build"]
    assert len(train["plain_loop"]["rounds_seconds"]) == len(train["ray_train_worker"]["rounds_seconds"]) \
        == TINY.ray_rounds
    assert train["worker_threads"] == 2  # the worker was given the 2 CPUs and uses them
    assert bank["same_bank_key"]
    for ratio in (train["ratio_ray_over_plain"], bank["ratio_ray_over_plain"]):
        assert math.isfinite(ratio) and ratio > 0
    assert bank["ray_data_pool"]["peak_rss_mb"] > 0 and train["ray_train_worker"]["peak_rss_mb"] > 0
    targets = {t["name"]: t for t in check_targets({"ray": res})}
    assert targets["ray_train_step_vs_plain_loop"]["value"] == train["ratio_ray_over_plain"]
    assert targets["ray_data_bank_build_vs_plain_loop"]["met"] in (True, False)
