"""Leaderboards from realistic records (``results_data``): statistics checked against independent pandas/sklearn
computations, renderings parsed back, figures rendered."""

from __future__ import annotations

import io
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest

from dia_ray.errors import ConfigError
from dia_ray.results.collect import collect
from dia_ray.results.leaderboard import build, to_csv, to_json, to_markdown, to_terminal
from dia_ray.results.plots import figure_bytes, plot_ablation, plot_leaderboard, swept_params
from dia_ray.results.records import write_records
from results_data import CONFIGS, DATASETS, SEEDS, make_record, read_jsonl_independently, write_benchmark


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


def test_figures_render_as_png_svg_and_pdf_and_ablations_follow_the_swept_parameters(bench):
    _, collection = bench
    frame = collection.frame()
    assert swept_params(frame) == ["t_range", "kernel_size"]
    for fig in (plot_leaderboard(build(collection), frame, "demo"),
                plot_leaderboard(build(collection, by="config", compare_paper=False), frame),
                plot_ablation(frame, "t_range", "demo"), plot_ablation(frame, "kernel_size")):
        png, svg, pdf = (figure_bytes(fig, fmt) for fmt in ("png", "svg", "pdf"))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg and pdf[:5] == b"%PDF-"
    with pytest.raises(ConfigError, match="no result records carry the parameter 'resolution'"):
        plot_ablation(frame, "resolution")
    with pytest.raises(ConfigError, match="figure format 'gif' unknown"):
        figure_bytes(fig, "gif")
