"""Every bad input a new user gave the CLI (issue 15): the real `dia-ray` in a subprocess exits with code 2 and prints
exactly one stderr line naming the problem (a needle the good input never prints), no traceback, and nothing on
disk is created or changed — every input is validated before the first folder is made.

The paths in a case's argv are templates: {tmp} is the test's folder, {data} a prepared synthetic data root,
{file} a regular file, {dir} an empty folder, {locked} a folder that even root cannot write in (see
``unwritable_dir``), {ddpm:...}/{sweep:...}/{npz:...} fixtures made by :func:`materialise`.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dia_ray.distributed.checkpointing import SNAPSHOT, registered_checkpoint
from dia_ray.errors import CheckpointError
from dia_ray.storage import Storage

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--dataset", "synthetic", "--method", "csi", "--budget", "tiny", "--data-root", "{data}"]
DIA = ["train", "--dataset", "synthetic", "--method", "dia", "--budget", "tiny", "--data-root", "{data}"]
DDPM = ["ddpm", "train", "--dataset", "synthetic", "--budget", "tiny", "--data-root", "{data}"]
BANK = ["bank", "build", "--dataset", "synthetic", "--budget", "tiny", "--data-root", "{data}"]
SWEEP_OK = "name: t\ndatasets: [synthetic]\nmethods: [csi, dia]\nbudget: tiny\n"
SWEEPS = {
    "t_range_scalars": SWEEP_OK + "space:\n  dissolve.t_range: {choices: [5, 7]}\n",
    "t_range_range": SWEEP_OK + "space:\n  dissolve.t_range: {low: 30, high: 130}\n",
    "grid_2e9": "name: t\ndatasets: [synthetic]\nbudget: tiny\nsampler: grid\nspace:\n"  # 2e6 x 1e3 points
                "  optim.lr: {low: 0.000001, high: 2, step: 0.000001}\n"
                "  optim.momentum: {low: 0, high: 0.999, step: 0.001}\n",
    "step_0": SWEEP_OK + "sampler: grid\nspace:\n  optim.lr: {low: 0.1, high: 1, step: 0}\n",
    "ddpm_unknown": SWEEP_OK + "ddpm: {nosuch: 1}\n",
    "base_unknown": SWEEP_OK + "base: {nosuch: 1}\n",
    "list": "- a\n- b\n",
    "bad_yaml": "name: x\n  datasets: [a\n",
    "ok": SWEEP_OK,
}

# (id, argv, needle): the needle is specific to the problem, the good input does not print it
CASES = [
    # typer/click usage errors: one line, not a usage box
    ("seed-not-a-number", TRAIN + ["--storage", "{tmp}/st", "--seed", "abc"], "Invalid value for '--seed'"),
    ("unknown-option", TRAIN + ["--storage", "{tmp}/st", "--bogus"], "No such option: --bogus"),
    ("missing-option", ["train", "--dataset", "synthetic"], "Missing option '--storage'"),
    ("unknown-command", ["trian"], "No such command 'trian'. Did you mean 'train'?"),
    ("bank-versions-0", BANK + ["--storage", "{tmp}/st", "--versions", "0"], "Invalid value for '--versions'"),
    ("verbose-after-the-command", TRAIN + ["--storage", "{tmp}/st", "--verbose"], "--verbose is a global option"),
    ("log-level-env", ["data", "check", "--data-root", "{data}"], "DIA_RAY_LOG_LEVEL='LOUD' is not a log level"),
    # data prepare / check
    ("prepare-root-under-file", ["data", "prepare", "--dataset", "synthetic", "--data-root", "{file}/sub"],
     "cannot be created: {file} is a file"),
    ("prepare-root-is-file", ["data", "prepare", "--dataset", "synthetic", "--data-root", "{file}"],
     "data root {file} is a file"),
    ("prepare-image-size-negative", ["data", "prepare", "--dataset", "breastmnist", "--data-root", "{dir}",
                                     "--image-size", "-5"], "--image-size -5 is too small"),
    ("prepare-image-size-not-medmnist", ["data", "prepare", "--dataset", "breastmnist", "--data-root", "{dir}",
                                         "--image-size", "50", "--online"], "not 50; pick one of these"),
    ("check-root-is-file", ["data", "check", "--data-root", "{file}"], "data root {file} is a file"),
    ("check-empty-train-split", ["data", "check", "--data-root", "{npz:empty_train}", "--dataset", "synthetic"],
     "the train split holds no images"),
    ("check-normal-class-empty", ["data", "check", "--data-root", "{data}", "--dataset", "synthetic",
                                  "--normal-class", ","], "names no class"),
    # train: --set
    ("set-value-then-subkey", TRAIN + ["--storage", "{tmp}/st", "--set", "eval=1", "--set", "eval.samples=2"],
     "'eval' was already set to 1"),
    ("set-section-to-number", TRAIN + ["--storage", "{tmp}/st", "--set", "dissolve=5"],
     "dissolve: Input should be a valid dictionary"),
    ("set-bad-yaml", TRAIN + ["--storage", "{tmp}/st", "--set", "epochs=[1,"], "the value is not valid YAML"),
    ("set-key-with-own-option", TRAIN + ["--storage", "{tmp}/st", "--set", "seed=3"], "use --seed"),
    ("set-dataset", TRAIN + ["--storage", "{tmp}/st", "--set", "dataset=nosuch"], "use --dataset"),
    ("set-empty-key", TRAIN + ["--storage", "{tmp}/st", "--set", "=1"], "--set expects KEY=VALUE"),
    ("set-crop-scale", TRAIN + ["--storage", "{tmp}/st", "--set", "crop_scale=[2, 1]"], "0 < low <= high <= 1"),
    ("set-image-size", TRAIN + ["--storage", "{tmp}/st", "--set", "image_size=-5"], "image_size: Input should be"),
    ("set-max-train-0", TRAIN + ["--storage", "{tmp}/st", "--set", "max_train_images=0"], "max_train_images"),
    ("set-temperature-0", TRAIN + ["--storage", "{tmp}/st", "--set", "temperature=0"], "temperature: Input should"),
    # train: options, data, storage, placement (storage must not be left behind)
    ("workers-negative", TRAIN + ["--storage", "{tmp}/st", "--workers", "-1"], "--workers must be >= 0"),
    ("dataset-unknown", ["train", "--dataset", "nosuch", "--storage", "{tmp}/st"], "dataset 'nosuch' unknown"),
    ("epochs-0", TRAIN + ["--storage", "{tmp}/st", "--epochs", "0"], "epochs: Input should be greater"),
    ("t-range-reversed", TRAIN + ["--storage", "{tmp}/st", "--t-min", "100", "--t-max", "50"], "got (100, 50)"),
    ("normal-class-absent", TRAIN + ["--storage", "{tmp}/st", "--normal-class", "7"], "normal class '7' not present"),
    ("empty-train-split", ["train", "--dataset", "synthetic", "--method", "csi", "--data-root", "{npz:empty_train}",
                           "--storage", "{tmp}/st"], "the train split holds no images"),
    ("data-root-is-file", TRAIN[:-1] + ["{file}", "--storage", "{tmp}/st"], "data root {file} is a file"),
    ("data-root-under-file", TRAIN[:-1] + ["{file}/sub", "--storage", "{tmp}/st"], "{file} is a file"),
    ("storage-is-file", TRAIN + ["--storage", "{file}"], "storage {file} is a file"),
    ("storage-under-file", TRAIN + ["--storage", "{file}/st"], "cannot be created: {file} is a file"),
    ("storage-unwritable", TRAIN + ["--storage", "{locked}/st"], "storage {locked}/st is not writable"),
    ("gpu-absent", TRAIN + ["--storage", "{tmp}/st", "--gpu"], "no CUDA GPU"),
    ("workers-over-cpus", TRAIN + ["--storage", "{tmp}/st", "--workers", "999"], "--workers 999 is more than"),
    ("address-is-dashboard-url", TRAIN + ["--storage", "{tmp}/st", "--address", "http://127.0.0.1:8265"],
     "is not a Ray cluster address"),
    ("address-port-out-of-range", TRAIN + ["--storage", "{tmp}/st", "--address", "127.0.0.1:99999"],
     "'127.0.0.1:99999' is not a Ray cluster address"),
    ("address-unreachable", TRAIN + ["--storage", "{tmp}/st", "--address", "127.0.0.1:{free_port}"],
     "cannot reach a Ray cluster at 127.0.0.1:"),
    # train: --ddpm / --bank
    ("ddpm-meta-is-a-list", DIA + ["--storage", "{tmp}/st", "--ddpm", "{ddpm:list}"], "holds list, not a dia-ray"),
    ("ddpm-meta-corrupt", DIA + ["--storage", "{tmp}/st", "--ddpm", "{ddpm:corrupt}"], "dia_ray_ddpm.json is corrupt"),
    ("ddpm-not-a-ddpm", DIA + ["--storage", "{tmp}/st", "--ddpm", "{dir}"], "is not a dia-ray DDPM folder"),
    ("ddpm-is-a-file", DIA + ["--storage", "{tmp}/st", "--ddpm", "{file}"], "--ddpm {file} is a file"),
    ("ddpm-missing", DIA + ["--storage", "{tmp}/st", "--ddpm", "{tmp}/nope"], "--ddpm {tmp}/nope not found"),
    ("ddpm-other-resolution", DIA + ["--storage", "{tmp}/st", "--ddpm", "{ddpm:r64}"], "trained at resolution 64"),
    ("dissolve-resolution-for-28px", DIA + ["--storage", "{tmp}/st", "--set", "dissolve.resolution=64"],
     "dissolved at resolution 32 (pad 2), not 64"),
    ("ddpm-with-csi", TRAIN + ["--storage", "{tmp}/st", "--ddpm", "{ddpm:r64}"], "--ddpm is used only by --method dia"),
    ("bank-with-csi", TRAIN + ["--storage", "{tmp}/st", "--bank", "{dir}"], "--bank is used only by --method dia"),
    ("bank-not-a-bank", DIA + ["--storage", "{tmp}/st", "--bank", "{dir}"], "no manifest.json"),
    # ddpm train
    ("ddpm-batch-does-not-split", DDPM + ["--storage", "{tmp}/st", "--batch-size", "3", "--workers", "2"],
     "DDPM batch 3 does not split over 2 worker(s)"),
    ("ddpm-resolution", DDPM + ["--storage", "{tmp}/st", "--resolution", "48"], "resolution: Input should be 32"),
    ("ddpm-data-root-under-file", DDPM[:-1] + ["{file}/d", "--storage", "{tmp}/st"], "{file} is a file"),
    # bank build / info
    ("bank-ddpm-meta-corrupt", BANK + ["--storage", "{tmp}/st", "--ddpm", "{ddpm:corrupt}"], "is corrupt"),
    ("bank-ddpm-meta-is-a-list", BANK + ["--storage", "{tmp}/st", "--ddpm", "{ddpm:list}"], "holds list"),
    ("bank-t-range-reversed", BANK + ["--storage", "{tmp}/st", "--t-min", "200", "--t-max", "100"],
     "got (200, 100)"),
    ("bank-resolution-vs-image", BANK + ["--storage", "{tmp}/st", "--resolution", "64"],
     "dissolved at resolution 32"),
    ("bank-info-is-file", ["bank", "info", "{file}"], "bank {file} is a file"),
    # sweep files
    ("sweep-t-range-not-pairs", ["sweep", "{sweep:t_range_scalars}", "--storage", "{tmp}/st"],
     "each a pair [t_min, t_max]"),
    ("sweep-t-range-as-range", ["sweep", "{sweep:t_range_range}", "--storage", "{tmp}/st"],
     "space.dissolve.t_range: give choices"),
    ("sweep-grid-of-2e9", ["sweep", "{sweep:grid_2e9}", "--storage", "{tmp}/st", "--dry-run"],
     "the grid has 2,000,000,000 points"),
    ("sweep-grid-step-0", ["sweep", "{sweep:step_0}", "--storage", "{tmp}/st"], "step must be > 0"),
    ("sweep-ddpm-unknown-key", ["sweep", "{sweep:ddpm_unknown}", "--storage", "{tmp}/st", "--dry-run"],
     "ddpm: unknown key 'nosuch'"),
    ("sweep-base-unknown-key", ["sweep", "{sweep:base_unknown}", "--storage", "{tmp}/st"],
     "base: unknown key 'nosuch'"),
    ("sweep-not-a-mapping", ["sweep", "{sweep:list}", "--storage", "{tmp}/st"], "a sweep file is a YAML mapping"),
    ("sweep-bad-yaml", ["sweep", "{sweep:bad_yaml}", "--storage", "{tmp}/st"], "line 2 invalid YAML"),
    ("sweep-file-is-a-directory", ["sweep", "{dir}", "--storage", "{tmp}/st"], "sweep file {dir} is a directory"),
    ("sweep-storage-under-file", ["sweep", "{sweep:ok}", "--storage", "{file}/st"], "{file} is a file"),
    ("sweep-data-root-under-file", ["sweep", "{sweep:ok}", "--storage", "{tmp}/st", "--data-root", "{file}/d"],
     "({file} is a file)"),
    ("demo-sweep-is-a-directory", ["demo", "--storage", "{tmp}/st", "--sweep", "{dir}"], "is a directory"),
    ("submit-sweep-is-a-directory", ["submit", "{dir}", "--storage", "/x", "--address", "http://127.0.0.1:1"],
     "is a directory"),
    # leaderboard
    ("leaderboard-out-is-a-file", ["leaderboard", "{dir}", "--out", "{file}"], "--out {file} is a file"),
    ("leaderboard-out-under-a-file", ["leaderboard", "{dir}", "--out", "{file}/o"], "cannot be created"),
    ("leaderboard-out-unwritable", ["leaderboard", "{dir}", "--out", "{locked}/o"], "--out {locked}/o is not writable"),
    ("leaderboard-format-empty", ["leaderboard", "{dir}", "--format", ","], "names no format"),
    ("leaderboard-by", ["leaderboard", "{dir}", "--by", "seed"], "--by 'seed' unknown"),
    ("leaderboard-storage-is-file", ["leaderboard", "{file}"], "is not a directory"),
]


def materialise(tmp: Path) -> dict[str, str]:
    """The fixture files the templates name."""
    (tmp / "file").write_text("x")
    (tmp / "dir").mkdir()
    values = {"tmp": str(tmp), "file": str(tmp / "file"), "dir": str(tmp / "dir")}
    for name, meta in {"list": "[1, 2]", "corrupt": "{not json",
                       "r64": json.dumps({"config": {"resolution": 64}, "step": 1})}.items():
        folder = tmp / "ddpms" / name
        folder.mkdir(parents=True)
        (folder / "dia_ray_ddpm.json").write_text(meta)
        values[f"ddpm:{name}"] = str(folder)
    for name, text in SWEEPS.items():
        path = tmp / "sweeps" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
        values[f"sweep:{name}"] = str(path)
    empty = tmp / "npz" / "empty_train"
    empty.mkdir(parents=True)
    np.savez(empty / "synthetic.npz", train_images=np.zeros((0, 28, 28), np.uint8),
             train_labels=np.zeros((0, 1), np.int64), test_images=np.zeros((4, 28, 28), np.uint8),
             test_labels=np.array([[0], [1], [0], [1]]))
    values["npz:empty_train"] = str(empty)
    return values


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``roots`` with its size and mtime: what 'nothing created or modified' compares."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            out[str(p)] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def run_cli(argv: list[str], env: dict[str, str] | None = None, limit_memory: bool = False
            ) -> subprocess.CompletedProcess:
    def cap() -> None:  # a sweep grid materialised in memory would fail here instead of eating the machine
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    return subprocess.run([sys.executable, "-m", "dia_ray", *argv], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}, timeout=180,
                          preexec_fn=cap if limit_memory else None)


@pytest.mark.parametrize("case_id, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case_id, argv, needle, tmp_path, synthetic_root,
                                                          unwritable_dir, free_port):
    values = {**materialise(tmp_path), "data": str(synthetic_root), "locked": str(unwritable_dir),
              "free_port": str(free_port)}
    argv = [re.sub(r"\{([a-z_:0-9]+)\}", lambda m: values[m.group(1)], a) for a in argv]
    needle = re.sub(r"\{([a-z_:0-9]+)\}", lambda m: values[m.group(1)], needle)
    env = {"DIA_RAY_LOG_LEVEL": "loud"} if case_id == "log-level-env" else None
    before = snapshot(tmp_path, synthetic_root)
    done = run_cli(argv, env, limit_memory=case_id == "sweep-grid-of-2e9")
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("dia-ray: error: "), done.stderr[-3000:]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert snapshot(tmp_path, synthetic_root) == before, "the command created or changed files before failing"


def test_the_needles_are_not_printed_by_the_good_inputs(tmp_path, synthetic_root):
    """The good neighbours of some cases (same command, the one bad value fixed) get past the point where the bad
    input failed: their output holds none of the needles. Cheap ones only (no training)."""
    values = materialise(tmp_path)
    good = [
        (["data", "prepare", "--dataset", "synthetic", "--data-root", str(tmp_path / "root")], "is a file"),
        (["data", "check", "--data-root", str(synthetic_root), "--dataset", "synthetic"], "holds no images"),
        (["sweep", values["sweep:ok"], "--storage", str(tmp_path / "st"), "--dry-run"], "each a pair"),
        (["sweep", values["sweep:ok"], "--storage", str(tmp_path / "st"), "--dry-run"], "grid has"),
        (["leaderboard", str(tmp_path / "dir"), "--out", str(tmp_path / "out")], "--out"),
    ]
    for argv, needle in good:
        done = run_cli(argv)
        assert needle not in done.stdout + done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------------------------------
# a Ray worker lost mid-run (integration: a local Ray started by the CLI itself)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_and_kill_train_worker(argv: list[str], after: str, ready: Callable[[], bool] | None = None,
                              wait: float = 120.0) -> tuple[subprocess.Popen, str, str]:
    """Start the CLI (which starts its own local Ray), SIGKILL its Ray Train worker process once stdout shows a
    line containing ``after`` and ``ready()`` holds (polled for up to ``wait`` seconds), and return (process, stdout,
    stderr) when it exits."""
    proc = subprocess.Popen([sys.executable, "-m", "dia_ray", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    out, killed = [], False
    for line in proc.stdout:
        out.append(line)
        if not killed and after in line:
            deadline = time.monotonic() + wait
            while ready is not None and not ready() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            workers = [p for p in _descendants(proc.pid) if _cmdline(p).startswith("ray::RayTrainWorker")]
            assert workers, "no Ray Train worker process below the CLI"
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed = True
    proc.wait(timeout=600)
    reader.join(timeout=60)
    assert killed, "".join(out)[-3000:]
    return proc, "".join(out), "".join(err)


def _assert_lost_line(proc: subprocess.Popen, stderr: str) -> None:
    lines = stderr.splitlines()
    assert proc.returncode == 2, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert "was lost" in lines[0] and "run the same command to resume" in lines[0], lines[0]


def _a_checkpoint_is_registered(storage: Path) -> bool:
    """Ray Train registered a checkpoint of some run under ``storage`` (its snapshot names one). Checkpoints upload
    asynchronously and are registered when the controller next polls the workers, so a worker killed right after
    reporting one may leave nothing to resume from; the test kills only once there is something."""
    for snap in storage.rglob(SNAPSHOT):
        try:
            if registered_checkpoint(Storage(str(snap.parent.parent)), snap.parent.name):
                return True
        except CheckpointError:
            continue  # being written
    return False


@pytest.mark.integration
def test_a_lost_train_worker_is_one_line_and_rerunning_resumes(tmp_path, synthetic_root):
    args = TRAIN[:-1] + [str(synthetic_root), "--storage", str(tmp_path), "--epochs", "8", "--max-failures", "0"]
    proc, out, err = run_and_kill_train_worker(args, after="epoch 1:",
                                               ready=lambda: _a_checkpoint_is_registered(tmp_path))
    _assert_lost_line(proc, err)
    assert not list(tmp_path.glob("results/**/*.jsonl")), "a record was written for the failed run"
    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads(again.stdout.strip().splitlines()[-1])
    assert record["epochs"] == 8 and record["starts"][0] == 0 and record["starts"][-1] >= 1, record["starts"]


@pytest.mark.integration
def test_a_lost_ddpm_worker_is_one_line_and_nothing_is_published(tmp_path, synthetic_root):
    args = DDPM[:-1] + [str(synthetic_root), "--storage", str(tmp_path), "--steps", "400", "--max-failures", "0"]
    proc, out, err = run_and_kill_train_worker(args, after="DDPM: ")
    _assert_lost_line(proc, err)
    assert not list(tmp_path.glob("ddpm/*/model")), "a half-trained DDPM was published"
