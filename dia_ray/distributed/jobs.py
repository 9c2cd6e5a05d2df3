"""Submitting sweeps to a Ray cluster through the Ray Jobs API (``ray.job_submission.JobSubmissionClient``).

``submit_sweep`` uploads the project directory as the job's ``working_dir`` (without data, results, git and
virtualenvs) and runs ``python -m dia_ray sweep SWEEP --storage URI --address auto`` on the head node. A sweep file
from outside the project is shipped in a staged copy of the project. Every error the user can cause (no cluster at
the address, missing token, unknown job id, bad sweep or runtime-env file) becomes one
:class:`~dia_ray.errors.ClusterError` / :class:`~dia_ray.errors.ConfigError` line.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dia_ray.storage import is_uri
from dia_ray.errors import ClusterError, ConfigError
from dia_ray.paths import existing_file

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

log = logging.getLogger(__name__)

# Left out of the upload. Top-level names are anchored (`dia_ray/data/` is code, `/data` is a dataset root);
# the patterns apply at any depth. Ray caps a working_dir at 512 MiB.
TOP_LEVEL_EXCLUDES = (".git", ".venv", "venv", "env", "data", "results", "storage", "build", "dist", "leaderboard",
                      ".pytest_cache", ".mypy_cache", ".ruff_cache", "dia_ray.egg-info")
ANYWHERE_EXCLUDES = ("__pycache__", "*.pyc", "*.npz", "*.npy", "*.parquet", "*.pt", "*.pth", "*.ckpt",
                     "*.safetensors", ".ipynb_checkpoints")
# RAY_OVERRIDE_JOB_RUNTIME_ENV: the sweep's own ray.init(runtime_env={"env_vars": ...}) would otherwise conflict
# with these job-level env_vars ("Failed to merge the Job's runtime env ...") and the job would fail at start.
JOB_ENV_VARS = {"OMP_NUM_THREADS": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
STAGED_SWEEPS = ".dia-ray-submit"  # where a sweep file from outside the project lands in the staged upload
CONNECT_TIMEOUT_S = 5.0
REACH_HINT = ("is the head running? Reach a remote head through a tunnel first: `ssh -L 8265:localhost:8265 HEAD` "
              "(ray up: `ray dashboard cluster/ray-up/a100.yaml`) or `kubectl port-forward svc/CLUSTER-head-svc "
              "8265:8265`, then use --address http://127.0.0.1:8265")


@dataclass(frozen=True)
class Submission:
    job_id: str
    address: str
    entrypoint: str
    reused: str | None = None  # the status of an existing job of the same sweep + storage that was reused


# ---------------------------------------------------------------------------------------------------- client


def normalize_address(address: str | None) -> str:
    """The Jobs API URL: ``http(s)://HOST:PORT`` as given, a bare ``HOST:PORT`` as ``http://HOST:PORT``."""
    if not address:
        raise ConfigError("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard / Jobs API) or "
                          "set DIA_RAY_ADDRESS")
    address = address.strip().rstrip("/")
    if "://" not in address and address != "auto":
        address = f"http://{address}"
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"cluster address '{address}' is not a Jobs API URL; use the dashboard URL, e.g. "
                          "--address http://127.0.0.1:8265")
    return address


def _probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds (not after a 2-minute TCP timeout) when nothing listens at the address."""
    parts = urllib.parse.urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except socket.gaierror as err:
        raise ClusterError(f"cannot resolve the host of {address}: {err.strerror or err}") from None
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterError(f"cannot reach the Ray Jobs API at {address} ({reason}); {REACH_HINT}") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:400] + ("..." if len(text) > 400 else "")


@contextmanager
def _cluster_errors(address: str, what: str) -> Iterator[None]:
    """Turn the Jobs client's exceptions (requests, auth, HTTP errors as RuntimeError) into one ClusterError line."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        verdict = "rejected the token" if "failed" in str(err).lower() else "requires token authentication"
        raise ClusterError(
            f"the Ray cluster at {address} {verdict}: set RAY_AUTH_MODE=token and put the cluster's token in "
            "~/.ray/auth_token or $RAY_AUTH_TOKEN (KubeRay: kubectl get secret CLUSTER "
            "-o jsonpath='{.data.auth_token}' | base64 -d)") from None
    except (ConnectionError, requests.exceptions.RequestException) as err:
        raise ClusterError(f"{what} on {address} failed, the Jobs API stopped answering ({_one_line(err)}); "
                           f"{REACH_HINT}") from None
    except RuntimeError as err:  # the client reports HTTP errors (unknown job id, ...) as RuntimeError
        raise ClusterError(f"{what} on {address} failed: {_one_line(err)}") from None


@contextmanager
def _without_env(*names: str) -> Iterator[None]:
    """JobSubmissionClient lets $RAY_ADDRESS / $RAY_API_SERVER_ADDRESS override its ``address`` argument; the
    address dia-ray resolved (explicit option first) must win."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None) -> tuple[JobSubmissionClient, str]:
    """A connected Jobs client and the normalized address (one clear line if nobody answers there)."""
    url = normalize_address(address)
    _probe(url)
    from ray.job_submission import JobSubmissionClient

    with _cluster_errors(url, "connecting to the Ray Jobs API"), \
            _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        return JobSubmissionClient(url), url


# ---------------------------------------------------------------------------------------------------- packaging


def project_root(near: Path | None = None) -> Path:
    """The dia-ray checkout to upload: the first directory holding ``pyproject.toml`` and ``dia_ray/`` above the sweep
    file, above the current directory, or above the installed package (editable install)."""
    import dia_ray

    starts = [p.resolve() for p in (near, Path.cwd(), Path(dia_ray.__file__).parent) if p is not None]
    for start in starts:
        for candidate in (start, *start.parents):
            if (candidate / "pyproject.toml").is_file() and (candidate / "dia_ray" / "__init__.py").is_file():
                return candidate
    raise ConfigError("cannot find the dia-ray project directory to upload (a directory with pyproject.toml and "
                      "dia_ray/); run dia-ray submit from a checkout of the project")


def ray_excludes() -> list[str]:
    """:data:`TOP_LEVEL_EXCLUDES` and :data:`ANYWHERE_EXCLUDES` as runtime_env ``excludes`` (gitignore syntax)."""
    return [f"/{name}" for name in TOP_LEVEL_EXCLUDES] + list(ANYWHERE_EXCLUDES)


def _copy_ignore(root: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == root
        return {n for n in names
                if (top and n in TOP_LEVEL_EXCLUDES) or any(fnmatch.fnmatch(n, p) for p in ANYWHERE_EXCLUDES)}

    return ignore


def load_sweep_file(sweep: Path) -> Path:
    """The sweep file, resolved, after checking it exists and is a YAML mapping (one line if not)."""
    path = existing_file(sweep, "sweep file", ConfigError)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"sweep file '{sweep}' cannot be read: {_one_line(err)}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"sweep file '{sweep}' is not valid YAML{where}: {getattr(err, 'problem', None) or err}") \
            from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file '{sweep}' must hold a YAML mapping (sweep settings), got "
                          f"{type(data).__name__}")
    return path.resolve()


def check_cluster_storage(storage: str, option: str = "--storage") -> str:
    """``--storage`` (or ``--data-root``) as the head node will read it: a URI or an absolute path on the cluster. A
    relative path would land in the job's temporary working dir and vanish with it; ``~`` would be the remote
    user's home."""
    if is_uri(storage):
        from dia_ray.storage import Storage

        return Storage(storage).uri  # a malformed URI is one line here, before anything is uploaded
    if storage.startswith("~") or not storage.startswith("/"):
        what = "a shared filesystem such as /mnt/shared/dia-ray" if option == "--storage" else "e.g. /data on the head"
        raise ConfigError(f"{option} '{storage}' must be an absolute path on the cluster ({what}) or a URI "
                          "(s3://bucket/prefix)")
    return storage


def load_runtime_env_file(path: Path | None) -> dict[str, Any]:
    """The user's runtime_env overlay (``--runtime-env FILE``): a YAML mapping of Ray runtime_env fields."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(existing_file(path, "runtime env file", ConfigError).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"runtime env file '{path}' cannot be read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"runtime env file '{path}' is not valid YAML: {_one_line(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"runtime env file '{path}' must hold a YAML mapping of runtime_env fields")
    if "working_dir" in data:
        raise ConfigError(f"runtime env file '{path}': remove 'working_dir'; dia-ray submit uploads the project "
                          "directory itself")
    return data


def build_runtime_env(working_dir: Path, overlay: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job's runtime_env: the project as working_dir, :func:`ray_excludes`, :data:`JOB_ENV_VARS`; ``overlay``
    fields replace ours except ``env_vars`` (merged per variable) and ``excludes`` (appended)."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": ray_excludes(), "env_vars": dict(JOB_ENV_VARS)}
    for key, value in (overlay or {}).items():
        if key == "env_vars":
            if not isinstance(value, dict):
                raise ConfigError("runtime env 'env_vars' must be a mapping of NAME: value")
            env["env_vars"].update({str(k): str(v) for k, v in value.items()})
        elif key == "excludes":
            extra = [value] if isinstance(value, str) else list(value or [])
            env["excludes"] += [e for e in extra if e not in env["excludes"]]
        else:
            env[key] = value
    for name in env["env_vars"]:
        if SECRET_NAME.search(name):
            log.warning("runtime env variable %s looks like a secret: anyone who can reach the dashboard sees it "
                        "(ray job list); prefer instance roles / Kubernetes secrets on the nodes", name)
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**env)
    except Exception as err:  # Ray raises TypeError/ValueError/... for unknown or malformed fields
        raise ConfigError(f"invalid runtime env: {_one_line(err)}") from None
    return env


def sweep_entrypoint(sweep_in_working_dir: str, storage: str, resume: bool = False, *, data_root: str | None = None,
                     mlflow_uri: str | None = None, wandb_project: str | None = None) -> str:
    """The shell command the head runs; the sweep path is relative to the uploaded working_dir. The data root is read
    by that driver on the head (or from its URI) and reaches the workers through the object store: nothing large
    travels in the runtime env."""
    args = ["python", "-m", "dia_ray", "sweep", sweep_in_working_dir, "--storage", storage, "--address", "auto"]
    for flag, value in (("--data-root", data_root), ("--mlflow-uri", mlflow_uri), ("--wandb-project", wandb_project)):
        if value:
            args += [flag, value]
    return " ".join(shlex.quote(a) for a in args + (["--resume"] if resume else []))


def submission_base(sweep: Path, storage: str) -> str:
    """A stable job id for (sweep file content, storage): a retried `dia-ray submit` finds the job it started."""
    import hashlib

    digest = hashlib.sha256(sweep.read_bytes() + b"\0" + storage.encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_-]", "-", sweep.stem)[:40]
    return f"dia-ray-{name}-{digest}"


def _existing_attempts(client: JobSubmissionClient, base: str) -> list[tuple[int, JobDetails]]:
    attempts = []
    for job in client.list_jobs():
        sid = job.submission_id or ""
        m = re.fullmatch(re.escape(base) + r"(?:-r(\d+))?", sid)
        if m:
            attempts.append((int(m[1] or 1), job))
    return sorted(attempts, key=lambda a: a[0])


@contextmanager
def staged_working_dir(sweep: Path) -> Iterator[tuple[Path, str]]:
    """``(working_dir, sweep path inside it)``: the project itself when the sweep file lives in it, otherwise a
    temporary copy of the project (same excludes) with the sweep file added under :data:`STAGED_SWEEPS`."""
    root = project_root(sweep.parent)
    if root in sweep.parents:
        yield root, sweep.relative_to(root).as_posix()
        return
    stage = Path(tempfile.mkdtemp(prefix="dia-ray-submit-"))
    try:
        work = stage / root.name
        shutil.copytree(root, work, ignore=_copy_ignore(root), symlinks=True)
        dest = work / STAGED_SWEEPS / sweep.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sweep, dest)
        yield work, dest.relative_to(work).as_posix()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- jobs


def submit_sweep(sweep: Path, address: str | None, storage: str, runtime_env_file: Path | None = None,
                 resume: bool = False, *, data_root: str | None = None, mlflow_uri: str | None = None,
                 wandb_project: str | None = None) -> Submission:
    """Validate locally, upload the project (code only: data, results and checkpoints are excluded), start
    ``dia-ray sweep`` on the cluster; returns the job id. ``resume`` continues a sweep that already has results in
    ``storage``. The job id is stable for (sweep file, storage): while that job is pending/running, or once it
    succeeded, submitting again returns it instead of starting a second sweep; after it failed or was stopped, a
    new attempt (``<id>-r2``, …) resumes it."""
    sweep_path = load_sweep_file(sweep)
    storage = check_cluster_storage(storage)
    data_root = check_cluster_storage(data_root, "--data-root") if data_root else None
    overlay = load_runtime_env_file(runtime_env_file)
    base = submission_base(sweep_path, storage)
    with staged_working_dir(sweep_path) as (work, sweep_rel):
        runtime_env = build_runtime_env(work, overlay)  # every local mistake is reported before the network
        client, url = connect(address)
        with _cluster_errors(url, "submitting the sweep"):
            attempts = _existing_attempts(client, base)
            if attempts:
                n, last = attempts[-1]
                if not last.status.is_terminal() or str(last.status) == "SUCCEEDED":
                    return Submission(job_id=last.submission_id, address=url, entrypoint=last.entrypoint,
                                      reused=str(last.status))
                resume = True  # the failed/stopped attempt left results in storage
            job_id = f"{base}-r{attempts[-1][0] + 1}" if attempts else base
            entrypoint = sweep_entrypoint(sweep_rel, storage, resume, data_root=data_root, mlflow_uri=mlflow_uri,
                                          wandb_project=wandb_project)
            metadata = {"dia_ray_sweep": sweep_rel, "dia_ray_storage": storage}
            try:
                job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                                           submission_id=job_id)
            except ValueError as err:  # package too large, invalid runtime_env field
                raise ConfigError(f"cannot package {work} for the cluster: {_one_line(err)}") from None
    log.debug("submitted %s to %s: %s", job_id, url, entrypoint)
    return Submission(job_id=job_id, address=url, entrypoint=entrypoint)


def list_jobs(address: str | None) -> list[JobDetails]:
    """All jobs the cluster knows, oldest first."""
    client, url = connect(address)
    with _cluster_errors(url, "listing jobs"):
        jobs = client.list_jobs()
    return sorted(jobs, key=lambda j: j.start_time or 0)


def job_info(address: str | None, job_id: str) -> JobDetails:
    client, url = connect(address)
    with _cluster_errors(url, f"looking up job {job_id}"):
        return client.get_job_info(job_id)


def stop_job(address: str | None, job_id: str) -> bool:
    """Ask the cluster to stop the job; False when it had already finished."""
    client, url = connect(address)
    with _cluster_errors(url, f"stopping job {job_id}"):
        return client.stop_job(job_id)


def job_logs(address: str | None, job_id: str) -> str:
    client, url = connect(address)
    with _cluster_errors(url, f"reading the logs of job {job_id}"):
        return client.get_job_logs(job_id)


def follow(address: str | None, job_id: str, write: Callable[[str], Any], poll_s: float = 2.0) -> JobStatus:
    """Stream the job's logs to ``write`` until it reaches a terminal status; returns that status.

    Uses the Jobs API's log websocket (``tail_job_logs``); when a proxy or tunnel drops the websocket, continues by
    polling ``get_job_logs`` from where the stream stopped.
    """
    client, url = connect(address)
    written = 0

    def sink(chunk: str) -> None:
        nonlocal written
        write(chunk)
        written += len(chunk)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sink(chunk)

    with _cluster_errors(url, f"following job {job_id}"):
        client.get_job_info(job_id)  # an unknown id fails here with one line, not inside the websocket
        try:
            asyncio.run(tail())
        except Exception as err:  # aiohttp / websocket errors: fall back to polling
            log.debug("log stream of %s ended (%s); polling", job_id, err)
        while True:
            status = client.get_job_status(job_id)
            logs = client.get_job_logs(job_id)
            if len(logs) > written:
                sink(logs[written:])
            if status.is_terminal():
                return status
            time.sleep(poll_s)


def exit_code(status: JobStatus | str) -> int:
    """The shell exit code that mirrors a finished job: 0 SUCCEEDED, 1 FAILED or STOPPED."""
    return 0 if str(status) == "SUCCEEDED" else 1
