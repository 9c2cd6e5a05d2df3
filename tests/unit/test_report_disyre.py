"""The report shows DISYRE's anomaly maps (input, restoration, map) from the artifact stored beside its record."""

from __future__ import annotations

import base64
import re

import numpy as np

from dia_ray.results.maps import write_maps
from dia_ray.results.records import write_records
from dia_ray.results.report import publish
from results_data import make_record


def _artifact(k: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"inputs": rng.random((k, 28, 28, 1), dtype=np.float32),
            "restored": rng.random((k, 2, 28, 28, 1), dtype=np.float32),
            "maps": rng.random((k, 28, 28), dtype=np.float32), "labels": np.array([1, 1, 0, 0]),
            "scores": rng.random(k), "index": np.arange(k), "timesteps": np.array([99, 49])}


def test_report_has_a_maps_grid_for_the_disyre_row_and_none_without_the_artifact(tmp_path):
    folder = tmp_path / "results" / "train"
    csi = [make_record("pneumoniamnist", "csi", {}, 0.5, s) for s in (0, 1)]
    disyre = [make_record("pneumoniamnist", "disyre", {}, 1.4, s).model_copy(update={"maps_file": f"d{s}.maps.npz"})
              for s in (0, 1)]
    for s in (0, 1):
        write_maps(folder / f"d{s}.maps.npz", _artifact())
    write_records(folder / "runs.jsonl", csi + disyre)
    page = (tmp_path / "leaderboard" / "report.html")
    publish(tmp_path, formats=["html"], figures=False)
    html = page.read_text()
    assert "DISYRE anomaly maps" in html
    svg = [base64.b64decode(m).decode() for m in re.findall(r'data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)', html)]
    maps = [s for s in svg if "DISYRE anomaly maps, seed" in s]
    assert len(maps) == 1 and maps[0].count("<image") >= 12  # 4 rows x (input, restored, map)
    for s in (0, 1):
        (folder / f"d{s}.maps.npz").unlink()
    publish(tmp_path, formats=["html"], figures=False)
    assert "DISYRE anomaly maps" not in page.read_text()  # a missing artifact drops the figure, not the page
