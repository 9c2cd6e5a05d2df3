"""DISYRE's anomaly maps as an artifact and a figure (no Ray, no torch: numpy + matplotlib's Agg canvas).

A finished ``disyre`` run keeps the first k normal and k anomalous test images of its last evaluation in
``maps.npz`` (in the run's final checkpoint and beside its result record, ``<run>.maps.npz``):

=========== ====================== ===============================================================
key         shape                  meaning
=========== ====================== ===============================================================
inputs      (K, H, W, C) float32   test images in [0, 1] (C = 1 grey, 3 colour)
restored    (K, N, H, W, C)        the N restorations R_θ(x, t_k) (multi-step: the iterates)
maps        (K, H, W) float32      pixel-wise anomaly map S (channel mean), higher = more anomalous
labels      (K,) int               1 = normal, 0 = anomalous
scores      (K,) float             image anomaly score (the run's reduction; the record stores −score)
index       (K,) int               row in the run's test split
timesteps   (N,) int               the t_k of the restorations
=========== ====================== ===============================================================

:func:`maps_figure` draws one row per image: input | mean restoration | anomaly map (one colour scale for all rows).
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
from matplotlib.figure import Figure

from dia_ray.errors import CheckpointError
from dia_ray.results.files import read_bytes, write_files

MAPS_FILE = "maps.npz"
KEYS = ("inputs", "restored", "maps", "labels", "scores", "index", "timesteps")


def write_maps(location: str | os.PathLike, arrays: dict[str, np.ndarray]) -> str:
    """Write the artifact whole (compressed npz) to a local path or a storage URI; every key of :data:`KEYS` is
    required."""
    check(arrays, str(location))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(arrays[k]) for k in KEYS})
    parent, _, name = str(location).rpartition("/")
    return write_files(parent or ".", {name: buffer.getvalue()})[0]


def read_maps(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load an artifact written by :func:`write_maps` (a local path or a storage URI; no pickles); a missing or
    malformed file is one clear error."""
    try:
        with np.load(io.BytesIO(read_bytes(str(path))), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"maps file {path} cannot be read ({type(err).__name__}); re-run the disyre run's "
                              "evaluation or delete the file") from None
    check(arrays, str(path))
    return arrays


def check(arrays: dict[str, np.ndarray], where: str) -> None:
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise CheckpointError(f"maps file {where} lacks {', '.join(missing)}")
    k = len(arrays["labels"])
    shapes = {name: np.shape(arrays[name]) for name in ("inputs", "restored", "maps", "scores", "index")}
    if any(s[0] != k for s in shapes.values()) or np.ndim(arrays["restored"]) != 5 or np.ndim(arrays["inputs"]) != 4:
        raise CheckpointError(f"maps file {where} has inconsistent shapes {shapes}")


def _show(ax, image: np.ndarray, **kwargs):
    ax.set_xticks([])
    ax.set_yticks([])
    if image.shape[-1] == 1:
        return ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, **kwargs)
    return ax.imshow(np.clip(image, 0.0, 1.0), **kwargs)


def maps_figure(arrays: dict[str, np.ndarray], title: str | None = None, max_rows: int | None = None) -> Figure:
    """One row per kept test image (``max_rows``: half normal, half anomalous), normal ones first: input | restored
    (mean of the N restorations) | anomaly map (``inferno``, 0 to the largest value shown, shared by all rows). Returns a matplotlib Figure (``fig.savefig``
    writes PNG or SVG)."""
    check(arrays, "(in memory)")
    order = sorted(range(len(arrays["labels"])), key=lambda i: (-int(arrays["labels"][i]), int(arrays["index"][i])))
    if max_rows and len(order) > max_rows:  # as many normal as anomalous rows (the rest from the larger class)
        normal = [i for i in order if int(arrays["labels"][i]) == 1]
        anomalous = [i for i in order if int(arrays["labels"][i]) != 1]
        k = max(max_rows // 2, max_rows - len(anomalous))
        order = normal[:k] + anomalous[:max_rows - min(k, len(normal))]
    vmax = float(max(np.max(arrays["maps"][order]), 1e-8))
    fig = Figure(figsize=(6.6, 2.0 * len(order) + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(len(order), 3, squeeze=False)
    for row, i in zip(axes, order):
        _show(row[0], arrays["inputs"][i])
        _show(row[1], arrays["restored"][i].mean(axis=0))
        heat = row[2].imshow(arrays["maps"][i], cmap="inferno", vmin=0.0, vmax=vmax)
        row[2].set_xticks([])
        row[2].set_yticks([])
        kind = "normal" if int(arrays["labels"][i]) == 1 else "anomalous"
        row[0].set_ylabel(f"{kind} #{int(arrays['index'][i])}\nscore {float(arrays['scores'][i]):.3g}", fontsize=8)
    steps = ", ".join(str(int(t)) for t in arrays["timesteps"])
    for ax, name in zip(axes[0], ("input", f"restored (mean, t = {steps})", "anomaly map")):
        ax.set_title(name, fontsize=9)
    fig.colorbar(heat, ax=axes[:, 2].tolist(), shrink=0.8, label="|x − R(x, t)|")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
