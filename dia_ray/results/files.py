"""Every storage access of :mod:`dia_ray.results`, in one place: list the ``*.jsonl`` files under a storage root,
read one file, write a set of output files — through :class:`dia_ray.storage.Storage`, so a local folder and an
object-store URI (``s3://bucket/run``) take the same path. Everything else renders to strings and bytes.

Locations are plain strings ("/mnt/shared/dia/results/x.jsonl", "s3://b/run/results/x.jsonl"); links between them
are computed with :mod:`posixpath`, never by touching the storage.
"""

from __future__ import annotations

import os
import posixpath

from dia_ray.errors import StorageError
from dia_ray.storage import Storage

HINT = "pass the --storage of a sweep or demo"


def check_root(root: str | os.PathLike | Storage) -> str:
    """``root`` as its canonical location (absolute path or URI); :class:`StorageError` when it is missing or not a
    folder."""
    st = root if isinstance(root, Storage) else Storage(root)
    if not st.exists():
        raise StorageError(f"storage root {root} does not exist ({HINT})")
    if st.is_file():
        raise StorageError(f"storage root {root} is not a directory ({HINT})")
    return st.uri


def list_jsonl(root: str) -> list[str]:
    """Every ``*.jsonl`` file below ``root``, recursively, in path order (locations)."""
    st = Storage(root)
    return [st.join(name) for name in st.list(suffix=".jsonl")]


def read_bytes(location: str) -> bytes:
    """The content of one file (raises ``OSError``, as a local read would)."""
    parent, _, name = location.rpartition("/")
    try:
        return Storage(parent or ".").read_bytes(name)
    except StorageError as err:
        raise OSError(str(err)) from None


def write_files(out_dir: str | os.PathLike, files: dict[str, str | bytes]) -> list[str]:
    """Write ``{file name: content}`` into ``out_dir`` (a folder or a URI), each whole (local: temp file + rename;
    object stores: one PUT — readers never see half a file). Returns the written locations in the order given."""
    try:
        out = Storage(out_dir)
        if out.local:
            os.makedirs(out.uri, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the output directory {out_dir}: {err.strerror or err}") from err
    return [out.write_bytes(data.encode("utf-8") if isinstance(data, str) else data, name)
            for name, data in files.items()]


def relative_link(target: str, from_dir: str, root: str) -> str:
    """A link from a page in ``from_dir`` to ``target``: relative when both lie under the storage ``root`` (the
    report moves with its storage), else ``target`` itself."""
    target, from_dir, root = (posixpath.normpath(p) for p in (target, from_dir, root))
    if all(p == root or p.startswith(root.rstrip("/") + "/") for p in (target, from_dir)):
        return posixpath.relpath(target, from_dir)
    return target
