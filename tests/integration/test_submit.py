"""`dia-ray submit` against a real Ray head started by this module (`ray start --head`, loopback, free ports, its own
temp dir): the job runs the project's code on the head, Ray's own `ray job list` shows it, and the smoke sweep's
storage builds a leaderboard.

Teardown stops only this head. `ray stop` would stop every Ray cluster of the user on the machine (other test
sessions, other agents), so the head is started with a marker environment variable, which every process it spawns
inherits (GCS, raylet, dashboard, agents, workers, job drivers); teardown signals exactly the processes carrying it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
SMOKE_SWEEP = REPO / "sweeps" / "smoke_cpu.yaml"
MARKER_ENV = "DIA_RAY_TEST_HEAD"
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def marked_pids(marker: str) -> list[int]:
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:  # exited meanwhile, or not ours to read
                continue
    return pids


def stop_head(marker: str, grace_s: float = 5.0) -> None:
    """SIGTERM every process of this head, SIGKILL what is left after ``grace_s`` (agents ignore SIGTERM)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in marked_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while marked_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not marked_pids(marker):
            return


def wait_for_jobs_api(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                if json.loads(r.read()).get("ray_version"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Jobs API at {url} after {timeout_s:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A single-node Ray head with the dashboard on 127.0.0.1:<free port>; yields the Jobs API URL."""
    marker = uuid.uuid4().hex[:10]
    temp_dir = Path(f"/tmp/drh-{marker}")  # short: Ray's AF_UNIX socket paths must stay < 107 bytes
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", **{MARKER_ENV: marker},
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "DIA_RAY_ADDRESS"):
        env.pop(name, None)
    cmd = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", "--num-cpus=2", f"--object-store-memory={1024**3}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items())]
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-2000:]
        wait_for_jobs_api(url)
        yield url
    finally:
        stop_head(marker)
        leftovers = marked_pids(marker)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)
        assert not leftovers, f"processes of the test head still alive: {leftovers}"


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
    assert job_id.startswith("raysubmit_")
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
