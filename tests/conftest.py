"""Shared fixtures. One local Ray cluster per test session (started lazily by the tests that need it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # only for the loopback clusters the tests start themselves
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3-compatible test server (moto, started on demand by the `s3` fixture) is configured the standard way, through
# the AWS_* environment, before any Ray process of the session starts (Ray workers inherit the environment).
S3_PORT = _free_port()
for _name, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                      "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
                      "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ[_name] = _value

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIA_RAY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data files in ../shared/data (BreastMNIST). Skips with the reason when absent."""
    if not (SHARED_DATA / "breastmnist.npz").is_file():
        pytest.skip(f"real data not found: {SHARED_DATA}/breastmnist.npz (set DIA_RAY_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every integration test of the session (2 CPUs, small object store)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            # The dashboard serves the State API that Ray Train's PlacementGroupCleaner queries: without it, the
            # placement group of a Train run whose trial was stopped (ASHA) or killed is never released.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            object_store_memory=2 * 1024**3,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}},
        )
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding both generated synthetic datasets (npz and folders), made once per session."""
    from dia_ray.data import prepare

    root = tmp_path_factory.mktemp("data")
    prepare("synthetic", root, seed=0)
    prepare("synthetic-folder", root, seed=0)
    return root


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server on loopback (moto in server mode), for the whole session. Skips when moto is absent."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.is_file():
        pytest.skip("moto_server not installed (pip install 'moto[server]'; it is in the dev extra)")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(S3_PORT)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", S3_PORT), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on port {S3_PORT}")
            time.sleep(0.1)
    yield os.environ["AWS_ENDPOINT_URL"]
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the loopback S3 server; returns ``s3://<bucket>``."""
    import boto3

    name = f"dia-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A directory in which nobody can create anything — root included: mode 0500 for a normal user; for root (who
    ignores permission bits) the immutable attribute (`chattr +i`, ext2/3/4, xfs, btrfs), removed afterwards."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
        yield locked
        locked.chmod(0o700)
        return
    done = subprocess.run(["chattr", "+i", str(locked)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and `chattr +i` is refused here ({done.stderr.strip()}): no way to make a "
                    "directory unwritable for this test")
    try:
        yield locked
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


@pytest.fixture
def free_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
