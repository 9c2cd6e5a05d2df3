"""The whole DIA pipeline with its storage in an S3-compatible object store (moto on loopback): the DDPM is published
in save_pretrained layout with its description written last, the bank as Parquet with its manifest written last,
the run's checkpoints and record go to the bucket, workers load the DDPM from a node-local cache, and the
leaderboard reads the bucket. Nothing is written to a local folder named after the URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dia_ray.storage import Storage

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dia_ray", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def test_ddpm_bank_train_and_leaderboard_on_s3(ray_cluster, synthetic_root, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    st = Storage(f"{s3_bucket}/pipeline")
    address = ray_cluster.get_runtime_context().gcs_address
    common = ["--dataset", "synthetic", "--budget", "tiny", "--storage", st.uri, "--data-root", str(synthetic_root),
              "--address", address]
    bank = _cli("bank", "build", *common, "--versions", "2", "--actors", "1", "--batch-size", "256", "--quiet")
    assert bank.returncode == 0, bank.stderr[-3000:]
    # the actor pool's benign Ray line (ray-project/ray#53727) is filtered; no other Ray error line appears
    assert "core_worker.cc" not in bank.stderr and "MapWorker" not in bank.stdout + bank.stderr, bank.stderr[-3000:]
    ddpms = st.subdirs("ddpm")
    assert len(ddpms) == 1
    model = st.list("ddpm", ddpms[0], "model")
    assert "dia_ray_ddpm.json" in model and "unet/config.json" in model and "scheduler/scheduler_config.json" in model
    location = next(line.split("bank: ", 1)[1] for line in bank.stdout.splitlines() if line.startswith("bank: "))
    assert location.startswith(st.uri + "/banks/")
    manifest = json.loads(Storage(location).read_text("manifest.json"))
    assert manifest["counts"]["rows"] == 2 * manifest["counts"]["images"]
    assert sorted(Storage(location).list(suffix=".parquet")) == sorted(f["name"] for f in manifest["files"])
    info = _cli("bank", "info", location, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["path"] == location
    train = _cli("train", *common, "--method", "dia", "--bank", location)
    assert train.returncode == 0, train.stderr[-3000:]
    rec = json.loads(train.stdout.strip().splitlines()[-1])
    assert rec["dissolve_mode"] == "bank" and rec["bank_key"] == manifest["key"] and rec["bank_versions"] == 2
    online = _cli("train", *common, "--method", "dia")  # dissolves online with the DDPM found in the bucket
    assert online.returncode == 0, online.stderr[-3000:]
    assert json.loads(online.stdout.strip().splitlines()[-1])["ddpm_path"] == st.join("ddpm", ddpms[0], "model")
    assert len(st.list("results", suffix=".jsonl")) == 2
    assert st.subdirs("runs", "synthetic")  # the Ray Train runs (checkpoints) live in the bucket too
    board = _cli("leaderboard", st.uri, "--format", "md")
    assert board.returncode == 0, board.stderr[-2000:]
    assert st.is_file("leaderboard", "leaderboard.md") and "dia" in st.read_text("leaderboard", "leaderboard.md")
    assert not any(p.name.startswith("s3:") for p in tmp_path.iterdir())  # the URI never became a local folder
