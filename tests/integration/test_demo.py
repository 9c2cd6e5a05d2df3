"""`dia-ray demo`'s stages end to end (DDPM → bank → sweep → leaderboard) at the tiny budget, and its re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dia_ray.distributed.demo import demo_sweep_file, run_demo
from dia_ray.results.collect import collect
from dia_ray.sweepfile import load_sweep

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def test_demo_runs_every_stage_and_ends_with_a_leaderboard(ray_cluster, tmp_path):
    stages: list[str] = []
    report = run_demo(tmp_path, sweep_file=HERE / "data/demo_tiny.yaml", stage=stages.append)
    assert [s[:5] for s in stages if s.startswith("[")] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert any("(built)" in s for s in stages)
    assert list(tmp_path.glob("ddpm/synthetic-r32-*/model/unet/config.json"))
    banks = list(tmp_path.glob("banks/*/manifest.json"))
    assert len(banks) == 1
    table = pd.read_csv(tmp_path / "leaderboard" / "leaderboard.csv")
    assert sorted(table["method"]) == ["csi", "dia"]
    assert set(table["dissolve_mode"]) == {"bank", "none"}
    assert (tmp_path / "leaderboard" / "leaderboard.png").is_file()
    assert "dia" in report.text and "csi" in report.text
    assert report.html == str(tmp_path / "leaderboard" / "report.html")
    # the records say what the runs actually used: the bank's key and versions, its t-range and DDPM, the history
    manifest = json.loads(banks[0].read_text())
    recs = collect(tmp_path).records
    (dia,) = [r for r in recs if r.method == "dia"]
    assert (dia.bank_key, dia.bank_versions) == (manifest["key"], manifest["counts"]["versions"])
    assert dia.t_range == [manifest["config"]["t_min"], manifest["config"]["t_max"]]
    assert dia.ddpm_path == manifest["config"]["ddpm_path"] and dia.ddpm_key in dia.ddpm_path
    for rec in recs:
        assert [h["epoch"] for h in rec.history] == list(range(1, rec.epochs + 1))
        assert rec.history[-1]["auroc"] == rec.auroc_last and rec.hardware
        assert rec.sweep == "demo" and Path(rec.trial_dir).is_dir() and rec.trial_id in rec.trial_dir
    # a second run reuses everything: same bank, no new records
    records = sorted(p.read_text() for p in tmp_path.rglob("records/*.jsonl"))
    stages.clear()
    run_demo(tmp_path, sweep_file=HERE / "data/demo_tiny.yaml", stage=stages.append)
    assert any("(reused)" in s for s in stages)
    assert sorted(p.read_text() for p in tmp_path.rglob("records/*.jsonl")) == records


def test_the_shipped_demo_sweep_is_dia_vs_csi_vs_blur_vs_disyre_with_two_seeds_in_bank_mode():
    s = load_sweep(demo_sweep_file())
    assert set(s.methods) == {"dia", "csi", "blur-gaussian", "disyre"} and len(s.seeds) >= 2
    assert s.dissolve_mode == "bank" and s.datasets == ["synthetic"]
