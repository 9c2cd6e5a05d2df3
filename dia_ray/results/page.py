"""The HTML report: one self-contained page (CSS, a few lines of click-to-sort JS and every figure inlined as an
SVG data URI; nothing is fetched when it is viewed) that a researcher can mail or put on a share.

Content: a header (sweeps, dates of the records, dia-ray/Ray/torch versions, hardware, device-hours), the
problems the collector skipped, the sortable leaderboard (cells formatted exactly as in the markdown), its
footnotes, then per dataset: AUROC with 95% CIs and every seed, ROC curves, score histograms, per-epoch AUROC and
loss, and the runs with what they dissolved with and links to their record file and Tune trial folder; then the
ablation figures when a parameter was swept. Light and dark colour schemes follow the viewer's setting.
"""

from __future__ import annotations

import base64
import html
import math
import posixpath
import time
from urllib.parse import quote

import pandas as pd

from dia_ray.results.files import relative_link
from dia_ray.results.leaderboard import (SORT_KEYS, dataset_label, display_table, distinct, fmt_duration, fmt_num,
                                         latest_runs)
from dia_ray.results.leaderboard import notes as table_notes
from dia_ray.results.plots import (figure_bytes, plot_ablation, plot_histograms, plot_history, plot_leaderboard,
                                   plot_roc, row_labels, swept_params)

LEFT = ("Dataset", "Method", "Params")  # left-aligned columns of the leaderboard
HIDDEN = ("Config", "Paper table")  # shown as the Method / Paper cells' tooltips instead

STYLE = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1c1e22;--muted:#596170;--line:#d8dbe0;--head:#f1f3f5;--link:#0b5cbd;
--sig:#17663a;--best:#fff4c2;--warn:#8a4b00}
@media (prefers-color-scheme:dark){:root{--bg:#131518;--fg:#e4e6e9;--muted:#a0a8b3;--line:#353a42;--head:#1d2026;
--link:#7ab4ff;--sig:#7fd59c;--best:#3d3613;--warn:#ffb561}img.fig{filter:invert(.88) hue-rotate(180deg)}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1240px;padding:1rem 1.25rem 3rem;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:1.5rem;margin:.2rem 0 .6rem}h2{font-size:1.2rem;margin:2rem 0 .6rem;border-bottom:1px solid var(--line)}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
a{color:var(--link)}code,.mono{font:12.5px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0 0 1rem}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{padding:.28rem .45rem;border-bottom:1px solid var(--line);text-align:right;vertical-align:top;
overflow-wrap:anywhere}
th{background:var(--head);font-weight:600;white-space:nowrap}
th.l,td.l{text-align:left}td.num,td.nowrap{white-space:nowrap}
th button{all:unset;cursor:pointer}th button:focus-visible{outline:2px solid var(--link)}
th[aria-sort=ascending] button::after{content:" \\25B2";font-size:.7em}
th[aria-sort=descending] button::after{content:" \\25BC";font-size:.7em}
td.best{background:var(--best);font-weight:600}td.sig{color:var(--sig);font-weight:600}
ol.notes{font-size:12.5px;color:var(--muted);padding-left:1.4rem}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr));gap:1rem;align-items:start}
figure{margin:0;min-width:0}figure.wide{grid-column:1/-1}
img.fig{display:block;width:auto;max-width:100%;height:auto;background:#fff;border-radius:4px}
figcaption{font-size:12.5px;color:var(--muted);margin-top:.25rem}
details{margin:.6rem 0}summary{cursor:pointer;color:var(--muted)}
.problems li{color:var(--warn);overflow-wrap:anywhere;font-size:13px}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th button").forEach(function (button) {
    button.addEventListener("click", function () {
      var th = button.parentElement, col = th.cellIndex, asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var key = function (row) {
        var cell = row.cells[col], v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort")
                                                                       : cell.textContent.trim();
        var n = parseFloat(v);
        return v === "" ? null : (isNaN(n) ? v : n);
      };
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
        var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    });
  });
});
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _href(target: str, out_dir: str, root: str) -> str:
    """A URL for ``target`` from a page in ``out_dir``: relative inside the storage root, else file:// or as is
    (object-store URIs)."""
    link = relative_link(target, out_dir, root)
    if "://" in link:
        return link
    return ("file://" if posixpath.isabs(link) else "") + quote(link)


def _img(fig, alt: str, caption: str, wide: bool = False) -> str:
    """A figure inlined as an SVG data URI at its natural size (shrunk to fit); ``wide`` spans the whole row."""
    data = base64.b64encode(figure_bytes(fig, "svg")).decode("ascii")
    return (f'<figure{" class=wide" if wide else ""}>'
            f'<img class="fig" alt="{_e(alt)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _value(value):
    """A frame cell with pandas' missing markers (NaN, None) as None."""
    return None if value is None or _nan(value) else value


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def sweep_names(frame: pd.DataFrame) -> list[str]:
    return distinct(frame["sweep"])


def _header(frame: pd.DataFrame, summary: str, root: str) -> str:
    versions = []
    for key, name in (("dia_ray", "dia-ray"), ("ray", "Ray"), ("torch", "torch"), ("python", "Python")):
        seen = distinct(v.get(key) for v in frame["versions"] if isinstance(v, dict))
        versions.append(f"{name} {', '.join(seen) if seen else '(not recorded)'}")
    hardware = distinct(f"{d}: {h or 'not recorded'} × {w} worker(s)"
                         for d, h, w in zip(frame["device"], frame["hardware"], frame["workers"]))
    devices = distinct(frame["device"])
    unit = "GPU-hours" if devices == ["cuda"] else ("CPU-worker-hours" if devices == ["cpu"] else "device-hours")
    sweeps = sweep_names(frame)
    items = [
        ("Sweeps", ", ".join(sweeps) if sweeps else "none (single runs)"),
        ("Records", f"{summary}"),
        ("Runs finished", f"{_utc(frame['created_at'].min())} – {_utc(frame['created_at'].max())}"),
        ("Versions", "; ".join(versions)),
        ("Hardware", "; ".join(hardware)),
        ("Compute", f"{frame['device_hours'].sum():.3g} {unit} (workers × wall time, all runs)"),
        ("Storage", root),
        ("Report made", _utc(time.time())),
    ]
    return '<dl class="meta">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def _leaderboard_table(df: pd.DataFrame) -> str:
    shown = display_table(df)
    columns = [c for c in shown.columns if c not in HIDDEN]
    best = df.groupby("dataset")["auroc_mean"].transform("max")
    head = "".join(f'<th class="{"l" if c in LEFT else ""}" scope="col"><button type="button">{_e(c)}</button></th>'
                   for c in columns)
    body = []
    for i, row in shown.iterrows():
        cells = []
        for c in columns:
            attrs = {"class": {"Method": "l nowrap", "Dataset": "l", "Params": "l"}.get(c, "num")}
            if c in SORT_KEYS and SORT_KEYS[c] in df:
                value = df[SORT_KEYS[c]][i]
                attrs["data-sort"] = "" if _nan(value) else repr(float(value))
            if c == "Method":
                attrs["title"] = f"config {df['config_hash'][i]}"
            if c == "AUROC (last)" and df["auroc_mean"][i] == best[i]:
                attrs["class"] += " best"
                attrs["title"] = "best mean AUROC (last epoch) of this dataset"
            if c == "Paper (best-test)" and "paper_table" in df and df["paper_table"][i]:
                attrs["title"] = f"paper {df['paper_table'][i]}; compare with our best-test column"
            if c == "p vs CSI" and df["sig_vs_csi"][i]:
                attrs["class"] += " sig"
                attrs["title"] = (f"beats CSI: paired DeLong test over {int(df['paired_seeds'][i])} seed(s), "
                                  "p < 0.05")
            cells.append("<td " + " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items()) + f">{_e(row[c])}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table>")


def _runs_table(df: pd.DataFrame, frame: pd.DataFrame, dataset: str, out_dir: str, root: str) -> str:
    rows = df[df["dataset"] == dataset]
    head = ("<tr><th class='l'>Row</th><th>Seed</th><th>AUROC (last)</th><th>Best-test (epoch)</th><th>Epochs</th>"
            "<th class='l'>Dissolved with</th><th>Wall</th><th class='l'>Finished</th><th class='l'>Files</th></tr>")
    body = []
    for label, (_, row) in zip(row_labels(rows), rows.iterrows()):
        runs = frame[(frame["dataset"] == dataset) & (frame["method"] == row["method"])
                     & (frame["config_hash"] == row["config_hash"])].sort_values("seed")
        for _, run in runs.iterrows():
            get = {key: _value(run.get(key)) for key in ("t_range", "bank_key", "bank_versions", "ddpm_key", "source",
                                                         "trial_dir")}
            used = []
            if isinstance(get["t_range"], list):
                used.append(f"t ~ U({get['t_range'][0]}, {get['t_range'][1]})")
            if get["bank_key"]:
                versions = get["bank_versions"]
                used.append(f"bank {get['bank_key']}" + (f" ({int(versions)} versions)" if versions else ""))
            if get["ddpm_key"]:
                used.append(f"DDPM {get['ddpm_key']}")
            links = []
            if get["source"]:
                links.append(f'<a href="{_e(_href(get["source"], out_dir, root))}">record</a>')
            if get["trial_dir"]:
                links.append(f'<a href="{_e(_href(get["trial_dir"], out_dir, root))}">Tune trial</a>')
            body.append(
                f"<tr><td class='l nowrap' title='config {_e(run['config_hash'])}'>{_e(label)}</td><td>{int(run['seed'])}</td>"
                f"<td>{fmt_num(run['auroc_last'])}</td><td>{fmt_num(run['auroc_best_test'])} ({int(run['best_epoch'])})"
                f"</td><td>{int(run['epochs'])}</td><td class='l mono'>{_e('; '.join(used) or '–')}</td>"
                f"<td class='num'>{fmt_duration(float(run['wall_time_s']))}</td>"
                f"<td class='l nowrap'>{_e(_utc(run['created_at']))}</td>"
                f"<td class='l nowrap'>{' · '.join(links) or '–'}</td></tr>")
    return f"<table class='runs'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _disyre_maps(df: pd.DataFrame, frame: pd.DataFrame, dataset: str, sweep: str | None):
    """The anomaly-map grid of the ``disyre`` row of ``dataset`` (its median-AUROC seed's ``maps.npz``, stored
    beside the record), or None when there is no such row or artifact."""
    from dia_ray.errors import DiaRayError
    from dia_ray.results.maps import maps_figure, read_maps

    shown = df[(df["dataset"] == dataset) & (df["method"] == "disyre")]
    if shown.empty or "maps_file" not in frame:
        return None
    runs = frame[(frame["dataset"] == dataset) & (frame["config_hash"] == shown.iloc[0]["config_hash"])
                 & frame["maps_file"].notna()].sort_values("auroc_last")
    if runs.empty:
        return None
    run = runs.iloc[len(runs) // 2]
    location = posixpath.join(posixpath.dirname(run["source"]), run["maps_file"])
    try:
        arrays = read_maps(location)
    except (DiaRayError, OSError):
        return None
    title = f"{dataset_label(dataset)}: DISYRE anomaly maps, seed {run['seed']}" + (f" ({sweep})" if sweep else "")
    return maps_figure(arrays, title, max_rows=4)


def render_html(df: pd.DataFrame, frame: pd.DataFrame, *, summary: str, problems: list[str], root: str,
                out_dir: str) -> str:
    """The report page for leaderboard ``df`` (:func:`~dia_ray.results.leaderboard.build`) of the records in
    ``frame`` (:meth:`Collection.frame`) under storage ``root``; links are made for a page written to
    ``out_dir``."""
    frame = latest_runs(frame)
    sweeps = sweep_names(frame)
    sweep = ", ".join(sweeps) or None
    title = f"dia-ray report: sweep {sweep}" if sweep else "dia-ray report"
    by = df.attrs.get("by", "method")
    parts = [f"<h1>{_e(title)}</h1>", _header(frame, summary, root)]
    if problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in problems)
        parts.append(f"<details class='problems' open><summary>{len(problems)} record file problem(s): skipped, "
                     f"not in the tables</summary><ul>{items}</ul></details>")
    parts += [f"<h2>Leaderboard ({'best config per method' if by == 'method' else 'every config'})</h2>",
              "<p class='mono' style='color:var(--muted)'>Click a column title to sort.</p>",
              _leaderboard_table(df),
              "<ol class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in table_notes(df)) + "</ol>"]
    for dataset in dict.fromkeys(df["dataset"]):
        name = dataset_label(dataset)
        figures = [
            _img(plot_leaderboard(df, frame, sweep, datasets=[dataset]), f"{name}: AUROC per method with 95% CI",
                 "Diamond: seed-mean AUROC (last epoch) with its 95% DeLong CI; dots: the seeds; black bar: the "
                 "paper's number (best-test epoch)."),
            _img(plot_roc(df, frame, dataset, sweep), f"{name}: ROC curves",
                 "ROC of the last-epoch test scores, normal images as the positive class."),
            _img(plot_histograms(df, frame, dataset, sweep), f"{name}: score histograms",
                 "Test-score histograms of normal and anomalous images (the median-AUROC seed of each row).",
                 wide=True),
            _img(plot_history(df, frame, dataset, sweep), f"{name}: AUROC and loss per epoch",
                 "Test AUROC at each evaluated epoch and training loss, from the records' per-epoch history.",
                 wide=True),
        ]
        maps = _disyre_maps(df, frame, dataset, sweep)
        if maps is not None:
            figures.append(_img(maps, f"{name}: DISYRE anomaly maps",
                                "DISYRE on test images (normal rows first): input, restoration (mean of the "
                                "restorations at the ensemble's severities), pixel-wise anomaly map |x − R(x, t)| "
                                "on one colour scale; from the median-AUROC seed of the disyre row.", wide=True))
        parts += [f"<h2 id='{_e(dataset)}'>{_e(name)}</h2>", f"<div class='figs'>{''.join(figures)}</div>",
                  f"<h3>Runs</h3>{_runs_table(df, frame, dataset, out_dir, root)}"]
    swept = swept_params(frame)
    if swept:
        parts.append("<h2>Ablations</h2><div class='figs'>" + "".join(
            _img(plot_ablation(frame, p, sweep), f"ablation over {p}", f"AUROC (last epoch) against {p}; "
                 "mean ± std over the records at each value, the paper's cells as crosses.", wide=True)
            for p in swept) + "</div>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{_e(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{''.join(parts)}\n<script>{SCRIPT}</script>\n</body>\n</html>\n")
