"""Sweeps on a real local cluster: two datasets' studies concurrently, exactly the grid, resume after SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from dia_ray.results.collect import collect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled"}


def _sweep(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dia_ray", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def test_smoke_sweep_runs_both_datasets_concurrently_and_exactly_the_grid(ray_cluster, synthetic_root, tmp_path):
    out = _sweep(str(REPO / "sweeps/smoke_cpu.yaml"), "--storage", str(tmp_path), "--data-root",
                 str(synthetic_root), "--address", ray_cluster.get_runtime_context().gcs_address)
    assert out.returncode == 0, out.stderr[-4000:]
    col = collect(tmp_path)
    assert not col.problems
    by_ds: dict[str, list] = {}
    for rec in col.records:
        by_ds.setdefault(rec.dataset, []).append(rec)
    assert set(by_ds) == {"synthetic", "synthetic-folder"}
    for ds, recs in by_ds.items():
        # the grid is methods {dia, csi} x seeds {0}: exactly those runs, once each
        assert sorted((r.method, r.seed) for r in recs) == [("csi", 0), ("dia", 0)], ds
        assert all(r.sweep == "smoke_cpu" and r.trial_id for r in recs)
        for r in recs:  # a tiny budget promises no AUROC above chance: the record's AUROC is that of its scores
            assert r.auroc_last == pytest.approx(roc_auc_score(r.test_labels, r.test_scores), abs=1e-12)
    for ds in ("synthetic", "synthetic-folder"):  # a study never mixes datasets
        for path in (tmp_path / "sweeps/smoke_cpu" / ds / "records").glob("*.jsonl"):
            assert json.loads(path.read_text().splitlines()[0])["dataset"] == ds, path
    summary = json.loads((tmp_path / "sweeps/smoke_cpu/sweep.json").read_text())["summaries"]
    (a, b) = [(s["started"], s["finished"]) for s in summary]
    assert a[0] < b[1] and b[0] < a[1], f"the two studies did not overlap in time: {summary}"
    for ds in ("synthetic", "synthetic-folder"):
        exp = tmp_path / "sweeps/smoke_cpu" / ds / "tune"
        assert list(exp.glob("*/progress.csv")) and list(exp.glob("*/result.json")), "Tune loggers wrote nothing"
    assert f"leaderboard: dia-ray leaderboard {tmp_path}" in out.stdout


def test_sweep_without_resume_refuses_to_overwrite(ray_cluster, tmp_path):
    (tmp_path / "sweeps/smoke_cpu/synthetic/tune").mkdir(parents=True)
    out = _sweep(str(REPO / "sweeps/smoke_cpu.yaml"), "--storage", str(tmp_path),
                 "--address", ray_cluster.get_runtime_context().gcs_address, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert "already has results in" in out.stderr and "pass --resume to continue it" in out.stderr


def test_killed_sweep_driver_resumes_keeping_every_finished_trial_once(ray_cluster, synthetic_root, tmp_path):
    sweep = tmp_path / "kill.yaml"
    sweep.write_text(
        "name: killtest\n"
        "datasets: [synthetic]\n"
        "methods: [csi, blur-gaussian, blur-median]\n"
        "seeds: [0]\n"
        "budget: tiny\n"
        "sampler: grid\n"
        "resources: {workers: 1, cpus_per_worker: 0.9}\n"
        "max_concurrent_trials: 1\n"
    )
    storage = tmp_path / "st"
    args = [sys.executable, "-m", "dia_ray", "sweep", str(sweep), "--storage", str(storage), "--data-root",
            str(synthetic_root), "--address", ray_cluster.get_runtime_context().gcs_address]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    records = storage / "sweeps/killtest/synthetic/records"
    deadline = time.time() + 600
    while time.time() < deadline and not list(records.glob("*.jsonl")):
        time.sleep(0.5)
    first = {p.name: p.read_text() for p in records.glob("*.jsonl")}
    # the leaderboard of a sweep that is still running shows the trials that finished
    board = subprocess.run([sys.executable, "-m", "dia_ray", "leaderboard", str(storage), "--format", "csv"],
                           capture_output=True, text=True, timeout=300, env=_env())
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first, "no trial finished before the kill"
    assert len(first) < 3, "the sweep finished before it could be killed"
    assert running and board.returncode == 0, board.stderr
    import pandas as pd

    table = pd.read_csv(io.StringIO(board.stdout))  # csv alone: the data on stdout
    finished = {json.loads(t.splitlines()[0])["method"] for t in first.values()}
    assert finished <= set(table["method"]) and len(table) >= len(finished)
    time.sleep(2)
    out = _sweep(str(sweep), "--storage", str(storage), "--data-root", str(synthetic_root), "--address",
                 ray_cluster.get_runtime_context().gcs_address, "--resume")
    assert out.returncode == 0, out.stderr[-4000:]
    after = {p.name: p.read_text() for p in records.glob("*.jsonl")}
    assert len(after) == 3
    for name, text in first.items():
        assert after[name] == text, "a finished trial was re-run"
    recs = collect(storage).records
    assert sorted(r.method for r in recs) == ["blur-gaussian", "blur-median", "csi"]
