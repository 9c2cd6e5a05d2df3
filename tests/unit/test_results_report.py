"""The HTML report and the LaTeX table, rendered from realistic records on disk and read back: self-contained,
the same numbers as the markdown, figures of every kind per dataset, links that resolve, a table that compiles."""

from __future__ import annotations

import base64
import posixpath
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from dia_ray.results.collect import collect
from dia_ray.results.leaderboard import build, display_table, to_latex, to_markdown
from dia_ray.results.plots import roc_points
from dia_ray.results.records import write_records
from dia_ray.results.report import publish
from dia_ray.results.stats import auroc
from results_data import DATASETS, SEEDS, VERSIONS, make_record, write_benchmark


class Page(HTMLParser):
    """Tables (rows of cell texts, with each cell's attributes), images, links and the text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.images, self.links, self.scripts, self.text = [], [], [], [], []
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"class": attrs.get("class", ""), "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = ["", attrs]
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a":
            self.links.append(attrs.get("href"))
        elif tag in ("script", "link", "iframe"):
            self.scripts.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1]["rows"][-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    records = write_benchmark(root)
    (root / "results" / "broken.jsonl").write_text('{"dataset": "kvasir", "met')
    report = publish(root, formats=["html", "md", "latex"])
    return root, records, report


def html_of(storage) -> tuple[str, Page]:
    root = storage[0]
    text = (root / "leaderboard" / "report.html").read_text()
    return text, Page(text)


def test_report_is_one_self_contained_page(storage):
    text, page = html_of(storage)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # nothing fetched when viewed: no external script/style/frame, every image inline, no http(s) anywhere
    assert [tag for tag, attrs in page.scripts if attrs.get("src") or attrs.get("href")] == []
    assert all(img["src"].startswith("data:image/svg+xml;base64,") for img in page.images)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "@import" not in text
    assert "prefers-color-scheme:dark" in text  # a dark scheme as well as the light one


def test_header_names_sweep_dates_versions_hardware_and_compute(storage):
    root, records, _ = storage
    _, page = html_of(storage)
    body = " ".join(page.text)
    assert "dia-ray report: sweep demo" in body
    assert f"dia-ray {VERSIONS['dia_ray']}; Ray {VERSIONS['ray']}; torch {VERSIONS['torch']}" in body
    assert "cpu: AMD EPYC 7B13 (2 CPUs) × 2 worker(s)" in body
    hours = sum(r.device_hours for r in records)
    assert f"{hours:.3g} CPU-worker-hours" in body
    first, last = min(r.created_at for r in records), max(r.created_at for r in records)
    utc = "{:%Y-%m-%d %H:%M} UTC".format
    assert f"{utc(pd.Timestamp(first, unit='s'))} – {utc(pd.Timestamp(last, unit='s'))}" in body
    assert "broken.jsonl:1: truncated last line" in body  # the skipped file is listed, not only counted


def test_leaderboard_cells_are_the_markdown_cells(storage):
    root = storage[0]
    _, page = html_of(storage)
    board = next(t for t in page.tables if "leaderboard" in t["class"])
    header = [cell for cell, _ in board["rows"][0]]
    html_rows = [[cell for cell, _ in row] for row in board["rows"][1:]]
    md = [line.strip("|").split(" | ") for line in (root / "leaderboard" / "leaderboard.md").read_text().splitlines()
          if line.startswith("| ")]
    md_frame = pd.DataFrame([[c.strip() for c in row] for row in md[1:]], columns=[c.strip() for c in md[0]])
    assert header == [c for c in md_frame.columns if c not in ("Config", "Paper table")]
    assert html_rows == md_frame[header].values.tolist()
    assert "None" not in " ".join(map(str, html_rows))  # only the params that vary, never unset ones
    p_cells = md_frame["p vs CSI"].tolist()
    assert p_cells.count("<0.001*") == 2 * len(DATASETS) and p_cells.count("–") == len(DATASETS)  # DIA, blur; CSI


def test_leaderboard_marks_best_and_significance_and_sorts_numerically(storage):
    _, page = html_of(storage)
    board = next(t for t in page.tables if "leaderboard" in t["class"])
    header = [cell for cell, _ in board["rows"][0]]
    rows = board["rows"][1:]
    auroc_col, p_col = header.index("AUROC (last)"), header.index("p vs CSI")
    best = [row[header.index("Method")][0] for row in rows if "best" in row[auroc_col][1]["class"]]
    assert best == ["dia"] * len(DATASETS)
    assert all("sig" in row[p_col][1]["class"] for row in rows if row[p_col][0].endswith("*"))
    sort_keys = [float(row[auroc_col][1]["data-sort"]) for row in rows]
    means = [float(row[auroc_col][0].split(" ± ")[0]) for row in rows]
    np.testing.assert_allclose(sort_keys, means, atol=5e-4)
    assert all(row[p_col][1]["data-sort"] == "" for row in rows if row[p_col][0] == "–")


def test_every_dataset_has_ci_roc_histogram_and_epoch_figures_naming_the_sweep(storage):
    _, page = html_of(storage)
    alts = [img["alt"] for img in page.images]
    for title in ("Pneumonia", "Kvasir"):
        assert [a.split(": ", 1)[1] for a in alts if a.startswith(f"{title}:")] == [
            "AUROC per method with 95% CI", "ROC curves", "score histograms", "AUROC and loss per epoch"]
    assert sorted(a for a in alts if a.startswith("ablation")) == ["ablation over kernel_size",
                                                                   "ablation over t_range"]
    for img in page.images:
        svg = base64.b64decode(img["src"].split(",", 1)[1]).decode()
        assert svg.lstrip().startswith("<?xml") and "(sweep demo)" in svg
    ci = base64.b64decode(page.images[0]["src"].split(",", 1)[1]).decode()
    assert "paper (best-test epoch)" in ci and "seeds" in ci and "95% DeLong CI" in ci


def test_run_links_resolve_to_the_record_files_and_trial_folders(storage):
    root, records, _ = storage
    _, page = html_of(storage)
    out = root / "leaderboard"
    targets = [Path(posixpath.normpath(out / unquote(href))) for href in page.links]
    assert all(not href.startswith(("/", "file:")) for href in page.links)  # relative: the page moves with storage
    shown = {(row.dataset, row.method, row.config_hash) for row in storage[2].table.itertuples()}
    runs = [r for r in records if (r.dataset, r.method, r.config_hash) in shown]  # the runs of the rows shown
    sources = collect(root).sources
    assert {t for t in targets if t.suffix == ".jsonl"} == {Path(sources[r.record_id]) for r in runs}
    trials = {Path(r.trial_dir) for r in runs if r.trial_dir}
    assert trials and {t for t in targets if t.suffix != ".jsonl"} == trials
    assert all(t.exists() for t in targets)


def test_report_written_outside_the_storage_links_absolutely(storage, tmp_path):
    root = storage[0]
    publish(root, formats=["html"], out=tmp_path / "elsewhere", figures=False)
    page = Page((tmp_path / "elsewhere" / "report.html").read_text())
    assert page.links and all(href.startswith("file:///") for href in page.links)
    assert all(Path(unquote(href[len("file://"):])).exists() for href in page.links)


def test_roc_points_match_sklearn_and_enclose_the_auroc():
    labels = np.r_[np.ones(30, int), np.zeros(50, int)]
    rng = np.random.default_rng(3)
    scores = np.round(labels + rng.normal(size=labels.size), 1)  # ties on purpose
    fpr, tpr = roc_points(labels, scores)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(labels, scores), abs=1e-12)


# ----------------------------------------------------------------------------------------------------- LaTeX
def latex_body(tex: str) -> list[str]:
    """The lines between the header's \\midrule and \\bottomrule that end a row."""
    body = tex.split(r"\toprule", 1)[1].split(r"\bottomrule")[0]
    return [line.strip() for line in body.splitlines()[2:] if line.strip().endswith(r"\\")]


def test_latex_table_is_booktabs_with_the_paper_column_and_the_best_in_bold(storage):
    root = storage[0]
    df = build(collect(root))
    tex = (root / "leaderboard" / "leaderboard.tex").read_text()
    assert tex == to_latex(df)
    for command in (r"\begin{table}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}", r"\end{table}"):
        assert command in tex
    spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
    header = tex.split(r"\toprule", 1)[1].split(r"\\", 1)[0].strip().split(" & ")
    assert header == ["Method", "Params", "n", "AUROC (last)", r"95\% CI", "Paper", "p vs CSI"]
    assert spec == "llrrrrr"
    lines = latex_body(tex)
    groups = [line for line in lines if line.startswith(r"\multicolumn")]
    assert groups == [rf"\multicolumn{{7}}{{@{{}}l}}{{\textit{{{t}}}}} \\" for t in ("Pneumonia", "Kvasir")]
    rows = [[c.strip() for c in line.removesuffix(r"\\").split(" & ")] for line in lines if line not in groups]
    assert len(rows) == len(df) and all(len(r) == len(header) for r in rows)
    assert [r[0] for r in rows if r"\textbf{" in r[3]] == ["dia"] * len(DATASETS)
    assert [r[5] for r in rows] == [f"{v:.3f}" for v in df["paper_mean"]]
    assert rows[0][header.index("p vs CSI")] == r"\textless{}0.001*"
    assert r"\caption{AUROC on the test set, sweep demo (dia-ray)}" in tex
    assert "-{}-by config" in tex  # the option's two hyphens, not an en dash
    # balanced braces and no raw special characters outside commands
    assert tex.count("{") == tex.count("}") and tex.isascii() and "_" not in tex.replace(r"\_", "")


def test_latex_compiles_in_a_minimal_document(storage, tmp_path):
    engine = shutil.which("pdflatex")
    if engine is None:
        pytest.skip("no pdflatex (apt-get install texlive-latex-base texlive-latex-recommended); the structure is "
                    "checked by test_latex_table_is_booktabs_with_the_paper_column_and_the_best_in_bold")
    tex = (storage[0] / "leaderboard" / "leaderboard.tex").read_text()
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex
                                      + "\\end{document}\n")
    done = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").read_bytes()[:5] == b"%PDF-"
    assert "Overfull \\hbox" not in done.stdout  # the table fits the text width


def test_only_varying_params_are_shown(tmp_path):
    # every record carries the same eight constants (as train_dia.make_record writes them); only t_range varies
    constants = {"kernel_size": None, "resolution": 32, "shift": "rotation", "loss_mode": "shifted_removed",
                 "backbone": "resnet18_imagenet", "epochs": 6, "batch_size": 32}
    records = [make_record("kvasir", "dia", {**constants, "t_min": lo, "t_max": lo + 100}, 1.2, s)
               for lo in (30, 130) for s in SEEDS[:2]]
    records += [make_record("kvasir", "csi", {**constants, "t_min": None, "t_max": None}, 0.5, s) for s in SEEDS[:2]]
    write_records(tmp_path / "r.jsonl", records)
    params = display_table(build(collect(tmp_path), by="config"))["Params"].tolist()
    assert sorted(params) == ["t_range=130-230", "t_range=30-130", "–"]
    assert "None" not in to_markdown(build(collect(tmp_path), by="config"))


def test_disyre_params_do_not_make_the_contrastive_constants_vary(tmp_path):
    constants = {"resolution": 32, "shift": "rotation", "loss_mode": "shifted_removed",
                 "backbone": "resnet18_imagenet", "batch_size": 32}
    records = [make_record("kvasir", "dia", {**constants, "t_min": 30, "t_max": 130}, 1.2, s) for s in SEEDS[:2]]
    records += [make_record("kvasir", "csi", {**constants, "t_min": None, "t_max": None}, 0.5, s) for s in SEEDS[:2]]
    records += [make_record("kvasir", "disyre", {"batch_size": 16, "patch_size": 32, "variant": "dag"}, 0.9, s)
                for s in SEEDS[:2]]
    write_records(tmp_path / "r.jsonl", records)
    table = display_table(build(collect(tmp_path)))
    params = dict(zip(table["Method"], table["Params"]))
    assert params["dia"] == "t_range=30-130" and params["csi"] == "–" and params["disyre"] == "–"
