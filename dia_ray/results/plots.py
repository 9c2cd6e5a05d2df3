"""PNG plots of a leaderboard and of ablation sweeps (matplotlib's Agg canvas, no pyplot: no global state, no
display needed). Paper values are drawn in black so they read as references, not as another method."""

from __future__ import annotations

import io
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dia_ray.errors import ConfigError
from dia_ray.results.leaderboard import METHOD_ORDER, atomic_write, dataset_label
from dia_ray.results.paper import ABLATION_PARAMS, normalise_params, paper_value

PARAM_LABELS = {"t_range": "dissolving step range t ~ U(lo, hi)", "kernel_size": "blur kernel size k",
                "resolution": "dissolving resolution r", "shift": "shift type", "batch_size": "batch size"}


def _method_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _color(method: str) -> str:
    """A fixed colour per method across all plots (matplotlib's C0..C9 cycle)."""
    if method in METHOD_ORDER:
        return f"C{METHOD_ORDER.index(method)}"
    return f"C{len(METHOD_ORDER) + zlib.crc32(method.encode()) % (10 - len(METHOD_ORDER))}"


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return atomic_write(path, buffer.getvalue())


def plot_auroc(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Grouped bars of the leaderboard ``df`` (:func:`~dia_ray.results.leaderboard.build`): AUROC (last epoch) per
    dataset and method, error bars = std over seeds, the paper's number (best-test epoch) as a black tick."""
    if df.empty:
        raise ConfigError("nothing to plot: the leaderboard is empty")
    per_config = df.duplicated(["dataset", "method"]).any()  # a --by config table: tell configs apart
    labels = df["method"] + " " + df["config_hash"].str.slice(0, 6) if per_config else df["method"]
    datasets = list(dict.fromkeys(df["dataset_title"]))
    series = list(dict.fromkeys(labels))
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 1.2 * len(datasets) * max(1, len(series) / 3)), 4.5))
    ax = fig.add_subplot()
    paper_labelled = False
    for k, name in enumerate(series):
        rows = df[labels == name]
        xs = np.array([datasets.index(t) for t in rows["dataset_title"]]) + (k - (len(series) - 1) / 2) * width
        ax.bar(xs, rows["auroc_mean"], width * 0.9, yerr=rows["auroc_std"].fillna(0.0), capsize=3,
               label=name, color=_color(rows["method"].iloc[0]))
        has = rows["paper_mean"].notna().to_numpy() if "paper_mean" in rows else np.zeros(len(rows), bool)
        if has.any():
            ax.plot(xs[has], rows["paper_mean"].to_numpy()[has], linestyle="none", marker="_", markersize=max(
                8.0, 150 * width), markeredgewidth=2.5, color="black",
                label=None if paper_labelled else "paper (best-test epoch)")
            paper_labelled = True
    low = float(np.nanmin([df["auroc_mean"].min(), df.get("paper_mean", df["auroc_mean"]).min()]))
    ax.set_ylim(max(0.0, min(0.5, math.floor((low - 0.05) * 10) / 10)), 1.0)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("AUROC (last epoch), mean ± std over seeds")
    ax.set_title("dia-ray leaderboard")
    ax.legend(fontsize=8, ncols=min(4, len(series) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    return _save(fig, path)


def param_values(frame: pd.DataFrame, param: str) -> pd.Series:
    """The value of ablation parameter ``param`` per record of a Collection frame (None where not recorded);
    ``t_range`` is a (lo, hi) tuple whether the record has ``t_min``/``t_max`` or ``t_range``."""
    # A list, not Series.map: map would turn ints with gaps into floats (3 -> 3.0).
    return pd.Series([normalise_params(p).get(param) for p in frame["params"]], index=frame.index, dtype=object)


def swept_params(frame: pd.DataFrame) -> list[str]:
    """The ablation parameters that take more than one value within some dataset x method of ``frame``."""
    swept = []
    for param in ABLATION_PARAMS:
        values = param_values(frame, param)
        known = frame.assign(value=values.map(_tick))[values.notna()]
        if not known.empty and (known.groupby(["dataset", "method"])["value"].nunique() > 1).any():
            swept.append(param)
    return swept


def plot_ablation(frame: pd.DataFrame, param: str, path: str | os.PathLike) -> Path:
    """AUROC (last epoch, mean ± std over the records at each value) against ablation parameter ``param`` (one of
    :data:`~dia_ray.results.paper.ABLATION_PARAMS`), one panel per dataset, one line per method; the paper's values
    for the same cells as black dashed lines (best-test epoch). ``frame`` is a :meth:`Collection.frame`."""
    if param not in ABLATION_PARAMS:
        raise ConfigError(f"ablation parameter '{param}' unknown; choose from: {', '.join(ABLATION_PARAMS)}")
    values = param_values(frame, param)
    data = frame.assign(x=values.map(_tick))[values.notna()]
    if data.empty:
        raise ConfigError(f"no result records carry the parameter '{param}'")
    value_of = dict(zip(data["x"], values[values.notna()]))  # tick label -> value (tuples do not group well)
    datasets = list(dict.fromkeys(data["dataset"]))
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, dataset in zip(axes, datasets):
        rows = data[data["dataset"] == dataset]
        order = sorted({value_of[x] for x in rows["x"]}, key=_sort_key)
        numeric = all(isinstance(v, (int, float, np.number)) for v in order)
        position = {_tick(v): (v if numeric else i) for i, v in enumerate(order)}
        for method in sorted(set(rows["method"]), key=_method_key):
            stats = rows[rows["method"] == method].groupby("x")["auroc_last"].agg(["mean", "std"])
            stats = stats.loc[sorted(stats.index, key=lambda x: _sort_key(value_of[x]))]
            xs = [position[x] for x in stats.index]
            ax.errorbar(xs, stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", capsize=3, label=method,
                        color=_color(method))
            paper = [paper_value(dataset, method, {param: value_of[x]}) for x in stats.index]
            px = [x for x, p in zip(xs, paper) if p is not None]
            if px:
                ax.plot(px, [p[0] for p in paper if p is not None], linestyle="--", linewidth=0.9,
                        color=_color(method), marker="x", markersize=8, markeredgecolor="black",
                        label=f"{method}: paper (best-test)")
        ax.set_xticks([position[_tick(v)] for v in order], [_tick(v) for v in order])
        ax.set_title(dataset_label(dataset))
        ax.set_xlabel(PARAM_LABELS[param])
        ax.set_ylabel("AUROC (last epoch)")
        ax.legend(fontsize=7)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    fig.suptitle(f"Ablation: {PARAM_LABELS[param]}")
    return _save(fig, path)


def _sort_key(value) -> tuple:
    return (0, value, "") if isinstance(value, (int, float, np.number, tuple)) else (1, 0, str(value))


def _tick(value) -> str:
    return f"{value[0]}-{value[1]}" if isinstance(value, tuple) else str(value)
