"""Figures of a leaderboard and of the runs behind it (matplotlib's object API on its own canvas, no pyplot: no
global state, no display needed). Every function returns a :class:`~matplotlib.figure.Figure`;
:func:`figure_bytes` renders it as PNG, SVG or PDF, so nothing here touches the filesystem.

Conventions: a fixed colour per method across all figures; the paper's numbers in black so they read as
references, not as another method; AUROC is the last-epoch number unless a label says otherwise.
"""

from __future__ import annotations

import io
import math
import zlib

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dia_ray.errors import ConfigError
from dia_ray.results.leaderboard import METHOD_ORDER, dataset_label, latest_runs
from dia_ray.results.paper import ABLATION_PARAMS, normalise_params, paper_value

PARAM_LABELS = {"t_range": "dissolving step range t ~ U(lo, hi)", "kernel_size": "blur kernel size k",
                "resolution": "dissolving resolution r", "shift": "shift type", "batch_size": "batch size"}
FIGURE_FORMATS = ("png", "svg", "pdf")
NORMAL, ANOMALY = "#1b7837", "#c2185b"  # score histograms: normal vs anomalous test images
PAPER = "black"


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """``fig`` as PNG (120 dpi), SVG (text kept as text, so it is searchable and small) or PDF; no dates in the
    metadata."""
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"figure format '{fmt}' unknown; choose from: {', '.join(FIGURE_FORMATS)}")
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format=fmt, dpi=120, bbox_inches="tight", metadata=metadata)
    return buffer.getvalue()


def _method_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _color(method: str) -> str:
    """A fixed colour per method across all plots (matplotlib's C0..C9 cycle)."""
    if method in METHOD_ORDER:
        return f"C{METHOD_ORDER.index(method)}"
    return f"C{len(METHOD_ORDER) + zlib.crc32(method.encode()) % (10 - len(METHOD_ORDER))}"


def row_labels(df: pd.DataFrame) -> list[str]:
    """The name of each leaderboard row in figures: the method, plus the config hash when a method has several
    rows (a ``--by config`` table)."""
    several = df.duplicated(["dataset", "method"], keep=False)
    return [f"{m} {h[:6]}" if many else m for m, h, many in zip(df["method"], df["config_hash"], several)]


def _runs(frame: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The seeds behind one leaderboard row, by seed."""
    runs = frame[(frame["dataset"] == row["dataset"]) & (frame["method"] == row["method"])
                 & (frame["config_hash"] == row["config_hash"])]
    return runs.sort_values("seed")


def _scored(run: pd.Series) -> bool:
    return len(run["test_labels"]) > 0 and len(run["test_labels"]) == len(run["test_scores"])


def _title(ax_or_fig, text: str, sweep: str | None) -> None:
    full = f"{text} (sweep {sweep})" if sweep else text
    (ax_or_fig.suptitle if isinstance(ax_or_fig, Figure) else ax_or_fig.set_title)(full)


# --------------------------------------------------------------------------------------------- the leaderboard
def plot_leaderboard(df: pd.DataFrame, frame: pd.DataFrame, sweep: str | None = None,
                     datasets: list[str] | None = None) -> Figure:
    """AUROC (last epoch) per leaderboard row, one panel per dataset: the seed mean with its 95% DeLong CI as
    error bar, every seed as a dot, the paper's number (best-test epoch) as a black bar where there is one.
    ``df`` is a :func:`~dia_ray.results.leaderboard.build` table, ``frame`` its :meth:`Collection.frame`."""
    if df.empty:
        raise ConfigError("nothing to plot: the leaderboard is empty")
    datasets = datasets or list(dict.fromkeys(df["dataset"]))
    frame = latest_runs(frame)
    labels = pd.Series(row_labels(df), index=df.index)
    widest = max(int((df["dataset"] == d).sum()) for d in datasets)
    ncols = min(len(datasets), 3)
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(max(3.2, 0.9 * widest + 1.4) * ncols, 3.8 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    rng = np.random.default_rng(0)  # jitter of the seed dots only
    lows = []
    for ax, dataset in zip(axes, datasets):
        rows = df[df["dataset"] == dataset]
        for x, (index, row) in enumerate(rows.iterrows()):
            color = _color(row["method"])
            seeds = _runs(frame, row)["auroc_last"].to_numpy(float)
            ax.scatter(x + rng.uniform(-0.12, 0.12, seeds.size), seeds, s=16, color=color, alpha=0.55,
                       edgecolors="none", zorder=2)
            lo, hi = row["ci95_low"], row["ci95_high"]
            err = None if math.isnan(lo) else [[row["auroc_mean"] - lo], [hi - row["auroc_mean"]]]
            ax.errorbar([x + 0.28], [row["auroc_mean"]], yerr=err, fmt="D", color=color, capsize=4, markersize=6,
                        zorder=3)
            lows += [*seeds, lo if not math.isnan(lo) else row["auroc_mean"]]
            paper = row.get("paper_mean", float("nan"))
            if not math.isnan(paper):
                ax.plot([x + 0.28], [paper], marker="_", markersize=22, markeredgewidth=2.5, color=PAPER,
                        linestyle="none", zorder=4)
                lows.append(paper)
        ax.set_xticks(range(len(rows)), labels[rows.index], rotation=20 if len(rows) > 3 else 0, ha="right"
                      if len(rows) > 3 else "center")
        ax.set_xlim(-0.6, len(rows) - 0.2)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(dataset_label(dataset))
        ax.set_ylabel("AUROC (last epoch)")
        ax.grid(axis="y", alpha=0.3)
    low = min(v for v in lows if not math.isnan(v))
    for ax in axes[:len(datasets)]:
        ax.set_ylim(max(0.0, min(0.45, math.floor((low - 0.05) * 10) / 10)), 1.0)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    # a key in grey: the marks mean the same in every method's colour
    key = [Line2D([], [], marker="o", markersize=4, color="grey", alpha=0.6, linestyle="none", label="seeds"),
           Line2D([], [], marker="D", markersize=5, color="grey", label="mean, 95% DeLong CI"),
           Line2D([], [], marker="_", markersize=14, markeredgewidth=2.5, color=PAPER, linestyle="none",
                  label="paper (best-test epoch)")]
    axes[0].legend(handles=key if "paper_mean" in df and df["paper_mean"].notna().any() else key[:2], fontsize=7,
                   loc="lower left")
    _title(fig, "AUROC per method: seed mean with 95% CI, seeds as dots", sweep)
    return fig


# ------------------------------------------------------------------------------------------ per-dataset figures
def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve with normal (label 1, higher score) as the positive class: at each distinct
    score threshold, the share of anomalies and of normals scored at least that high. Starts at (0, 0)."""
    y, s = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # the last image of each tie group
    tp = np.cumsum(y)[last]
    fp = last + 1 - tp
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def plot_roc(df: pd.DataFrame, frame: pd.DataFrame, dataset: str, sweep: str | None = None) -> Figure:
    """ROC curves of every leaderboard row of ``dataset``: one line per seed (from the stored last-epoch test
    scores), the legend giving the seed-mean AUROC."""
    rows, frame = df[df["dataset"] == dataset], latest_runs(frame)
    fig = Figure(figsize=(5.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
    for label, (_, row) in zip(row_labels(rows), rows.iterrows()):
        runs = [r for _, r in _runs(frame, row).iterrows() if _scored(r)]
        for k, run in enumerate(runs):
            fpr, tpr = roc_points(run["test_labels"], run["test_scores"])
            ax.plot(fpr, tpr, color=_color(row["method"]), linewidth=1.3, alpha=0.8,
                    label=f"{label} (AUROC {row['auroc_mean']:.3f}, {len(runs)} seeds)" if k == 0 else None)
    ax.set_xlabel("anomalies scored as normal (FPR)")
    ax.set_ylabel("normal images scored as normal (TPR)")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    _title(ax, f"{dataset_label(dataset)}: ROC, one line per seed", sweep)
    return fig


def plot_histograms(df: pd.DataFrame, frame: pd.DataFrame, dataset: str, sweep: str | None = None) -> Figure:
    """Test-score histograms, normal vs anomalous images, one panel per leaderboard row of ``dataset`` (the seed
    whose AUROC is the median of the row's seeds: scores of different seeds live on different scales)."""
    rows, frame = df[df["dataset"] == dataset], latest_runs(frame)
    fig = Figure(figsize=(min(3.4 * len(rows), 10.5), 3.0 * math.ceil(len(rows) / 3) + 0.5), layout="constrained")
    axes = fig.subplots(math.ceil(len(rows) / 3), min(len(rows), 3), squeeze=False).ravel()
    for ax, label, (_, row) in zip(axes, row_labels(rows), rows.iterrows()):
        runs = [r for _, r in _runs(frame, row).iterrows() if _scored(r)]
        if not runs:
            ax.set_title(f"{label}: no stored scores", fontsize=9)
            ax.set_axis_off()
            continue
        run = sorted(runs, key=lambda r: r["auroc_last"])[(len(runs) - 1) // 2]
        y, s = np.asarray(run["test_labels"]), np.asarray(run["test_scores"], dtype=float)
        bins = np.histogram_bin_edges(s, bins=min(30, max(8, s.size // 8)))
        ax.hist(s[y == 1], bins=bins, histtype="stepfilled", alpha=0.45, color=NORMAL,
                label=f"normal ({(y == 1).sum()})")
        ax.hist(s[y == 0], bins=bins, histtype="stepfilled", alpha=0.45, color=ANOMALY,
                label=f"anomaly ({(y == 0).sum()})")
        ax.set_title(f"{label}, seed {run['seed']} (AUROC {run['auroc_last']:.3f})", fontsize=9)
        ax.set_xlabel("score (higher = more normal)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test images")
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    _title(fig, f"{dataset_label(dataset)}: test scores, normal vs anomalous", sweep)
    return fig


def plot_history(df: pd.DataFrame, frame: pd.DataFrame, dataset: str, sweep: str | None = None) -> Figure:
    """Per-epoch test AUROC (left) and training loss (right) of every leaderboard row of ``dataset``, one line per
    seed, from the records' ``history``; the paper's number (best-test epoch) as a black-edged triangle in the
    row's colour after the last epoch."""
    rows, frame = df[df["dataset"] == dataset], latest_runs(frame)
    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    auroc_ax, loss_ax = fig.subplots(1, 2)
    last_epoch, paper_shown = 0, False
    for label, (_, row) in zip(row_labels(rows), rows.iterrows()):
        color = _color(row["method"])
        for k, (_, run) in enumerate(_runs(frame, row).iterrows()):
            history = [h for h in (run.get("history") or []) if isinstance(h, dict)]
            epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
            last_epoch = max([last_epoch, *epochs])
            evaluated = [(e, h["auroc"]) for e, h in zip(epochs, history) if _finite(h.get("auroc"))]
            if evaluated:
                auroc_ax.plot(*zip(*evaluated), marker="o", markersize=3, color=color, alpha=0.8,
                              label=label if k == 0 else None)
            losses = [(e, h["loss"]) for e, h in zip(epochs, history) if _finite(h.get("loss"))]
            if losses:
                loss_ax.plot(*zip(*losses), color=color, alpha=0.8, label=label if k == 0 else None)
        paper = row.get("paper_mean", float("nan"))
        if not math.isnan(paper) and last_epoch:
            auroc_ax.plot([last_epoch + 0.35], [paper], marker="<", markersize=8, color=color, markeredgecolor=PAPER,
                          linestyle="none")
            paper_shown = True
    if paper_shown:  # one legend entry for the paper's markers, whatever their colour
        auroc_ax.plot([], [], marker="<", markersize=8, color="lightgrey", markeredgecolor=PAPER, linestyle="none",
                      label="paper (best-test epoch)")
    if not auroc_ax.lines:
        auroc_ax.text(0.5, 0.5, "no per-epoch history in these records", ha="center", transform=auroc_ax.transAxes)
    auroc_ax.set_xlabel("epoch")
    auroc_ax.set_ylabel("test AUROC")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    for ax in (auroc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, names = ax.get_legend_handles_labels()
        if handles:
            unique = dict(zip(names, handles))
            ax.legend(unique.values(), unique.keys(), fontsize=7)
    _title(fig, f"{dataset_label(dataset)}: AUROC and loss per epoch, one line per seed", sweep)
    return fig


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------- ablations
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


def plot_ablation(frame: pd.DataFrame, param: str, sweep: str | None = None) -> Figure:
    """AUROC (last epoch, mean ± std over the records at each value) against ablation parameter ``param`` (one of
    :data:`~dia_ray.results.paper.ABLATION_PARAMS`), one panel per dataset, one line per method; the paper's values
    for the same cells as black-edged crosses on dashed lines (best-test epoch). ``frame`` is a
    :meth:`Collection.frame`."""
    if param not in ABLATION_PARAMS:
        raise ConfigError(f"ablation parameter '{param}' unknown; choose from: {', '.join(ABLATION_PARAMS)}")
    frame = latest_runs(frame)
    values = param_values(frame, param)
    data = frame.assign(x=values.map(_tick))[values.notna()]
    if data.empty:
        raise ConfigError(f"no result records carry the parameter '{param}'")
    value_of = dict(zip(data["x"], values[values.notna()]))  # tick label -> value (tuples do not group well)
    datasets = list(dict.fromkeys(data["dataset"]))
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows + 0.4), layout="constrained")
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
                        color=_color(method), marker="x", markersize=8, markeredgecolor=PAPER,
                        label=f"{method}: paper (best-test)")
        ax.set_xticks([position[_tick(v)] for v in order], [_tick(v) for v in order])
        ax.set_title(dataset_label(dataset))
        ax.set_xlabel(PARAM_LABELS[param])
        ax.set_ylabel("AUROC (last epoch)")
        ax.legend(fontsize=7)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    _title(fig, f"Ablation: {PARAM_LABELS[param]}", sweep)
    return fig


def _sort_key(value) -> tuple:
    return (0, value, "") if isinstance(value, (int, float, np.number, tuple)) else (1, 0, str(value))


def _tick(value) -> str:
    return f"{value[0]}-{value[1]}" if isinstance(value, tuple) else str(value)
