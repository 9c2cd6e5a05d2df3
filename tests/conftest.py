"""Shared fixtures. One local Ray cluster per test session (started lazily by the tests that need it)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # only for the loopback clusters the tests start themselves
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

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
            include_dashboard=False,
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
