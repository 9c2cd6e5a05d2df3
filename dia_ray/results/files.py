"""Every filesystem access of :mod:`dia_ray.results`, in one place: list the ``*.jsonl`` files under a storage
root, read one file, write a set of output files. Everything else renders to strings and bytes, so moving storage
to another filesystem (e.g. object stores) means changing only these functions.

Paths are plain strings ("/mnt/shared/dia/results/x.jsonl"); links between them are computed with
:mod:`posixpath`, never by touching the filesystem.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path

from dia_ray.errors import StorageError

HINT = "pass the --storage directory of a sweep or demo"


def check_root(root: str | os.PathLike) -> str:
    """``root`` as an absolute path string; :class:`StorageError` when it is missing or not a directory."""
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise StorageError(f"storage root {root} does not exist ({HINT})")
    if not path.is_dir():
        raise StorageError(f"storage root {root} is not a directory ({HINT})")
    return str(path)


def list_jsonl(root: str) -> list[str]:
    """Every ``*.jsonl`` file below ``root``, recursively, in path order."""
    # os.walk does not follow directory symlinks, so a link loop inside a storage root cannot hang the collector.
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(os.path.join(dirpath, name) for name in sorted(filenames) if name.endswith(".jsonl"))
    return found


def read_bytes(path: str) -> bytes:
    """The content of one file (raises ``OSError``)."""
    with open(path, "rb") as fh:
        return fh.read()


def write_files(out_dir: str | os.PathLike, files: dict[str, str | bytes]) -> list[str]:
    """Write ``{file name: content}`` into ``out_dir``, each atomically (a temp file in the same folder, then a
    rename: readers never see half a file). Returns the written paths in the order given."""
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the output directory {out_dir}: {err.strerror or err}") from err
    written = []
    for name, data in files.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
            os.replace(tmp, out / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(str(out / name))
    return written


def relative_link(target: str, from_dir: str, root: str) -> str:
    """A link from a page in ``from_dir`` to ``target``: relative when both lie under the storage ``root`` (the
    report moves with its storage), else ``target`` itself."""
    target, from_dir, root = (posixpath.normpath(p) for p in (target, from_dir, root))
    if all(p == root or p.startswith(root.rstrip("/") + "/") for p in (target, from_dir)):
        return posixpath.relpath(target, from_dir)
    return target
