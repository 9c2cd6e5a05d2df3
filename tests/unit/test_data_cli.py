"""``dia-ray data check|prepare`` as a user runs it: counts on stdout, one stderr line and exit 2 on bad data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def dia_ray(*args: str, tmp_path=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIA_RAY_DATA_ROOT": str(tmp_path or REPO / "does-not-exist")}
    return subprocess.run([sys.executable, "-m", "dia_ray", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)


def test_check_prints_source_and_counts_of_the_real_breastmnist(shared_data):
    done = dia_ray("data", "check", "--data-root", str(shared_data))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"source:  {shared_data / 'breastmnist.npz'}" in out
    assert "28x28x3 uint8 (grey, replicated to RGB)" in out
    assert "train:   399 images: 399 normal, 0 anomaly (classes 1=399)" in out
    assert "test:    156 images: 114 normal, 42 anomaly (classes 0=42, 1=114)" in out
    assert "not used for one-class training: 0=147" in out


def test_check_with_the_reference_normal_class_as_json(shared_data):
    done = dia_ray("data", "check", "--data-root", str(shared_data), "--dataset", "breastmnist",
                   "--normal-class", "0", "--json")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["train"]["total"] == 147 and report["test"] == {
        "total": 156, "normal": 42, "anomaly": 114, "classes": {"0": 42, "1": 114}}


def test_check_on_a_corrupt_file_exits_2_with_one_line(tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"PK\x03\x04 truncated download")
    done = dia_ray("data", "check", "--data-root", str(tmp_path), "--dataset", "breastmnist")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"dia-ray: error: {tmp_path / 'breastmnist.npz'}: not a readable .npz file")


def test_check_on_an_empty_root_says_what_it_looked_for(tmp_path):
    done = dia_ray("data", "check", tmp_path=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"no dataset found under {tmp_path} (looked for: pneumoniamnist.npz, breastmnist.npz" in done.stderr


def test_prepare_then_check_the_synthetic_dataset(tmp_path):
    done = dia_ray("data", "prepare", "--dataset", "synthetic", "--seed", "3", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"synthetic: ready at {tmp_path / 'synthetic.npz'}" in done.stdout
    done = dia_ray("data", "check", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test:    200 images: 100 normal, 100 anomaly (classes 0=100, 1=100)" in done.stdout


def test_prepare_of_a_folder_dataset_explains_the_layout(tmp_path):
    done = dia_ray("data", "prepare", "--dataset", "covid", "--data-root", str(tmp_path))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "covid/{train,test}/{COVID|non-COVID}/ image folders" in done.stderr
