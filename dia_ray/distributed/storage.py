"""The storage root (``--storage``): a local/shared directory or a ``s3://`` / ``gs://`` URI (pyarrow filesystems).

Layout: ``ROOT/ddpm/<key>/``, ``ROOT/banks/<key>/``, ``ROOT/runs/`` (Ray Train runs), ``ROOT/sweeps/<name>/<dataset>/``
(Tune experiments), ``ROOT/results/**.jsonl`` (result records).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from dia_ray.errors import StorageError

URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://")


def is_uri(path: str | os.PathLike) -> bool:
    return str(path).startswith(URI_SCHEMES)


def ensure_writable(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove a file can be written and removed there (one clear line if not)."""
    if is_uri(path):
        raise StorageError(f"storage '{path}': object-store URIs are accepted by sweeps on a cluster; commands that "
                           "run locally need a directory path")
    p = Path(path).expanduser().resolve()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"storage '{path}' is not writable: {err.strerror or err}") from None
    return p


def atomic_publish(src_dir: Path, dest: Path) -> Path:
    """Move a finished directory into place with one rename (a reader never sees a half-written artifact)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(src_dir, dest)
    return dest


def staging_dir(dest: Path) -> Path:
    """A temp directory beside ``dest`` (same filesystem, so :func:`atomic_publish` is a rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
