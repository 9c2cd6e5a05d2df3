"""Ray Train wrappers on a real local cluster (CPU, gloo): data-parallel equivalence, fault tolerance, resume,
the diffusers layout, and bad input through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dia_ray.config import DDPMConfig, UNetConfig
from dia_ray.distributed.checkpointing import SNAPSHOT, registered_checkpoint
from dia_ray.distributed.dataref import DataRef
from dia_ray.distributed.train_ddpm import train_ddpm_ray
from dia_ray.storage import Storage

pytestmark = pytest.mark.integration

TINY_UNET = UNetConfig(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=8)


def tiny_ddpm(**kw) -> DDPMConfig:
    base = dict(steps=4, batch_size=8, grad_accum=2, checkpoint_every=2, unet=TINY_UNET)
    base.update(kw)
    return DDPMConfig(**base)


def unet_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from dia_ray.algo.unet import LucidUnet

    return LucidUnet.from_pretrained(model_dir / "unet").state_dict()


def test_ddpm_two_workers_match_one_worker_on_the_global_batch(ray_cluster, synthetic_root, tmp_path):
    """DDP over 2 gloo workers = 1 worker on the concatenated batch (each rank draws the global batch's noise)."""
    ref = DataRef("synthetic", str(synthetic_root))
    cfg = tiny_ddpm()
    one = Path(train_ddpm_ray(ref, cfg, tmp_path / "one", workers=1, cpus_per_worker=1))  # a local storage: a path
    two = Path(train_ddpm_ray(ref, cfg, tmp_path / "two", workers=2, cpus_per_worker=1))
    w1, w2 = unet_weights(one), unet_weights(two)
    init = unet_weights_init(cfg)
    moved = max((w1[k] - init[k]).abs().max().item() for k in w1)
    assert moved > 1e-5, "training did not change the weights"
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 1e-5, f"2-worker DDP differs from 1 worker by {worst}"
    meta = json.loads((two / "dia_ray_ddpm.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == cfg.steps


def unet_weights_init(cfg: DDPMConfig) -> dict[str, torch.Tensor]:
    from dia_ray.algo.ddpm import new_state

    return {k: v.clone() for k, v in new_state(cfg).unet.state_dict().items()}


def test_saved_ddpm_round_trips_through_from_pretrained(ray_cluster, synthetic_root, tmp_path):
    from diffusers import DDPMScheduler

    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.algo.unet import LucidUnet

    path = Path(train_ddpm_ray(DataRef("synthetic", str(synthetic_root)), tiny_ddpm(), tmp_path, workers=0))
    unet = LucidUnet.from_pretrained(path / "unet")
    ema = LucidUnet.from_pretrained(path / "unet_ema")
    sched = DDPMScheduler.from_pretrained(path / "scheduler")
    assert sched.config.beta_schedule == "squaredcos_cap_v2" and sched.config.num_train_timesteps == 1000
    ours, _, meta = load_ddpm(path)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k])
    assert set(ema.state_dict()) == set(unet.state_dict())
    assert meta["step"] == 4
    # reused, not retrained, when asked again
    again = Path(train_ddpm_ray(DataRef("synthetic", str(synthetic_root)), tiny_ddpm(), tmp_path, workers=0))
    assert again == path and (path / "unet").stat().st_mtime == (again / "unet").stat().st_mtime


def _readable(snapshot: Path) -> bool:
    try:
        json.loads(snapshot.read_text())
        return True
    except (OSError, ValueError):  # being written
        return False


def test_killed_worker_resumes_from_its_last_checkpoint(ray_cluster, synthetic_root, tmp_path):
    """SIGKILL a Train worker mid-run: Ray restarts the worker group, which resumes from the last checkpoint —
    the recorded start steps prove the second start was not at step 0."""
    # 30 steps of >= 0.5 s: checkpoints are uploaded asynchronously, so the second one shows up a few steps after it
    # was taken; the kill must still land well before the end of the run
    cfg = tiny_ddpm(steps=30, checkpoint_every=3, grad_accum=1)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    storage = tmp_path / "st"
    killed: dict[str, int] = {}

    def killer() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            # a checkpoint Train's checkpoint manager registered (what a restart resumes from): checkpoints upload
            # asynchronously and are registered when the controller next polls, so files on disk are not enough
            ckpts = [snap.parent.parent / found / "progress.json" for snap in storage.glob(f"ddpm/*/ddpm-*/{SNAPSHOT}")
                     if _readable(snap) and (found := registered_checkpoint(Storage(str(snap.parent.parent)),
                                                                            snap.parent.name))]
            pids = list(pid_dir.glob("worker-*.pid"))
            if ckpts and all(c.is_file() for c in ckpts) and pids:
                step = max(json.loads(p.read_text())["step"] for p in ckpts)
                pid = int(pids[0].read_text())
                os.kill(pid, signal.SIGKILL)
                killed.update(step=step, pid=pid)
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    path = Path(train_ddpm_ray(DataRef("synthetic", str(synthetic_root)), cfg, storage, workers=1, cpus_per_worker=1,
                               pid_dir=str(pid_dir), step_delay=0.5, max_failures=2))
    t.join(timeout=5)
    assert killed, "the test never saw a checkpoint to kill after"
    meta = json.loads((path / "dia_ray_ddpm.json").read_text())
    assert meta["step"] == 30 and killed["step"] < 30
    assert len(meta["starts"]) == 2, meta["starts"]
    assert meta["starts"][0] == 0 and meta["starts"][1] >= 3, meta["starts"]


def _cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dia_ray", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def _address(ray) -> str:
    return ray.get_runtime_context().gcs_address


def test_dia_train_cli_two_workers_then_resume_returns_the_record(ray_cluster, synthetic_root, tmp_path):
    """`dia-ray train --method dia --workers 2` completes with a result record (DDPM trained first); running it
    again with the same storage does not retrain."""
    args = ["train", "--dataset", "synthetic", "--method", "dia", "--workers", "2", "--budget", "tiny",
            "--storage", str(tmp_path), "--data-root", str(synthetic_root), "--address", _address(ray_cluster)]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    rec = json.loads(first.stdout.strip().splitlines()[-1])
    assert rec["dataset"] == "synthetic" and rec["method"] == "dia" and rec["workers"] == 2
    assert rec["epochs"] == 2 and rec["device"] == "cpu"
    (stored,) = [json.loads(p.read_text().splitlines()[-1]) for p in (tmp_path / "results").rglob("*.jsonl")]
    # 2 epochs of 2 iterations promise no AUROC above chance; what must hold is that the printed AUROC is the one of
    # the stored test scores (recomputed here with sklearn, independently of dia_ray's evaluation)
    assert len(stored["test_scores"]) == len(stored["test_labels"]) == 40 and set(stored["test_labels"]) == {0, 1}
    assert rec["auroc_last"] == pytest.approx(roc_auc_score(stored["test_labels"], stored["test_scores"]), abs=1e-12)
    assert rec["images_per_s"] > 0 and rec["wall_time_s"] > 0
    assert list(tmp_path.glob("ddpm/synthetic-r32-*/model/unet/config.json")), "the DDPM was not trained first"
    records = list((tmp_path / "results").rglob("*.jsonl"))
    assert len(records) == 1
    mtime = records[0].stat().st_mtime
    t0 = time.time()
    second = _cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout.strip().splitlines()[-1])["record_id"] == rec["record_id"]
    assert records[0].stat().st_mtime == mtime and time.time() - t0 < 120


def test_interrupted_train_run_continues_from_its_checkpoint(ray_cluster, synthetic_root, tmp_path):
    """Kill the `dia-ray train` driver after its first epoch checkpoint; the same command then continues from
    that epoch (the record's `starts` show it) instead of starting over."""
    args = ["train", "--dataset", "synthetic", "--method", "csi", "--workers", "1", "--budget", "tiny",
            "--epochs", "4", "--storage", str(tmp_path), "--data-root", str(synthetic_root),
            "--address", _address(ray_cluster)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DIA_RAY_EPOCH_DELAY": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "dia_ray", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300

    def registered() -> bool:  # a checkpoint Train's checkpoint manager has recorded (what a restart resumes from)
        snaps = list(tmp_path.glob("runs/synthetic/*/checkpoint_manager_snapshot.json"))
        return bool(snaps) and "checkpoint_" in snaps[0].read_text()

    while time.time() < deadline and not registered():
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert list(tmp_path.glob("runs/synthetic/*/checkpoint_*/progress.json")), "no checkpoint before the kill"
    assert not list(tmp_path.glob("results/**/*.jsonl")), "a record was written before the run finished"
    time.sleep(3)  # let the orphaned Train run notice its driver is gone
    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    assert rec["epochs"] == 4
    assert rec["starts"][0] == 0 and len(rec["starts"]) >= 2 and rec["starts"][-1] >= 1, rec["starts"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--gpu"], "no CUDA GPU"),
        (["--workers", "64"], "more than this machine"),
    ],
)
def test_train_refuses_impossible_placement_in_one_line(extra, needle, tmp_path):
    out = _cli("train", "--dataset", "synthetic", "--method", "csi", "--storage", str(tmp_path / "s"),
               "--data-root", str(tmp_path / "d"), *extra, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "s" / "results").exists()


def test_train_refuses_unwritable_storage(unwritable_dir, tmp_path):
    out = _cli("train", "--dataset", "synthetic", "--storage", str(unwritable_dir / "x"), "--data-root",
               str(tmp_path / "data"), timeout=120)
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"dia-ray: error: storage {unwritable_dir / 'x'} is not writable ({unwritable_dir} is where it would be "
        "created): pick a folder you can write to"]
    assert not (tmp_path / "data").exists(), "the data was generated before the storage was checked"


def test_storage_path_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = _cli("train", "--dataset", "synthetic", "--storage", str(blocker / "sub"), "--data-root", str(tmp_path),
               timeout=120)
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"dia-ray: error: storage {blocker / 'sub'} cannot be created: {blocker} is a file, not a directory"]


def test_corrupt_checkpoint_is_reported_not_resumed(ray_cluster, synthetic_root, tmp_path):
    """A truncated state.pt in the run's last checkpoint: one line naming it, exit 2, no record written."""
    from dia_ray.distributed.train_dia import run_key
    from dia_ray.distributed.pipeline import train_config

    cfg = train_config("synthetic", "csi", "tiny", {"seed": 0})
    run = tmp_path / "runs" / "synthetic" / f"run-{run_key(cfg)}" / "checkpoint_2026-01-01_00-00-00.000000"
    run.mkdir(parents=True)
    (run / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    (run / "progress.json").write_text(json.dumps({"starts": [0], "epoch": 1}))
    (run.parent / "checkpoint_manager_snapshot.json").write_text(json.dumps(  # registered: Ray would restore it
        {"latest_checkpoint_result": {"checkpoint_dir_name": run.name, "metrics": {}}}))
    out = _cli("train", "--dataset", "synthetic", "--method", "csi", "--budget", "tiny", "--storage",
               str(tmp_path), "--data-root", str(synthetic_root), "--address", _address(ray_cluster))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and "checkpoint_2026-01-01" in lines[0]
    assert not (tmp_path / "results").exists()


def test_run_killed_during_a_checkpoint_upload_resumes_from_the_registered_one(ray_cluster, synthetic_root, s3_bucket,
                                                                                tmp_path):
    """The state is padded (fault injection) so that uploading a checkpoint to the object store takes seconds; the
    `dia-ray train` driver is killed while the newest checkpoint folder is still being written. The rerun resumes
    from the checkpoint the run's snapshot registered, not from the newest, half-uploaded folder."""
    st = Storage(f"{s3_bucket}/upload-kill")
    args = ["train", "--dataset", "synthetic", "--method", "csi", "--workers", "1", "--budget", "tiny",
            "--epochs", "5", "--storage", st.uri, "--data-root", str(synthetic_root),
            "--address", _address(ray_cluster)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DIA_RAY_TEST_CHECKPOINT_PAD_BYTES": str(100 * 2**20)}
    proc = subprocess.Popen([sys.executable, "-m", "dia_ray", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    partial = registered = None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        runs = st.subdirs("runs/synthetic")
        if runs:
            run = f"runs/synthetic/{runs[0]}"
            registered = registered_checkpoint(st, run)
            folders = [f"{run}/{d}" for d in st.subdirs(run) if d.startswith("checkpoint_")]
            unfinished = [f for f in folders if f != registered and not st.is_file(f, "state.pt")]
            if registered and unfinished:  # one checkpoint registered, a newer one still uploading
                partial = unfinished[0]
                proc.kill()
                break
        time.sleep(0.2)
    proc.wait()
    assert partial, "never caught a checkpoint upload in progress"
    assert st.exists(partial) and not st.is_file(partial, "state.pt")  # the half-uploaded folder stays behind
    epoch = json.loads(st.read_text(registered, "progress.json"))["epoch"]
    time.sleep(3)  # let the orphaned Train run notice its driver is gone
    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    assert rec["epochs"] == 5 and rec["starts"][0] == 0 and rec["starts"][-1] >= epoch, (rec["starts"], epoch)
