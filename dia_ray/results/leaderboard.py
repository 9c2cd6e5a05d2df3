"""Leaderboard tables: one row per dataset x method (or per config), built from result records only.

Statistical choices (also printed under every table, see :data:`NOTES`):
- **AUROC** is ``auroc_last`` (the model after the last epoch): mean ± sample std (ddof 1) over seeds. When one
  seed of a config was run twice, the newer record counts.
- **95% CI**: DeLong (fast algorithm of Sun & Xu 2014) for the *seed-mean* AUROC: the per-image structural
  components are averaged over the seeds that share a test set, which keeps their correlation; seeds scored on
  different test sets count as independent. The CI is the test-set sampling uncertainty of the seed mean given the
  trained models - the seed-to-seed spread is the ± std. Normal approximation, clipped to [0, 1]. Only computed
  when every seed carries its test scores.
- **Paper**: the paper's cell (:func:`~dia_ray.results.paper.paper_cell`) beside our mean ``auroc_best_test``
  (the epoch picked on test AUROC, as the paper did); Δ = ours − paper.
- **p vs CSI**: paired DeLong test of the seed-mean AUROC difference between the row and the best CSI config of
  the same dataset, seeds paired by seed value and only when both runs scored the same test set (same labels, same
  order); the components of the paired differences are averaged over the pairs, so a single z and two-sided p
  summarise all seeds. ``*`` = p < 0.05 and the row beats CSI.
- ``by="method"`` keeps each method's config with the best mean ``auroc_last``: a choice made on the test set,
  hence optimistic; ``by="config"`` lists every config.
- Compute: device-hours summed over seeds (workers x wall time: GPU-hours on GPUs, CPU-worker-hours on CPU);
  images/s and wall time are seed means.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from typing import Any, Iterable, Literal

import numpy as np
import pandas as pd

from dia_ray.data.registry import REGISTRY
from dia_ray.errors import ConfigError
from dia_ray.results.collect import Collection
from dia_ray.results.paper import paper_cell
from dia_ray.results.stats import mean_auroc_ci, paired_mean_delong_test

By = Literal["method", "config"]
FORMATS = ("md", "csv", "html", "json", "latex")
DATA_FORMATS = ("csv", "json")  # asked for alone, these print on stdout (to pipe) instead of being written
METHOD_ORDER = ("dia", "csi", "blur-gaussian", "blur-median", "disyre")
REFERENCE_METHOD = "csi"

COLUMNS = (
    "dataset", "dataset_title", "method", "config_hash", "params", "dissolve_mode", "n_seeds", "seeds", "n_test",
    "auroc_mean", "auroc_std", "ci95_low", "ci95_high", "auroc_best_test_mean",
    "paper_mean", "paper_std", "paper_table", "delta_vs_paper",
    "p_vs_csi", "sig_vs_csi", "paired_seeds",
    "device_hours", "images_per_s", "wall_time_s",
    "sweeps", "t_range_used", "bank_key", "bank_versions", "ddpm_key",
)
CONFIG_PREFIX = "config/"  # the full config of each row, one column per key (nested keys joined by "/", as Tune)
PAPER_COLUMNS = ("paper_mean", "paper_std", "paper_table", "delta_vs_paper")

NOTES = {
    "auroc": "AUROC = auroc_last (model after the last epoch), mean ± sample std over seeds; n = seeds.",
    "ci": "95% CI: DeLong (Sun & Xu 2014) for the seed-mean AUROC, per-image components averaged over seeds that "
          "share a test set; test-set sampling uncertainty only (seed spread is the ± std); normal approximation "
          "clipped to [0, 1].",
    "paper": "Paper: the paper's number (best epoch picked on test AUROC) beside our auroc_best_test mean, labelled "
             "'best-test'; Δ = ours − paper. The table the cell comes from is named.",
    "p": "p vs CSI: two-sided paired DeLong test of the seed-mean AUROC difference against the best CSI config of "
         "the dataset, seeds paired by seed value on the same test set; * = p < 0.05 and the row beats CSI.",
    "best": "One row per method: the config with the best mean auroc_last (chosen on the test set, so optimistic; "
            "--by config lists every config).",
    "compute": "Device-hours: workers × wall time summed over seeds (GPU-h on GPU, CPU-worker-h on CPU); images/s "
               "and wall time are seed means.",
}


def build(source: Collection | pd.DataFrame, by: By = "method", compare_paper: bool = True) -> pd.DataFrame:
    """The leaderboard of ``source`` (a :class:`Collection` or its :meth:`~Collection.frame`).

    One row per dataset x method (its best config) with ``by="method"``, per dataset x config with ``by="config"``.
    Columns: :data:`COLUMNS` (without the paper columns when ``compare_paper`` is False), then the row's config
    flattened into ``config/<key>`` columns. ``df.attrs["notes"]`` holds the footnotes the renderers print.
    """
    if by not in ("method", "config"):
        raise ConfigError(f"--by '{by}' unknown; choose from: method, config")
    frame = source.frame() if isinstance(source, Collection) else source
    columns = [c for c in COLUMNS if compare_paper or c not in PAPER_COLUMNS]
    if frame.empty:
        return _with_notes(pd.DataFrame(columns=columns), by, compare_paper)
    frame = latest_runs(frame)
    configs = [_summarise(runs) for _, runs in frame.groupby(["dataset", "method", "config_hash"], sort=False)]
    table = pd.DataFrame(configs)
    table = table.sort_values(["dataset", "method", "auroc_mean", "n_seeds", "config_hash"],
                              ascending=[True, True, False, False, True])
    if by == "method":
        table = table.drop_duplicates(["dataset", "method"], keep="first")
    table = _significance(table, frame)
    if compare_paper:
        table = _paper(table)
    table = table.iloc[_row_order(table)].reset_index(drop=True)
    config_columns = sorted({c for c in table.columns if c.startswith(CONFIG_PREFIX)})
    out = _with_notes(table.reindex(columns=[*columns, *config_columns]), by, compare_paper)
    out.attrs["params"] = list(table["params_dict"])  # for the compact renderings (only varying params)
    return out


def latest_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One record per (dataset, method, config, seed): when a seed was run twice, the newer record counts."""
    return (frame.sort_values("created_at", kind="stable")
            .drop_duplicates(["dataset", "method", "config_hash", "seed"], keep="last"))


def _summarise(runs: pd.DataFrame) -> dict:
    first = runs.iloc[0]
    aurocs = runs["auroc_last"].astype(float)
    row = {
        "dataset": first["dataset"],
        "dataset_title": dataset_label(first["dataset"]),
        "method": first["method"],
        "config_hash": first["config_hash"],
        "params": format_params(first["params"]),
        "dissolve_mode": ",".join(sorted(set(runs["dissolve_mode"].astype(str)))),
        "n_seeds": int(runs["seed"].nunique()),
        "seeds": ",".join(str(s) for s in sorted(runs["seed"])),
        "n_test": int(runs["n_test"].max()),
        "auroc_mean": float(aurocs.mean()),
        "auroc_std": float(aurocs.std(ddof=1)) if len(aurocs) > 1 else float("nan"),
        "auroc_best_test_mean": float(runs["auroc_best_test"].astype(float).mean()),
        "ci95_low": float("nan"),
        "ci95_high": float("nan"),
        "device_hours": float(runs["device_hours"].sum()),
        "images_per_s": float(runs["images_per_s"].mean()),
        "wall_time_s": float(runs["wall_time_s"].mean()),
        "params_dict": first["params"],
        # provenance: what the runs actually used (the config may leave it to defaults)
        "sweeps": ",".join(sorted(distinct(runs.get("sweep", [])))),
        "t_range_used": ",".join(distinct(runs.get("t_range", []), lambda v: f"{v[0]}-{v[1]}")),
        "bank_key": ",".join(distinct(runs.get("bank_key", []))),
        "bank_versions": ",".join(distinct(runs.get("bank_versions", []), lambda v: str(int(v)))),
        "ddpm_key": ",".join(distinct(runs.get("ddpm_key", []))),
        **flatten(first["config"] if isinstance(first["config"], dict) else {}, CONFIG_PREFIX),
    }
    scored = [_scored(r) for _, r in runs.iterrows()]
    if all(s is not None for s in scored):
        ci = mean_auroc_ci(scored)
        row["ci95_low"], row["ci95_high"] = ci.low, ci.high
    return row


def distinct(values: Iterable, show=str) -> list[str]:
    """The distinct values of a column as shown by ``show``, in order of appearance; missing ones (None, NaN, "")
    left out."""
    present = (v for v in values if v is not None and v != "" and not (isinstance(v, float) and math.isnan(v)))
    return list(dict.fromkeys(show(v) for v in present))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'dissolve': {'t_min': 30}} → {'<prefix>dissolve/t_min': 30}; lists stay values (as Tune's dataframes)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scored(run: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, scores) of one run if it carries a usable score vector (both classes, one finite score per image);
    a run without one (an old record without scores) keeps its AUROC row but gives no CI or test. The collector
    already skips records with broken score vectors; a frame from elsewhere may still hold them."""
    labels, scores = np.asarray(run["test_labels"], dtype=int), np.asarray(run["test_scores"], dtype=float)
    if (labels.size == 0 or labels.shape != scores.shape or not np.isin(labels, (0, 1)).all()
            or labels.min() == labels.max() or not np.isfinite(scores).all()):
        return None
    return labels, scores


def _significance(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    table = table.assign(p_vs_csi=float("nan"), sig_vs_csi="", paired_seeds=0)
    for dataset, rows in table.groupby("dataset", sort=False):
        reference = rows[rows["method"] == REFERENCE_METHOD]
        if reference.empty:
            continue
        ref_hash = reference.sort_values("auroc_mean", ascending=False).iloc[0]["config_hash"]
        ref_runs = _runs_by_seed(frame, dataset, REFERENCE_METHOD, ref_hash)
        for index, row in rows.iterrows():
            if row["method"] == REFERENCE_METHOD:
                continue
            runs = _runs_by_seed(frame, dataset, row["method"], row["config_hash"])
            pairs = [(labels, scores, ref_runs[seed][1]) for seed, (labels, scores) in sorted(runs.items())
                     if seed in ref_runs and np.array_equal(labels, ref_runs[seed][0])]
            if not pairs:
                continue
            test = paired_mean_delong_test(pairs)
            table.loc[index, ["p_vs_csi", "paired_seeds"]] = [test.p, len(pairs)]
            table.loc[index, "sig_vs_csi"] = "*" if test.p < 0.05 and test.difference > 0 else ""
    return table


def _runs_by_seed(frame: pd.DataFrame, dataset: str, method: str, config_hash: str) -> dict[int, tuple]:
    runs = frame[(frame["dataset"] == dataset) & (frame["method"] == method) & (frame["config_hash"] == config_hash)]
    out = {}
    for _, run in runs.iterrows():
        scored = _scored(run)
        if scored is not None:
            out[int(run["seed"])] = scored
    return out


def _paper(table: pd.DataFrame) -> pd.DataFrame:
    cells = [paper_cell(r.dataset, r.method, r.params_dict) for r in table.itertuples()]
    table = table.assign(
        paper_mean=[c.mean if c else float("nan") for c in cells],
        paper_std=[c.std if c and c.std is not None else float("nan") for c in cells],
        paper_table=[c.table if c else "" for c in cells],
    )
    return table.assign(delta_vs_paper=table["auroc_best_test_mean"] - table["paper_mean"])


def _row_order(table: pd.DataFrame) -> list[int]:
    datasets = list(REGISTRY)

    def key(i: int) -> tuple:
        row = table.iloc[i]
        d, m = row["dataset"], row["method"]
        return (datasets.index(d) if d in datasets else len(datasets), d,
                METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m, -row["auroc_mean"])

    return sorted(range(len(table)), key=key)


def dataset_label(dataset: str) -> str:
    """The paper's column title (registry), or the name itself for datasets dia-ray does not know."""
    spec = REGISTRY.get(dataset)
    return spec.title if spec is not None else dataset


def _with_notes(df: pd.DataFrame, by: str, compare_paper: bool) -> pd.DataFrame:
    keys = ["auroc", "ci", *(["paper"] if compare_paper else []), "p", *(["best"] if by == "method" else []),
            "compute"]
    df.attrs["notes"] = [NOTES[k] for k in keys]
    df.attrs["by"] = by
    return df


def format_params(params: dict | None) -> str:
    """{'t_max': 130, 't_min': 30} → 't_range=30-130'; other keys sorted, 'k=v' joined by ', '."""
    params = dict(params or {})
    if "t_min" in params and "t_max" in params:
        params["t_range"] = f"{params.pop('t_min')}-{params.pop('t_max')}"
    return ", ".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                     for k, v in sorted(params.items()))


# ------------------------------------------------------------------------------------------------------- rendering
# Every rendering (terminal, markdown, HTML, LaTeX) formats its cells with these functions, so a number reads the
# same everywhere (e.g. a p-value below 0.001 is "<0.001" in all of them).
def fmt_num(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_p(value: float, mark: str = "") -> str:
    """'<0.001*', '0.042*', '0.310', '–' (no test): ``mark`` is the row's sig_vs_csi."""
    if value is None or math.isnan(value):
        return "–"
    return ("<0.001" if value < 0.001 else f"{value:.3f}") + mark


def fmt_duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def varying_params(df: pd.DataFrame) -> list[str]:
    """Per row, only the parameters whose values differ between the rows shown of the same method family (DIA, CSI
    and blur share one, DISYRE has its own; the full set is in the csv/json ``config/`` columns); constants and unset
    (None) values are left out."""
    dicts = [dict(d or {}) for d in df.attrs.get("params", [])]
    if len(dicts) != len(df) or len(df) < 2:
        return ["–"] * len(df)
    # DISYRE's parameters (patch, box, restoration steps, its own batch) are another method's namespace: compared
    # with the contrastive methods every one of them would "vary"; each family is compared within itself
    methods = df["method"].tolist() if "method" in df.columns else [""] * len(df)
    families = ["disyre" if m == "disyre" else "contrastive" for m in methods]
    varying: dict[str, list[str]] = {}
    for fam in set(families):
        peers = [d for d, f in zip(dicts, families) if f == fam]
        keys = sorted({k for d in peers for k in d})
        varying[fam] = [k for k in keys if len({repr(d.get(k)) for d in peers}) > 1]
    return [format_params({k: d.get(k) for k in varying[fam] if d.get(k) is not None}) or "–"
            for d, fam in zip(dicts, families)]


# display column → the numeric column it sorts by (HTML) / its alignment
SORT_KEYS = {"n": "n_seeds", "AUROC (last)": "auroc_mean", "95% CI": "ci95_low", "Best-test": "auroc_best_test_mean",
             "Paper (best-test)": "paper_mean", "Δ vs paper": "delta_vs_paper", "p vs CSI": "p_vs_csi",
             "Device-h": "device_hours", "img/s": "images_per_s", "Wall": "wall_time_s"}
WIDE_ONLY = ("Config", "Best-test", "Δ vs paper", "Paper table", "Device-h", "img/s", "Wall")


def display_table(df: pd.DataFrame, wide: bool = True) -> pd.DataFrame:
    """The human-readable cells every rendering shows: 'mean ± std', CI as [low, high], p with its mark. Without
    ``wide``, only the columns that fit a 100-column terminal (:data:`WIDE_ONLY` left out)."""
    out = pd.DataFrame({
        "Dataset": df["dataset_title"],
        "Method": df["method"],
        "Config": df["config_hash"].str.slice(0, 8),
        "Params": varying_params(df),
        "n": df["n_seeds"].astype(int).astype(str),
        "AUROC (last)": [f"{fmt_num(m)} ± {fmt_num(s)}" for m, s in zip(df["auroc_mean"], df["auroc_std"])],
        "95% CI": ["–" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
                   for lo, hi in zip(df["ci95_low"], df["ci95_high"])],
        "Best-test": [fmt_num(v) for v in df["auroc_best_test_mean"]],
    })
    if "paper_mean" in df:
        out["Paper (best-test)"] = [
            "–" if math.isnan(m) else (f"{m:.3f}" if math.isnan(s) or not wide else f"{m:.3f} ± {s:.2f}")
            for m, s in zip(df["paper_mean"], df["paper_std"])]
        out["Δ vs paper"] = ["–" if math.isnan(d) else f"{d:+.3f}" for d in df["delta_vs_paper"]]
        out["Paper table"] = df["paper_table"].replace("", "–")
    out["p vs CSI"] = [fmt_p(p, sig) for p, sig in zip(df["p_vs_csi"], df["sig_vs_csi"])]
    out["Device-h"] = [f"{h:.3g}" for h in df["device_hours"]]
    out["img/s"] = [fmt_num(v, 1) for v in df["images_per_s"]]
    out["Wall"] = [fmt_duration(s) for s in df["wall_time_s"]]
    return out if wide else out.drop(columns=[c for c in WIDE_ONLY if c in out])


def notes(df: pd.DataFrame) -> list[str]:
    return list(df.attrs.get("notes", []))


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table with the footnotes below it."""
    table = display_table(df)
    header = list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.itertuples(False)]
    if notes(df):
        lines += ["", *[f"{i}. {note}" for i, note in enumerate(notes(df), 1)]]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """Every column at full precision, one column per config key (machine-readable; footnotes live in the
    md/html/json outputs)."""
    return df.to_csv(index=False)


def to_json(df: pd.DataFrame) -> str:
    """``{"by": ..., "notes": [...], "rows": [{column: value}, ...]}``, NaN as null."""
    rows = [{key: _plain(value) for key, value in row.items()} for row in df.to_dict(orient="records")]
    return json.dumps({"by": df.attrs.get("by"), "notes": notes(df), "rows": rows}, indent=2) + "\n"


def _plain(value):
    """numpy scalars → Python (full float precision, which DataFrame.to_json caps at 15 digits); NaN → None."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and math.isnan(value) else value


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "±": r"$\pm$", "–": "--", "Δ": r"$\Delta$", "−": r"$-$", "×": r"$\times$"}


def tex_escape(text: str) -> str:
    """Text for LaTeX's text mode: special characters escaped, '--' kept as two hyphens (not an en dash)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text).replace("--", "-\0-")).replace("\0", "{}")


def to_latex(df: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``) that fits an article's text width: one block per
    dataset under its name, the best mean AUROC (last epoch) of each dataset in bold, the paper's number (best-test
    epoch) beside ours, the p-value against CSI, the footnotes as a paragraph under the table. The caption names
    the sweeps unless given."""
    sweeps = sorted({s for cell in df.get("sweeps", []) for s in str(cell).split(",") if s})
    caption = caption or ("AUROC on the test set" + (f", sweep {', '.join(sweeps)}" if sweeps else "") + " (dia-ray)")
    table = display_table(df, wide=False).rename(columns={"Paper (best-test)": "Paper"})
    columns = [c for c in ("Method", "Params", "n", "AUROC (last)", "95% CI", "Paper", "p vs CSI")
               if c in table and (c != "Params" or (table[c] != "–").any())]
    best = df.groupby("dataset")["auroc_mean"].transform("max")
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{3pt}",
             rf"\caption{{{tex_escape(caption)}}}",
             r"\begin{tabular}{" + "".join("r" if c in SORT_KEYS or c == "Paper" else "l" for c in columns) + "}",
             r"\toprule", " & ".join(tex_escape(c) for c in columns) + r" \\"]
    previous = None
    for i, row in table.iterrows():
        if df["dataset"][i] != previous:
            title = tex_escape(row["Dataset"])
            lines += [r"\midrule", rf"\multicolumn{{{len(columns)}}}{{@{{}}l}}{{\textit{{{title}}}}} \\"]
            previous = df["dataset"][i]
        cells = []
        for column in columns:
            cell = tex_escape(row[column])
            if column == "Params" and ", " in row[column]:  # one parameter per line: a narrow column
                cell = r"\begin{tabular}[t]{@{}l@{}}" + r" \\ ".join(map(tex_escape, row[column].split(", "))) + \
                    r"\end{tabular}"
            if column == "AUROC (last)" and df["auroc_mean"][i] == best[i]:
                mean, _, rest = cell.partition(" ")
                cell = rf"\textbf{{{mean}}} {rest}".rstrip()
            cells.append(cell)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes(df):
        lines += [r"\par\smallskip\footnotesize",
                  " ".join(f"({i}) {tex_escape(n)}" for i, n in enumerate(notes(df), 1))]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_terminal(df: pd.DataFrame, width: int | None = None, wide: bool = False) -> str:
    """The table for a terminal, at most ``width`` columns (default: the terminal's, capped at 100 unless
    ``wide``): a rich table when rich is installed, else plain aligned columns."""
    table = display_table(df, wide=wide)
    if not wide:
        table = table.rename(columns={"Paper (best-test)": "Paper"})  # footnote 3 says it is the best-test epoch
        table["Params"] = table["Params"].str.replace(", ", "\n")  # one parameter per line: a narrow column
    width = width or (shutil.get_terminal_size((200, 24)).columns if wide else min(
        100, shutil.get_terminal_size((100, 24)).columns))
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(v)) for v in [c, *table[c]]) for c in table.columns]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(table.columns, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in table.itertuples(False)]
        return "\n".join([*lines, "", *[f"{i}. {n}" for i, n in enumerate(notes(df), 1)]]) + "\n"
    rich_table = Table(title="dia-ray leaderboard", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                       collapse_padding=True)
    for column in table.columns:
        numeric = column in SORT_KEYS or column == "Paper"
        rich_table.add_column(column, overflow="fold", no_wrap=column != "Params", justify="right" if numeric
                              else "left")
    for row in table.itertuples(False):
        rich_table.add_row(*map(str, row))
    buffer = io.StringIO()
    console = Console(file=buffer, width=max(width, 60), color_system=None, highlight=False)
    console.print(rich_table)
    for i, note in enumerate(notes(df), 1):
        console.print(f"{i}. {note}", markup=False)
    if not wide:
        console.print("(--wide shows the config hash, best-test AUROC, Δ vs paper, compute)", markup=False)
    return buffer.getvalue()


TEXT_RENDERERS = {"md": to_markdown, "csv": to_csv, "json": to_json, "latex": to_latex}
EXTENSIONS = {"md": "md", "csv": "csv", "json": "json", "latex": "tex", "html": "html"}


def parse_formats(formats: Iterable[str] | None) -> list[str]:
    """['md', 'csv,html'] → ['md', 'csv', 'html'] (None or empty = all); unknown names are a ConfigError."""
    wanted: list[str] = []
    for item in formats or FORMATS:
        for name in (part.strip().lower() for part in item.split(",")):
            name = "latex" if name == "tex" else name
            if name and name not in FORMATS:
                raise ConfigError(f"--format '{name}' unknown; choose from: {', '.join(FORMATS)}")
            if name and name not in wanted:
                wanted.append(name)
    return wanted or list(FORMATS)
