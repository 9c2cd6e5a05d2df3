"""Per-epoch reporting to Tune and the users' trackers, on the session's local Ray cluster: ASHA stops trials early on
the per-epoch AUROC, TensorBoard event files hold one AUROC point per epoch, an MLflow file store holds one run per
trial with the full resolved config as params and per-epoch metrics, W&B (offline) gets one run per trial, and a
single `dia-ray train` logs to MLflow too."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SWEEP = """
name: tracked
datasets: [synthetic]
methods: [csi]
seeds: [0]
budget: tiny
base: {epochs: 4, max_iters_per_epoch: 1}
space:
  optim.lr: {choices: [0.0001, 0.001, 0.01, 0.1, 0.5, 1.0]}
sampler: grid
scheduler: asha
asha: {grace_period: 1, reduction_factor: 2}
resources: {workers: 1, cpus_per_worker: 0.9}
max_concurrent_trials: 2
"""


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dia_ray", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})})


def tb_scalars(path: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` in a TensorBoard event file (TFRecord framing: length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out, data, pos = [], path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out


@pytest.fixture(scope="module")
def tracked(ray_cluster, synthetic_root, tmp_path_factory):
    pytest.importorskip("mlflow", reason="mlflow is in the dev extra")
    pytest.importorskip("wandb", reason="wandb is in the dev extra")
    root = tmp_path_factory.mktemp("tracked")
    (root / "sweep.yaml").write_text(SWEEP)
    mlruns = f"file://{root / 'mlruns'}"
    out = _cli("sweep", str(root / "sweep.yaml"), "--storage", str(root / "st"), "--data-root", str(synthetic_root),
               "--address", ray_cluster.get_runtime_context().gcs_address, "--mlflow-uri", mlruns,
               "--wandb-project", "dia-ray-test",
               env={"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"), "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr[-4000:]
    return root, mlruns, out


def test_asha_stops_trials_early_on_the_per_epoch_auroc(tracked):
    root, _, out = tracked
    exp = root / "st/sweeps/tracked/synthetic/tune"
    epochs = {}
    for result in exp.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        epochs[result.parent.name] = max(r["epoch"] for r in rows)
        reports = [r["epoch"] for r in rows if not r.get("done")]  # Tune repeats the last result as done=True
        assert reports == list(range(1, len(reports) + 1))  # one report per epoch
    assert len(epochs) == 6
    assert min(epochs.values()) < 4 <= max(epochs.values()), epochs  # stopped early, and others ran to the end
    summary = json.loads((root / "st/sweeps/tracked/sweep.json").read_text())["summaries"][0]
    assert summary["stopped_early"] == sum(e < 4 for e in epochs.values()) and "stopped early" in out.stdout
    records = list((root / "st/sweeps/tracked/synthetic/records").glob("*.jsonl"))
    assert len(records) == sum(e == 4 for e in epochs.values())  # records only for runs that finished


def test_tensorboard_event_files_hold_per_epoch_auroc(tracked):
    root, _, _ = tracked
    for trial in (root / "st/sweeps/tracked/synthetic/tune").glob("dia_trial_*"):
        events = list(trial.glob("events.out.tfevents.*"))
        assert events, trial
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        points = tb_scalars(events[0], "ray/tune/auroc")
        assert [round(v, 5) for _, v in points] == [round(r["auroc"], 5) for r in rows]  # a point per result
        assert sorted({r["epoch"] for r in rows}) == list(range(1, max(r["epoch"] for r in rows) + 1))


def test_mlflow_holds_one_run_per_trial_with_full_params_and_curves(tracked, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store unless asked
    root, uri, _ = tracked
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    trials = list((root / "st/sweeps/tracked/synthetic/tune").glob("dia_trial_*"))
    assert len(runs) == len(trials) == 6
    for run in runs:
        assert run.data.tags["dataset"] == "synthetic"
        params = run.data.params
        assert params["dataset"] == "synthetic" and params["method"] == "csi"
        assert {"optim.lr", "eval.samples", "dissolve.kind", "temperature", "batch_size", "seed"} <= set(params)
        history = client.get_metric_history(run.info.run_id, "auroc")
        assert len(history) >= 1 and len(history) == len({h.step for h in history})


def test_wandb_offline_has_one_run_per_trial(tracked):
    root, _, _ = tracked
    runs = [p for p in (root / "wandb" / "wandb").glob("offline-run-*") if p.is_dir()]
    assert len(runs) == 6


def test_single_train_run_logs_params_and_epochs_to_mlflow(ray_cluster, synthetic_root, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is in the dev extra")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    out = _cli("train", "--dataset", "synthetic", "--method", "csi", "--budget", "tiny", "--storage",
               str(tmp_path / "st"), "--data-root", str(synthetic_root), "--address",
               ray_cluster.get_runtime_context().gcs_address, "--mlflow-uri", uri, "--epochs", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("dia-ray-train").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["epochs"] == "3"
    assert [h.step for h in client.get_metric_history(runs[0].info.run_id, "auroc")] == [1, 2, 3]
