"""The DISYRE maps artifact and its figure grid (dia_ray/results/maps.py)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from dia_ray.errors import CheckpointError
from dia_ray.results.maps import KEYS, maps_figure, read_maps, write_maps


def _artifact(k: int = 4, c: int = 1, n: int = 2, side: int = 28) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * (k // 2))
    return {"inputs": rng.random((k, side, side, c), dtype=np.float32),
            "restored": rng.random((k, n, side, side, c), dtype=np.float32),
            "maps": rng.random((k, side, side), dtype=np.float32) * np.arange(1, k + 1)[:, None, None],
            "labels": labels, "scores": rng.random(k), "index": np.arange(k) * 3, "timesteps": np.array([99, 49])}


def test_write_then_read_round_trips_without_pickles_or_leftovers(tmp_path):
    arrays = _artifact()
    path = write_maps(tmp_path / "run.maps.npz", arrays)
    back = read_maps(path)
    assert set(back) == set(KEYS)
    for key in KEYS:
        np.testing.assert_array_equal(back[key], arrays[key])
    assert [p.name for p in tmp_path.iterdir()] == ["run.maps.npz"]


def test_missing_keys_and_corrupt_files_are_one_clear_error(tmp_path):
    arrays = _artifact()
    del arrays["maps"]
    with pytest.raises(CheckpointError, match="lacks maps"):
        write_maps(tmp_path / "a.npz", arrays)
    (tmp_path / "b.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_maps(tmp_path / "b.npz")
    bad = _artifact()
    bad["scores"] = bad["scores"][:2]
    with pytest.raises(CheckpointError, match="inconsistent shapes"):
        write_maps(tmp_path / "c.npz", bad)


@pytest.mark.parametrize("channels", [1, 3])
def test_figure_has_a_row_per_image_normal_first_and_one_map_colour_scale(channels):
    arrays = _artifact(c=channels)
    fig = maps_figure(arrays, title="synthetic seed 0")
    axes = fig.axes[:-1]  # the last axes is the colour bar
    assert len(axes) == 4 * 3
    labels = [axes[3 * r].get_ylabel().split()[0] for r in range(4)]
    assert labels == ["normal", "normal", "anomalous", "anomalous"]
    climits = {axes[3 * r + 2].images[0].get_clim() for r in range(4)}
    assert climits == {(0.0, float(arrays["maps"].max()))}
    shown = axes[1].images[0].get_array()
    first_normal = int(np.flatnonzero(arrays["labels"] == 1)[0])
    np.testing.assert_allclose(np.asarray(shown).reshape(28, 28, -1)[..., :channels].squeeze(),
                               arrays["restored"][first_normal].mean(0).squeeze(), rtol=1e-6)
    for fmt, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt)
        assert buffer.getvalue().startswith(magic)
    capped = maps_figure(arrays, max_rows=2).axes
    assert len(capped) == 2 * 3 + 1
    assert [capped[3 * r].get_ylabel().split()[0] for r in range(2)] == ["normal", "anomalous"]  # both classes


def test_maps_module_imports_neither_torch_nor_ray():
    code = ("import sys, dia_ray.results.maps\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
