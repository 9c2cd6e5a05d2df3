"""Method ``disyre`` through the Ray Train wrapper of ``dia-ray train`` (same storage layout, records, resume rule as
DIA), with its maps artifact beside the record and in the final checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dia_ray.config import BUDGETS, TrainConfig, deep_update, parse
from dia_ray.distributed.train_dia import train_dia_ray
from dia_ray.distributed.train_ddpm import DataRef
from dia_ray.results.maps import read_maps

pytestmark = pytest.mark.integration


def _cfg(**over) -> TrainConfig:
    return parse(TrainConfig, deep_update(deep_update({"dataset": "synthetic", "method": "disyre"},
                                                      BUDGETS["tiny"]["train"]), over))


@pytest.mark.parametrize("workers", [1, 2])
def test_disyre_run_writes_a_record_and_maps_and_is_not_retrained(ray_cluster, synthetic_root, tmp_path, workers):
    cfg = _cfg()
    ref = DataRef("synthetic", str(synthetic_root))
    rec = train_dia_ray(cfg, ref, tmp_path, workers=workers, cpus_per_worker=1)
    assert rec.method == "disyre" and rec.dissolve_mode == "none" and rec.workers == workers
    assert rec.params["variant"] == "dag" and rec.params["patch_size"] == 32 and rec.params["box_size"] == 16
    assert rec.params["steps"] == 2 * 2 and "t_min" not in rec.params
    assert 0.0 <= rec.auroc_last <= 1.0 and len(rec.test_scores) == len(rec.test_labels) == 40
    assert rec.images_per_s > 0 and rec.score_images_per_s > 0  # type: ignore[attr-defined]
    records = tmp_path / "results" / "train"
    maps = read_maps(records / rec.maps_file)  # type: ignore[attr-defined]
    assert maps["maps"].shape == (4, 28, 28) and sorted(maps["labels"].tolist()) == [0, 0, 1, 1]
    np.testing.assert_allclose(-maps["scores"], np.asarray(rec.test_scores)[maps["index"]], rtol=1e-6)
    finals = sorted(tmp_path.glob("runs/synthetic/run-*/checkpoint_*/final.json"))
    assert len(finals) == 1 and (finals[0].parent / "maps.npz").is_file()
    assert json.loads(finals[0].read_text())["history"][-1]["auroc"] == rec.auroc_last
    again = train_dia_ray(cfg, ref, tmp_path, workers=workers, cpus_per_worker=1)
    assert again.record_id == rec.record_id
