"""`dia-ray leaderboard` and `dia-ray report` end to end, as a user runs them (a subprocess of `python -m dia_ray`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from dia_ray.results.records import write_records
from results_data import CONFIGS, DATASETS, make_record, write_benchmark

REPO = Path(__file__).resolve().parents[2]
FIGURES = {f"{name}.{ext}" for name in ("leaderboard", "ablation_t_range", "ablation_kernel_size")
           for ext in ("png", "svg", "pdf")}


def dia_ray(*args: str, command: str = "leaderboard", columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIA_RAY_LOG_LEVEL": "WARNING", "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "dia_ray", command, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def test_leaderboard_prints_a_100_column_table_writes_every_format_and_warns_about_broken_files(tmp_path):
    write_benchmark(tmp_path)
    broken = tmp_path / "results" / "crashed.jsonl"
    broken.write_text('{"dataset": "kvasir", "met')
    done = dia_ray(tmp_path)
    assert done.returncode == 0, done.stderr
    out_dir = tmp_path / "leaderboard"
    names = {"leaderboard.md", "leaderboard.csv", "report.html", "leaderboard.json", "leaderboard.tex", *FIGURES}
    assert {p.name for p in out_dir.iterdir()} == names
    for name in names:
        assert f"wrote {out_dir / name}" in done.stdout
    assert done.stderr.splitlines() == [
        f"dia-ray: warning: {broken}:1: truncated last line (the writer crashed mid-write?); skipped"]
    table = done.stdout.split("\n1. AUROC")[0]
    printed = done.stdout.split("record(s) from")[0]  # the table and its notes (not the paths written)
    assert max(len(line) for line in printed.splitlines()) <= 100  # even in a 200-column terminal
    for title in ("Pneumonia", "Kvasir"):
        assert table.count(f" {title} ") == 3  # one row per method, the title not folded
    assert "<0.001*" in table and "Device-h" not in table
    wide = dia_ray(tmp_path, "--wide", "--format", "md")
    assert "Device-h" in wide.stdout and max(len(line) for line in wide.stdout.splitlines()) > 100
    rows = json.loads((out_dir / "leaderboard.json").read_text())["rows"]
    assert len(rows) == len(DATASETS) * 3 and rows[0]["paper_mean"] == 0.903


def test_csv_or_json_alone_prints_only_the_data_on_stdout_and_writes_nothing(tmp_path):
    write_benchmark(tmp_path)
    done = dia_ray(tmp_path, "--format", "csv")
    assert done.returncode == 0 and done.stderr == ""
    table = pd.read_csv(io.StringIO(done.stdout))
    assert len(table) == len(DATASETS) * 3
    # one column per config key (nested keys joined by "/", as Tune's dataframes) and the provenance
    assert {"config/dissolve/t_min", "config/dissolve/bank_versions", "config/optim/lr", "config/epochs",
            "t_range_used", "bank_key", "bank_versions", "ddpm_key"} <= set(table.columns)
    dia = table[table["method"] == "dia"].iloc[0]
    assert (dia["config/dissolve/t_min"], dia["t_range_used"], dia["bank_versions"]) == (30, "30-130", 4)
    payload = json.loads(dia_ray(tmp_path, "-f", "json").stdout)
    assert len(payload["rows"]) == len(table) and payload["rows"][0]["config/dissolve/kind"] == "diffusion"
    assert not (tmp_path / "leaderboard").exists()


def test_by_config_writes_its_own_files_and_leaves_the_per_method_ones(tmp_path):
    write_benchmark(tmp_path / "store")
    out = tmp_path / "tables"
    assert dia_ray(tmp_path / "store", "--out", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = dia_ray(tmp_path / "store", "--format", "csv,json", "-f", "md", "--out", out, "--by", "config",
                   "--no-compare-paper")
    assert done.returncode == 0, done.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {name: after[name] for name in before} == before  # nothing of the per-method run was overwritten
    new = set(after) - set(before)
    assert new == {"leaderboard_by_config.csv", "leaderboard_by_config.json", "leaderboard_by_config.md",
                   *(name.replace(".", "_by_config.") for name in FIGURES)}
    rows = json.loads(after["leaderboard_by_config.json"])["rows"]
    assert len(rows) == len(DATASETS) * len(CONFIGS) and "paper_mean" not in rows[0]


def test_report_command_writes_the_html_page_only(tmp_path):
    write_benchmark(tmp_path)
    done = dia_ray(tmp_path, command="report")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "leaderboard").iterdir()] == ["report.html"]
    assert done.stdout.splitlines()[-1] == f"wrote {tmp_path / 'leaderboard' / 'report.html'}"


def test_no_usable_records_lists_the_problems_then_exits_2_with_one_error_line(tmp_path):
    bad = [make_record("kvasir", "dia", {}, 1.0, 0, test_labels=[1] * 140),
           make_record("kvasir", "csi", {}, 1.0, 0, auroc_last=1.5)]
    path = write_records(tmp_path / "r.jsonl", bad)
    for command in ("leaderboard", "report"):
        done = dia_ray(tmp_path, command=command)
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"dia-ray: warning: {path}:1: record kvasir/dia seed 0: every test label is 1 (one class only: AUROC "
            "is undefined); skipped",
            f"dia-ray: warning: {path}:2: record kvasir/csi seed 0: auroc_last 1.5 is not an AUROC in [0, 1]; skipped",
            f"dia-ray: error: no result records under {tmp_path}: 1 *.jsonl file(s) read, none held a valid record "
            "(2 problem(s) reported)"]


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
    assert bad.stderr.splitlines() == [
        "dia-ray: error: --format 'pdf' unknown; choose from: md, csv, html, json, latex"]
