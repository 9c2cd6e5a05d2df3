"""`dia-ray submit` / `dia-ray jobs` without a cluster: every user mistake is one stderr line and exit code 2, fast;
the job's runtime_env uploads the code and nothing else."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dia_ray.cli import main
from dia_ray.distributed import jobs
from dia_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sweep_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ndatasets: [synthetic]\n")
    return path


@pytest.fixture(autouse=True)
def no_address_env(monkeypatch):
    for name in ("DIA_RAY_ADDRESS", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The whole of stderr, which must be exactly one 'dia-ray: error:' line (warnings or a traceback fail)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dia-ray: error: "), err
    return lines[0]


def test_submit_to_an_address_where_nothing_listens_fails_in_seconds_with_one_line(sweep_file):
    port = free_port()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dia_ray", "submit", str(sweep_file), "--address", f"http://127.0.0.1:{port}",
         "--storage", "/tmp/x"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "port-forward" in lines[0] and "ssh -L" in lines[0]
    assert elapsed < 10


def test_missing_sweep_file_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "submit", str(tmp_path / "nope.yaml"), "--address", "http://127.0.0.1:1",
                           "--storage", "/tmp/x")
    assert code == 2 and error_line(err) == f"dia-ray: error: sweep file {tmp_path / 'nope.yaml'} not found"


def test_sweep_file_that_is_not_yaml_exits_2_with_the_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n  datasets: [a\n")
    code, _, err = run_cli(capsys, "submit", str(bad), "--address", "http://127.0.0.1:1", "--storage", "/tmp/x")
    assert code == 2 and "not valid YAML (line" in error_line(err)


@pytest.mark.parametrize("storage", ["storage", "~/storage", "./runs"])
def test_storage_must_be_absolute_or_a_uri_on_the_cluster(capsys, sweep_file, storage):
    code, _, err = run_cli(capsys, "submit", str(sweep_file), "--address", "http://127.0.0.1:1", "--storage", storage)
    assert code == 2 and "must be an absolute path on the cluster" in error_line(err)


def test_bad_runtime_env_file_is_reported_before_contacting_the_cluster(capsys, sweep_file, tmp_path):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("pip: 5\n")
    code, _, err = run_cli(capsys, "submit", str(sweep_file), "--address", "http://127.0.0.1:1", "--storage", "/x",
                           "--runtime-env", str(env_file))
    assert code == 2 and "invalid runtime env" in error_line(err)


def test_no_address_anywhere_exits_2(capsys, sweep_file):
    code, _, err = run_cli(capsys, "submit", str(sweep_file), "--storage", "/tmp/x")
    assert code == 2 and "no cluster address" in error_line(err)


def test_jobs_commands_report_an_unreachable_cluster_in_one_line(capsys):
    port = free_port()
    for argv in (["jobs", "list"], ["jobs", "status", "raysubmit_x"], ["jobs", "logs", "raysubmit_x"],
                 ["jobs", "stop", "raysubmit_x"]):
        code, _, err = run_cli(capsys, *argv, "--address", f"127.0.0.1:{port}")
        assert code == 2 and "cannot reach the Ray Jobs API" in error_line(err)


class _TokenRequired(BaseHTTPRequestHandler):
    """A Jobs API that answers like a Ray head with token authentication and no token in the request."""

    def do_GET(self):  # noqa: N802
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b"Unauthorized: Missing authentication token")

    def log_message(self, *args):
        pass


@pytest.fixture
def token_head():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenRequired)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_cluster_with_token_auth_says_how_to_authenticate(capsys, token_head):
    code, _, err = run_cli(capsys, "jobs", "list", "--address", token_head)
    assert code == 2
    line = error_line(err)
    assert "requires token authentication" in line and "RAY_AUTH_MODE=token" in line


def test_explicit_address_wins_over_ray_address(capsys, monkeypatch, token_head):
    # JobSubmissionClient itself would let $RAY_ADDRESS override its argument.
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    code, _, err = run_cli(capsys, "jobs", "list", "--address", token_head)
    assert code == 2 and "requires token authentication" in err


def test_address_falls_back_to_dia_ray_address(capsys, monkeypatch, token_head):
    monkeypatch.setenv("DIA_RAY_ADDRESS", token_head)
    code, _, err = run_cli(capsys, "jobs", "list")
    assert code == 2 and token_head in err


def test_bare_host_port_means_http_and_other_schemes_are_refused():
    assert jobs.normalize_address("10.0.0.5:8265") == "http://10.0.0.5:8265"
    assert jobs.normalize_address("https://ray.example.org/") == "https://ray.example.org"
    with pytest.raises(ConfigError):
        jobs.normalize_address("auto")
    with pytest.raises(ConfigError):
        jobs.normalize_address("ray://head:10001")


def test_entrypoint_runs_the_sweep_against_the_cluster_it_runs_on():
    entry = jobs.sweep_entrypoint(".dia-ray-submit/my sweep.yaml", "s3://bucket/dia ray")
    assert entry == ("python -m dia_ray sweep '.dia-ray-submit/my sweep.yaml' --storage 's3://bucket/dia ray' "
                     "--address auto")
    assert jobs.sweep_entrypoint("sweeps/a.yaml", "/mnt/shared/x", resume=True).endswith("--address auto --resume")


def packaged_names(working_dir: Path, excludes: list[str]) -> set[str]:
    """The files Ray's own packager would upload for this working_dir and excludes."""
    from ray._private.runtime_env.packaging import create_package

    target = working_dir.parent / "pkg.zip"
    create_package(str(working_dir), target, include_gitignore=True, excludes=excludes)
    with zipfile.ZipFile(target) as zf:
        return {n.rstrip("/") for n in zf.namelist()}


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "proj"
    for rel in ("pyproject.toml", "dia_ray/__init__.py", "dia_ray/data/registry.py", "sweeps/a.yaml",
                "data/bloodmnist.npz", "results/r.jsonl", "storage/x/y.json", ".venv/bin/python", ".git/HEAD",
                "dia_ray/__pycache__/x.pyc", "tests/fixtures/frame.parquet"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return root


def test_upload_holds_the_code_and_sweeps_but_no_data_results_or_venv(project):
    names = packaged_names(project, jobs.build_runtime_env(project)["excludes"])
    assert {"dia_ray/__init__.py", "dia_ray/data/registry.py", "sweeps/a.yaml", "pyproject.toml"} <= names
    assert not [n for n in names if n.split("/")[0] in {"data", "results", "storage", ".venv", ".git"}]
    assert not [n for n in names if n.endswith((".pyc", ".parquet", ".npz"))]


def test_sweep_from_outside_the_project_is_staged_into_the_upload(project, tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere" / "mine.yaml"
    outside.parent.mkdir()
    outside.write_text("name: mine\n")
    monkeypatch.chdir(project)
    with jobs.staged_working_dir(outside) as (work, rel):
        assert work != project and rel == ".dia-ray-submit/mine.yaml"
        assert (work / rel).read_text() == "name: mine\n"
        assert (work / "dia_ray" / "data" / "registry.py").is_file()
        assert not (work / ".venv").exists() and not (work / "data").exists()
    assert not work.exists()  # removed after the upload


def test_sweep_inside_the_project_uploads_the_project_itself(project):
    with jobs.staged_working_dir(project / "sweeps" / "a.yaml") as (work, rel):
        assert (work, rel) == (project, "sweeps/a.yaml")


def test_user_runtime_env_merges_over_ours(tmp_path, caplog):
    overlay_file = tmp_path / "env.yaml"
    overlay_file.write_text("env_vars: {NCCL_DEBUG: INFO, OMP_NUM_THREADS: 4, WANDB_API_KEY: k}\n"
                            "excludes: ['*.png']\nconfig: {setup_timeout_seconds: 1200}\n")
    with caplog.at_level(logging.WARNING, logger="dia_ray.distributed.jobs"):
        env = jobs.build_runtime_env(REPO, jobs.load_runtime_env_file(overlay_file))
    assert env["env_vars"] == {"OMP_NUM_THREADS": "4", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", "NCCL_DEBUG": "INFO",
                               "WANDB_API_KEY": "k"}
    assert env["excludes"][-1] == "*.png" and "/data" in env["excludes"]
    assert env["config"] == {"setup_timeout_seconds": 1200} and env["working_dir"] == str(REPO)
    assert "WANDB_API_KEY looks like a secret" in caplog.text


def test_user_runtime_env_may_not_replace_the_working_dir_or_be_invalid(tmp_path):
    bad = tmp_path / "env.yaml"
    bad.write_text("working_dir: s3://b/x.zip\n")
    with pytest.raises(ConfigError, match="remove 'working_dir'"):
        jobs.load_runtime_env_file(bad)
    with pytest.raises(ConfigError, match="invalid runtime env"):
        jobs.build_runtime_env(REPO, {"pip": 5})


def test_exit_code_mirrors_the_job():
    from ray.job_submission import JobStatus

    assert [jobs.exit_code(s) for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)] == [0, 1, 1]
