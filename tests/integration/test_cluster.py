"""dia-ray on a simulated multi-node cluster: a head with no CPUs and worker nodes started with `ray start`, each in
its own mount namespace with a tmpfs over the data root and the node-local cache — the data root the driver reads
does not exist on the worker nodes, as on a real cluster.

What is checked: a real-BreastMNIST sweep with its storage in an S3-compatible object store (moto on loopback) and
the leaderboard read back from there; six studies whose trials together ask for more workers than exist; a study
with bad data failing alone (exit code "partial") and `--resume` retrying it; fractional GPUs packing several
trials onto one (declared) GPU; a worker node killed mid-sweep, the sweep finishing on the other node with every
record exactly once and interrupted runs resumed from their registered checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raycluster import SimCluster, namespaces_work

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 1200, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dia_ray", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})})


def _write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(st, folder: str) -> list[dict]:
    """Every Tune result row (one per reported epoch) of the trials of an experiment folder in storage."""
    return [json.loads(line) for name in st.list(folder, suffix="result.json")
            for line in st.read_text(folder, name).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sim(tmp_path_factory, shared_data, s3_server):
    """Head (0 CPUs) + two worker nodes (2 CPUs each; w1 declares 1 GPU). Hidden on the workers: the data root and
    the node-local cache. Module-scoped: started once for all tests here."""
    reason = namespaces_work()
    if reason:
        pytest.skip(f"simulated cluster needs mount namespaces: {reason}")
    data = tmp_path_factory.mktemp("driver-data")
    shutil.copy(shared_data / "breastmnist.npz", data / "breastmnist.npz")
    cache = tmp_path_factory.mktemp("node-cache")
    os.environ["DIA_RAY_CACHE"] = str(cache)  # the driver's cache; each worker node gets its own empty one
    cluster = SimCluster(hidden=[data, cache])
    try:
        cluster.start()
        cluster.add_worker("w1", cpus=2, gpus=1)
        cluster.add_worker("w2", cpus=2)
        cluster.data_root = data  # type: ignore[attr-defined]
        yield cluster
    finally:
        cluster.stop()


def test_worker_nodes_cannot_see_the_drivers_data_root(sim):
    code = (f"import os, ray; ray.init(address={sim.address!r})\n"
            "@ray.remote(num_cpus=1)\n"
            f"def look(): return os.path.exists({str(sim.data_root / 'breastmnist.npz')!r})\n"
            "print(sorted(set(ray.get([look.remote() for _ in range(4)]))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[False]"  # no worker node sees it
    assert (sim.data_root / "breastmnist.npz").is_file()  # the driver does


def test_breastmnist_sweep_to_s3_and_leaderboard_from_s3(sim, s3_bucket, tmp_path):
    sweep = _write_sweep(tmp_path / "s3.yaml", """
name: cluster_s3
datasets: [breastmnist]
methods: [csi, blur-gaussian]
seeds: [0]
budget: tiny
sampler: grid
resources: {workers: 1, cpus_per_worker: 1}
max_concurrent_trials: 2
max_retries: 1
""")
    storage = f"{s3_bucket}/runs/a"
    out = _run("sweep", str(sweep), "--storage", storage, "--data-root", str(sim.data_root), "--address", sim.address)
    assert out.returncode == 0, out.stderr[-4000:]
    assert not (Path.cwd() / "s3:").exists()  # the URI never became a local folder
    board = _run("leaderboard", storage, "--format", "md,csv", "--out", str(tmp_path / "board"))
    assert board.returncode == 0, board.stderr[-3000:]
    from dia_ray.storage import Storage

    st = Storage(storage)
    records = st.list("sweeps/cluster_s3/breastmnist/records", suffix=".jsonl")
    assert len(records) == 2
    recs = [json.loads(st.read_text("sweeps/cluster_s3/breastmnist/records", r)) for r in records]
    assert sorted(r["method"] for r in recs) == ["blur-gaussian", "csi"]
    assert all(len(r["test_labels"]) == 40 for r in recs)  # tiny budget: 40 stratified test images of the real file
    assert st.list("sweeps/cluster_s3/breastmnist/tune")  # Tune's experiment lives in the bucket too
    text = board.stdout
    assert "csi" in text and "blur-gaussian" in text
    assert (tmp_path / "board" / "leaderboard.csv").is_file()
    # the Train workers ran on worker nodes (the head has no CPUs) and read the data from the object store
    results = _rows(st, "sweeps/cluster_s3/breastmnist/tune")
    assert results and {r["node_id"] for r in results} <= set(sim.node_ids.values()) - {sim.node_ids["head"]}


def _paper_standins(root: Path, size: int = 32) -> None:
    """The six paper datasets' on-disk layouts, filled with the synthetic generator's fine-grained images."""
    import numpy as np

    from dia_ray.data import synthetic

    synthetic.generate_npz(root / "pneumoniamnist.npz", seed=1, size=28)
    with np.load(synthetic.generate_npz(root / "tmp-breast.npz", seed=2, size=28)) as z:
        arrays = {k: (1 - z[k]) if k.endswith("_labels") else z[k] for k in z.files}  # BreastMNIST: normal = 1
    np.savez(root / "breastmnist.npz", **arrays)
    (root / "tmp-breast.npz").unlink()
    layouts = {"covid": ("covid", False, {"normal": "non-COVID", "anomaly": "COVID"}),
               "kvasir": ("kvasir-anomaly-polyps", False, {"normal": "normal", "anomaly": "polyps"}),
               "retina": ("OCT2017", True, {"normal": "NORMAL", "anomaly": "CNV"}),
               "aptos": ("APTOS2019/split", False, {"normal": "0", "anomaly": "1"})}
    for i, (location, presplit, names) in enumerate(layouts.values()):
        src = synthetic.generate_folder(root / f"tmp-{i}", seed=10 + i, size=size)
        for split in ("train", "test"):
            for cls, name in names.items():
                dest = root / location / (split if presplit else "") / name
                dest.mkdir(parents=True, exist_ok=True)
                for png in (src / split / cls).glob("*.png"):
                    png.rename(dest / f"{split}-{png.name}")
        shutil.rmtree(src)


def test_six_studies_oversubscribing_the_cluster_all_finish(sim, s3_bucket, tmp_path):
    data = sim.data_root / "six"
    _paper_standins(data)
    sweep = _write_sweep(tmp_path / "six.yaml", """
name: six
datasets: [pneumoniamnist, breastmnist, covid, kvasir, retina, aptos]
methods: [csi]
seeds: [0]
budget: tiny
base: {max_train_images: 64}
sampler: grid
resources: {workers: 1, cpus_per_worker: 1}
max_retries: 1
""")
    # 6 studies ask for 6 workers at once; the two worker nodes hold 4
    from dia_ray.storage import Storage

    st = Storage(f"{s3_bucket}/six")
    out = _run("sweep", str(sweep), "--storage", st.uri, "--data-root", str(data), "--address", sim.address)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = st.read_json("sweeps/six/sweep.json")["summaries"]
    assert [s["status"] for s in summary] == ["ok"] * 6
    spans = [(s["trials_started"], s["finished"]) for s in summary]
    assert max(a for a, _ in spans) < min(b for _, b in spans), "the six studies did not run at the same time"
    from dia_ray.results.collect import collect

    recs = collect(st).records
    assert sorted(r.dataset for r in recs) == sorted(("pneumoniamnist", "breastmnist", "covid", "kvasir", "retina",
                                                      "aptos"))


def test_a_study_with_bad_data_fails_alone_and_resume_retries_it(sim, s3_bucket, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(sim.data_root / "breastmnist.npz", data / "breastmnist.npz")
    (data / "pneumoniamnist.npz").write_bytes(b"not an npz file")
    sweep = _write_sweep(tmp_path / "iso.yaml", """
name: iso
datasets: [breastmnist, pneumoniamnist]
methods: [csi]
seeds: [0]
budget: tiny
sampler: grid
resources: {workers: 1, cpus_per_worker: 1}
max_concurrent_trials: 1
""")
    from dia_ray.storage import Storage

    st = Storage(f"{s3_bucket}/iso")
    out = _run("sweep", str(sweep), "--storage", st.uri, "--data-root", str(data), "--address", sim.address)
    assert out.returncode == 3, (out.returncode, out.stderr[-3000:])
    assert "pneumoniamnist: FAILED" in out.stderr and "sweep partial: pneumoniamnist (failed)" in out.stderr
    summary = {s["dataset"]: s for s in st.read_json("sweeps/iso/sweep.json")["summaries"]}
    assert summary["breastmnist"]["status"] == "ok" and summary["pneumoniamnist"]["status"] == "failed"
    assert "pneumoniamnist.npz" in summary["pneumoniamnist"]["reason"]
    assert len(st.list("sweeps/iso/breastmnist/records", suffix=".jsonl")) == 1
    from dia_ray.data import synthetic

    synthetic.generate_npz(data / "pneumoniamnist.npz", seed=3)  # the data is fixed
    again = _run("sweep", str(sweep), "--storage", st.uri, "--data-root", str(data), "--address", sim.address,
                 "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(st.list("sweeps/iso/pneumoniamnist/records", suffix=".jsonl")) == 1
    assert len(st.list("sweeps/iso/breastmnist/records", suffix=".jsonl")) == 1  # not trained twice


def test_fractional_gpus_pack_several_trials_on_one_gpu(sim, s3_bucket, tmp_path):
    """w1 declares one GPU (no CUDA here: the trials fall back to the CPU and still run); four trials asking for a
    quarter GPU each are placed on it at the same time, as Tune's results show."""
    sweep = _write_sweep(tmp_path / "gpu.yaml", """
name: packing
datasets: [breastmnist]
methods: [csi]
seeds: [0, 1, 2, 3]
budget: tiny
base: {epochs: 3}
sampler: grid
resources: {workers: 1, cpus_per_worker: 0.4, gpus_per_worker: 0.25}
max_concurrent_trials: 4
""")
    from dia_ray.storage import Storage

    st = Storage(f"{s3_bucket}/packing")
    out = _run("sweep", str(sweep), "--storage", st.uri, "--data-root", str(sim.data_root), "--address", sim.address,
               env={"DIA_RAY_EPOCH_DELAY": "3"})
    assert out.returncode == 0, out.stderr[-4000:]
    rows = _rows(st, "sweeps/packing/breastmnist/tune")
    assert rows and {r["gpu_share"] for r in rows} == {0.25}
    assert {r["node_id"] for r in rows} == {sim.node_ids["w1"]}  # the only node with a GPU
    spans = {}
    for r in rows:
        lo, hi = spans.get(r["trial_id"], (r["timestamp"], r["timestamp"]))
        spans[r["trial_id"]] = (min(lo, r["timestamp"]), max(hi, r["timestamp"]))
    overlap = max(sum(lo <= t <= hi for lo, hi in spans.values()) for t, _ in spans.values())
    assert overlap >= 2, f"no two trials held the GPU at the same time: {spans}"


def test_losing_a_worker_node_mid_sweep(sim, s3_bucket, tmp_path):
    """SIGKILL every process of a worker node while trials train on it: the sweep finishes on the other node, each
    run has exactly one record, and a run that was interrupted continued from its last registered checkpoint."""
    sweep = _write_sweep(tmp_path / "loss.yaml", """
name: nodeloss
datasets: [breastmnist]
methods: [csi]
seeds: [0, 1, 2, 3]
budget: tiny
base: {epochs: 6}
sampler: grid
resources: {workers: 1, cpus_per_worker: 1}
max_concurrent_trials: 4
max_retries: 2
""")
    from dia_ray.storage import Storage

    st = Storage(f"{s3_bucket}/nodeloss")
    proc = subprocess.Popen([sys.executable, "-m", "dia_ray", "sweep", str(sweep), "--storage", st.uri,
                             "--data-root", str(sim.data_root), "--address", sim.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled", "DIA_RAY_EPOCH_DELAY": "2"})
    victim = "w2"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # wait until a run on the victim has registered a checkpoint
        if _registered_on(st, sim.node_ids[victim]):
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(1)
    else:
        pytest.fail("no run checkpointed on the victim node")
    sim.kill_node(victim)
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-4000:]
    from dia_ray.results.collect import collect

    recs = collect(st).records
    assert sorted(r.seed for r in recs) == [0, 1, 2, 3]  # every run finished, exactly once
    resumed = [r for r in recs if len(r.starts) > 1]
    assert resumed, [r.starts for r in recs]
    assert all(r.starts[0] == 0 and r.starts[-1] >= 1 for r in resumed)  # continued from a checkpoint, not epoch 0
    sim.add_worker(victim, cpus=2)  # leave the cluster as we found it


def _registered_on(st, node_id: str) -> bool:
    """A trial running on ``node_id`` has reported a checkpoint (Tune's results name its path once Ray Train has
    uploaded and registered it)."""
    rows = _rows(st, "sweeps/nodeloss/breastmnist/tune")
    return any(r.get("node_id") == node_id and r.get("checkpoint_path") and not r.get("last_epoch") for r in rows)
