"""`dia-ray submit` against a real Ray head started by this module (`ray start --head`, loopback, free ports, its own
temp dir): the job runs the project's code on the head, Ray's own `ray job list` shows it, and the smoke sweep's
storage builds a leaderboard.

Teardown stops only this head. `ray stop` would stop every Ray cluster of the user on the machine (other test
sessions, other agents), so the head is started with a marker environment variable, which every process it spawns
inherits (GCS, raylet, dashboard, agents, workers, job drivers); teardown signals exactly the processes carrying it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raycluster import RAY, SimCluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SMOKE_SWEEP = REPO / "sweeps" / "smoke_cpu.yaml"


@pytest.fixture(scope="module")
def ray_head():
    """A single-node Ray head (2 CPUs) with the dashboard on 127.0.0.1:<free port>; yields the Jobs API URL."""
    cluster = SimCluster(head_cpus=2, object_store_bytes=1024**3)
    try:
        cluster.start()
        yield cluster.dashboard
    finally:
        cluster.stop()


def cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dia_ray", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def ray_job_list(url: str) -> str:
    """Ray's own CLI, not ours."""
    done = subprocess.run([str(RAY), "job", "list", "--address", url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_submitted_job_runs_the_uploaded_project_code_on_the_head(ray_head):
    """The plumbing under every sweep: upload, import dia_ray from the working_dir, connect with --address auto
    (the job-level env_vars must not conflict with the driver's own runtime_env), exit code, logs."""
    from dia_ray.distributed import jobs

    client, url = jobs.connect(ray_head)
    probe = ("from dia_ray.distributed.runtime import connect; connect('auto'); import ray, dia_ray, os; "
             "print('PROBE', int(ray.cluster_resources()['CPU']), os.environ['OMP_NUM_THREADS'], "
             "'working_dir_files' in dia_ray.__file__)")
    job_id = client.submit_job(entrypoint=f'python -c "{probe}"',
                               runtime_env=jobs.build_runtime_env(jobs.project_root()))
    chunks: list[str] = []
    status = jobs.follow(url, job_id, chunks.append, poll_s=0.5)
    assert str(status) == "SUCCEEDED", "".join(chunks)[-3000:]
    assert "PROBE 2 1 True" in "".join(chunks)
    assert "PROBE 2 1 True" in cli("jobs", "logs", job_id, "--address", url).stdout
    assert job_id in ray_job_list(url)


def test_failed_job_makes_wait_exit_1(ray_head, tmp_path):
    sweep = tmp_path / "not_a_sweep.yaml"
    sweep.write_text("this_is: not a sweep the sweep command accepts\n")
    done = cli("submit", str(sweep), "--address", ray_head, "--storage", str(tmp_path / "storage"), "--wait",
               timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    job_id = done.stdout.splitlines()[0]
    assert job_id in ray_job_list(ray_head)
    status = cli("jobs", "status", job_id, "--address", ray_head)
    assert status.returncode == 1 and "FAILED" in status.stdout


def test_smoke_sweep_submitted_with_wait_succeeds_and_its_storage_builds_a_leaderboard(ray_head, tmp_path):
    storage = tmp_path / "storage"
    done = cli("submit", str(SMOKE_SWEEP.relative_to(REPO)), "--address", ray_head, "--storage", str(storage),
               "--wait", timeout=1800)
    job_id = done.stdout.splitlines()[0] if done.stdout else ""
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert job_id.startswith("dia-ray-smoke_cpu-")  # stable: (sweep file, storage)
    assert job_id in ray_job_list(ray_head)
    status = cli("jobs", "status", job_id, "--address", ray_head)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = cli("jobs", "logs", job_id, "--address", ray_head).stdout
    # the driver's summary line per dataset (what `dia-ray sweep` prints at the end), not just any output
    assert any(line.startswith(("synthetic: ", "synthetic-folder: ")) and "trial(s), best auroc" in line
               for line in logs.splitlines()), logs[-3000:]

    from dia_ray.results.collect import collect

    collection = collect(storage)
    assert not collection.empty, collection.summary()
    board = cli("leaderboard", str(storage), "--format", "md", "--out", str(tmp_path / "board"), timeout=300)
    assert board.returncode == 0, board.stderr[-3000:]
    assert (tmp_path / "board" / "leaderboard.md").is_file()
    again = cli("submit", str(SMOKE_SWEEP.relative_to(REPO)), "--address", ray_head, "--storage", str(storage))
    assert again.returncode == 0 and again.stdout.splitlines()[0] == job_id, again.stderr[-2000:]
    assert "not starting another" in again.stderr
    listed = cli("jobs", "list", "--address", ray_head).stdout.splitlines()
    assert sum(line.startswith("dia-ray-smoke_cpu-") for line in listed) == 1  # the retry started no second sweep
