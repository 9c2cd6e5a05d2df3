"""Leaderboards from hand-written records: statistics checked against independent pandas/sklearn computations,
renderings parsed back, plots written. ``write_benchmark`` is also used by the CLI tests."""

from __future__ import annotations

import io
import json
import math
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dia_ray.config import stable_hash
from dia_ray.errors import ConfigError
from dia_ray.results.collect import collect
from dia_ray.results.leaderboard import (
    build,
    to_csv,
    to_html,
    to_json,
    to_markdown,
    to_terminal,
    write_all,
)
from dia_ray.results.plots import plot_ablation, plot_auroc, swept_params
from dia_ray.results.records import ResultRecord, write_records

DATASETS = ("pneumoniamnist", "kvasir")
SEEDS = (0, 1, 2)
# (method, params, how far normal scores sit above anomalous ones): DIA clearly ahead of CSI.
CONFIGS = (
    ("dia", {"t_min": 30, "t_max": 130}, 1.6),
    ("dia", {"t_min": 130, "t_max": 230}, 1.2),
    ("csi", {}, 0.5),
    ("blur-gaussian", {"kernel_size": 3}, 0.8),
    ("blur-gaussian", {"kernel_size": 7}, 1.0),
)


def shared_test_set(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (60 normal, 80 anomalous, shuffled) and a per-image difficulty shared by every method."""
    rng = np.random.default_rng(DATASETS.index(dataset) if dataset in DATASETS else 99)
    return rng.permutation(np.r_[np.ones(60, int), np.zeros(80, int)]), rng.normal(size=140)


def make_record(dataset, method, params, separation, seed, **changes) -> ResultRecord:
    labels, difficulty = shared_test_set(dataset)
    rng = np.random.default_rng([seed, len(method), int(10 * separation)])
    scores = separation * labels + difficulty + 0.5 * rng.normal(size=labels.size)
    auc = roc_auc_score(labels, scores)
    wall = 60.0 + 15 * seed + 10 * separation
    fields = dict(
        dataset=dataset, method=method, seed=seed, params=params,
        config_hash=stable_hash({"dataset": dataset, "method": method, **params}),
        auroc_last=auc, auroc_best_test=min(1.0, auc + 0.02 * rng.random()), best_epoch=4, epochs=5,
        test_scores=scores.tolist(), test_labels=labels.tolist(), wall_time_s=wall,
        images_per_s=2.0 + seed + separation, workers=2, device_hours=2 * wall / 3600,
    )
    return ResultRecord(**{**fields, **changes})


def write_benchmark(root: Path) -> list[ResultRecord]:
    """5 configs x 2 datasets x 3 seeds, spread over ROOT/results and Tune-like trial directories."""
    records = [make_record(d, m, p, sep, s) for d in DATASETS for m, p, sep in CONFIGS for s in SEEDS]
    write_records(root / "results" / "part1.jsonl", records[:20])
    for i, rec in enumerate(records[20:]):
        write_records(root / "sweeps" / "demo" / rec.dataset / f"trial_{i:03d}" / "records.jsonl", [rec])
    return records


def read_jsonl_independently(root: Path) -> pd.DataFrame:
    rows = [json.loads(line) for path in sorted(root.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    write_benchmark(root)
    return root, collect(root)


def test_by_config_matches_an_independent_pandas_computation(bench):
    root, collection = bench
    expected = (read_jsonl_independently(root).groupby(["dataset", "method", "config_hash"])
                .agg(mean=("auroc_last", "mean"), std=("auroc_last", "std"), n=("seed", "nunique"),
                     best=("auroc_best_test", "mean"), hours=("device_hours", "sum"), ips=("images_per_s", "mean"),
                     wall=("wall_time_s", "mean")))
    df = build(collection, by="config").set_index(["dataset", "method", "config_hash"])
    assert len(df) == len(expected) == len(DATASETS) * len(CONFIGS)  # one row per config
    joined = df.join(expected, how="inner")
    assert len(joined) == len(expected)
    np.testing.assert_allclose(joined["auroc_mean"], joined["mean"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(joined["auroc_std"], joined["std"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(joined["auroc_best_test_mean"], joined["best"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(joined["device_hours"], joined["hours"], rtol=1e-12)
    np.testing.assert_allclose(joined["images_per_s"], joined["ips"], rtol=1e-12)
    np.testing.assert_allclose(joined["wall_time_s"], joined["wall"], rtol=1e-12)
    assert (joined["n_seeds"] == joined["n"]).all() and (joined["n_seeds"] == 3).all()


def test_by_method_keeps_the_best_config_of_each_method(bench):
    _, collection = bench
    configs = build(collection, by="config")
    best = build(collection, by="method")
    assert len(best) == len(DATASETS) * 3 and not best.duplicated(["dataset", "method"]).any()
    top = configs.loc[configs.groupby(["dataset", "method"])["auroc_mean"].idxmax()]
    assert (best.set_index(["dataset", "method"])["config_hash"].sort_index()
            == top.set_index(["dataset", "method"])["config_hash"].sort_index()).all()
    assert best["dataset_title"].tolist()[:3] == ["Pneumonia"] * 3  # registry order, then DIA, CSI, blur
    assert best["method"].tolist()[:3] == ["dia", "csi", "blur-gaussian"]
    assert any("chosen on the test set" in note for note in best.attrs["notes"])


def test_ci_brackets_the_mean_and_comes_from_the_seed_scores(bench):
    from dia_ray.results.stats import mean_auroc_ci

    _, collection = bench
    df = build(collection, by="config")
    assert (df["ci95_low"] <= df["auroc_mean"]).all() and (df["auroc_mean"] <= df["ci95_high"]).all()
    row = df.iloc[0]
    runs = [(np.array(r.test_labels), np.array(r.test_scores)) for r in collection.records
            if r.config_hash == row["config_hash"]]
    ci = mean_auroc_ci(runs)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((ci.low, ci.high))
    assert ci.auroc == pytest.approx(row["auroc_mean"])  # scores are the last-epoch scores


def test_dia_beats_csi_significantly_and_csi_has_no_self_test(bench):
    _, collection = bench
    df = build(collection).set_index(["dataset", "method"])
    for dataset in DATASETS:
        assert df.loc[(dataset, "dia"), "p_vs_csi"] < 0.05
        assert df.loc[(dataset, "dia"), "sig_vs_csi"] == "*"
        assert df.loc[(dataset, "dia"), "paired_seeds"] == 3
        assert math.isnan(df.loc[(dataset, "csi"), "p_vs_csi"])


def test_identical_scorers_are_not_marked_significant(tmp_path):
    records = [make_record("covid", m, {}, 1.0, s) for m in ("dia", "csi") for s in SEEDS]
    csi = {r.seed: r for r in records if r.method == "csi"}
    records = [r.model_copy(update={"test_scores": csi[r.seed].test_scores, "auroc_last": csi[r.seed].auroc_last})
               if r.method == "dia" else r for r in records]
    write_records(tmp_path / "r.jsonl", records)
    row = build(collect(tmp_path)).set_index("method").loc["dia"]
    assert row["p_vs_csi"] == 1.0 and row["sig_vs_csi"] == ""


def test_paper_column_compares_best_test_with_the_matching_cell(bench):
    _, collection = bench
    df = build(collection, by="config")
    pneu = df[(df["dataset"] == "pneumoniamnist") & (df["method"] == "dia")].set_index("params")
    assert pneu.loc["t_range=30-130", "paper_mean"] == 0.903 and pneu.loc["t_range=30-130", "paper_table"] == "Table 1"
    assert math.isnan(pneu.loc["t_range=130-230", "paper_mean"])  # Table 2 has no Pneumonia column
    kv = df[(df["dataset"] == "kvasir") & (df["method"] == "dia")].set_index("params")
    assert kv.loc["t_range=30-130", "paper_mean"] == 0.796
    delta = kv.loc["t_range=130-230", "auroc_best_test_mean"] - 0.860
    assert kv.loc["t_range=130-230", "delta_vs_paper"] == pytest.approx(delta)
    assert "paper_mean" not in build(collection, compare_paper=False).columns


def test_a_rerun_seed_counts_once_with_its_newest_record(tmp_path):
    old = make_record("covid", "dia", {}, 1.0, 0, auroc_last=0.5, created_at=1.0)
    new = make_record("covid", "dia", {}, 1.0, 0, auroc_last=0.9, created_at=2.0)
    write_records(tmp_path / "r.jsonl", [new, old])
    row = build(collect(tmp_path)).iloc[0]
    assert (row["n_seeds"], row["auroc_mean"]) == (1, 0.9) and math.isnan(row["auroc_std"])


def test_records_without_scores_get_no_ci_but_still_a_row(tmp_path):
    v1 = {"schema_version": 1, "dataset": "aptos", "method": "csi", "seed": 0, "config_hash": "v1", "auroc": 0.9,
          "epochs": 50}
    (tmp_path / "old.jsonl").write_text(json.dumps(v1) + "\n")
    row = build(collect(tmp_path)).iloc[0]
    assert row["auroc_mean"] == 0.9 and math.isnan(row["ci95_low"]) and row["paper_mean"] == 0.927


def test_unknown_by_is_a_config_error(bench):
    with pytest.raises(ConfigError, match="--by 'seed' unknown"):
        build(bench[1], by="seed")


def test_empty_collection_builds_an_empty_table(tmp_path):
    df = build(collect(tmp_path))
    assert df.empty and "auroc_mean" in df.columns


class _Tables(HTMLParser):
    """Every <table> as a list of rows of cell texts (stdlib only: lxml/bs4 are not installed)."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None


def test_html_is_a_standalone_page_whose_table_parses_back_to_the_same_numbers(bench):
    df = build(bench[1], by="config")
    page = to_html(df)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    parser = _Tables()
    parser.feed(page)
    (table,) = parser.tables
    header, rows = table[0], table[1:]
    assert len(rows) == len(df)
    parsed = pd.DataFrame(rows, columns=header)
    for column, name in [("auroc_mean", "AUROC mean (last)"), ("auroc_std", "AUROC std"), ("ci95_low", "CI95 low"),
                         ("ci95_high", "CI95 high"), ("paper_mean", "Paper (best-test)")]:
        ours = df[column].to_numpy(dtype=float)
        theirs = parsed[name].replace("", "nan").astype(float).to_numpy()
        np.testing.assert_allclose(theirs, ours, atol=5e-5, equal_nan=True)
    assert parsed["Seeds"].astype(int).tolist() == df["n_seeds"].tolist()
    np.testing.assert_allclose(parsed["p vs CSI"].replace("", "nan").astype(float), df["p_vs_csi"], rtol=5e-3)
    assert "DeLong" in page  # the footnotes travel with the table


def test_markdown_csv_json_and_terminal_carry_the_same_rows(bench, monkeypatch):
    df = build(bench[1])
    md = to_markdown(df).splitlines()
    assert md[0].startswith("| Dataset | Method |") and len([x for x in md if x.startswith("| ")]) == len(df) + 1
    assert f"{df['auroc_mean'][0]:.3f} ± {df['auroc_std'][0]:.3f}" in md[2]
    assert any(line.startswith("2. 95% CI: DeLong") for line in md)
    back = pd.read_csv(io.StringIO(to_csv(df)))
    np.testing.assert_array_equal(back["auroc_mean"].to_numpy(), df["auroc_mean"].to_numpy())
    payload = json.loads(to_json(df))
    assert payload["by"] == "method" and len(payload["rows"]) == len(df) and payload["notes"]
    assert payload["rows"][0]["auroc_mean"] == df["auroc_mean"][0]
    rich_text = to_terminal(df, width=240)
    assert "Pneumonia" in rich_text and "Kvasir" in rich_text and "95% CI: DeLong" in rich_text
    monkeypatch.setitem(sys.modules, "rich.console", None)  # as if rich were not installed
    plain = to_terminal(df).splitlines()
    assert plain[0].split()[:2] == ["Dataset", "Method"] and len(plain) >= len(df) + 2


def test_write_all_writes_each_format_atomically(bench, tmp_path):
    df = build(bench[1])
    paths = [Path(p) for p in write_all(df, tmp_path / "out", ["md", "csv,json"])]
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.csv", "leaderboard.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temp files
    assert len(write_all(df, tmp_path / "all", None)) == 4
    with pytest.raises(ConfigError, match="--format 'pdf' unknown"):
        write_all(df, tmp_path / "x", ["pdf"])


def test_plots_are_pngs_and_ablations_follow_the_swept_parameters(bench, tmp_path):
    _, collection = bench
    frame = collection.frame()
    assert swept_params(frame) == ["t_range", "kernel_size"]
    for path in (plot_auroc(build(collection), tmp_path / "a.png"),
                 plot_auroc(build(collection, by="config", compare_paper=False), tmp_path / "b.png"),
                 plot_ablation(frame, "t_range", tmp_path / "t.png"),
                 plot_ablation(frame, "kernel_size", tmp_path / "k.png")):
        path = Path(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ConfigError, match="no result records carry the parameter 'resolution'"):
        plot_ablation(frame, "resolution", tmp_path / "r.png")
