"""`dia-ray leaderboard` end to end, as a user runs it (a subprocess of `python -m dia_ray`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_results_leaderboard import CONFIGS, DATASETS, write_benchmark

REPO = Path(__file__).resolve().parents[2]


def dia_ray(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIA_RAY_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "dia_ray", "leaderboard", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_leaderboard_prints_the_table_writes_every_format_and_warns_about_broken_files(tmp_path):
    write_benchmark(tmp_path)
    broken = tmp_path / "results" / "crashed.jsonl"
    broken.write_text('{"dataset": "kvasir", "met')
    done = dia_ray(tmp_path)
    assert done.returncode == 0, done.stderr
    out_dir = tmp_path / "leaderboard"
    names = {"leaderboard.md", "leaderboard.csv", "leaderboard.html", "leaderboard.json", "leaderboard.png",
             "ablation_t_range.png", "ablation_kernel_size.png"}
    assert {p.name for p in out_dir.iterdir()} == names
    assert "Pneumonia" in done.stdout and "Kvasir" in done.stdout
    for name in names:
        assert f"wrote {out_dir / name}" in done.stdout
    assert done.stderr.splitlines() == [
        f"dia-ray: warning: {broken}:1: truncated last line (the writer crashed mid-write?); skipped"]
    rows = json.loads((out_dir / "leaderboard.json").read_text())["rows"]
    assert len(rows) == len(DATASETS) * 3 and rows[0]["paper_mean"] == 0.903


def test_format_out_by_and_no_compare_paper_options(tmp_path):
    write_benchmark(tmp_path / "store")
    out = tmp_path / "tables"
    done = dia_ray(tmp_path / "store", "--format", "csv,json", "-f", "md", "--out", out, "--by", "config",
                   "--no-compare-paper")
    assert done.returncode == 0, done.stderr
    assert {p.suffix for p in out.iterdir()} == {".csv", ".json", ".md", ".png"}
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert len(rows) == len(DATASETS) * len(CONFIGS) and "paper_mean" not in rows[0]


def test_empty_or_missing_storage_exits_2_with_one_line(tmp_path):
    empty = dia_ray(tmp_path)
    assert empty.returncode == 2
    assert empty.stderr.splitlines() == [
        f"dia-ray: error: no result records under {tmp_path}: no *.jsonl files found (has a trial finished yet?)"]
    missing = dia_ray(tmp_path / "nope")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    assert "does not exist" in missing.stderr
    bad = dia_ray(tmp_path, "--format", "pdf")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == ["dia-ray: error: --format 'pdf' unknown; choose from: md, csv, html, json"]
