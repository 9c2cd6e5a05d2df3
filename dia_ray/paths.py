"""Checks on the paths a user gives, before anything is read or created: one error line that says what the path
really is (missing, a file where a folder is expected, a folder where a file is, under a file, not writable)."""

from __future__ import annotations

import os
from pathlib import Path

from dia_ray.errors import DiaRayError, StorageError


def existing_file(path: str | os.PathLike, what: str, error: type[DiaRayError] = DiaRayError) -> Path:
    """``path`` must be a readable file (``what`` names it in the message, e.g. "sweep file")."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise error(f"{what} {p} is a directory; give the file itself")
    if not p.exists():
        raise error(f"{what} {p} not found{_missing_part(p)}")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {p} is not readable (permissions)")
    return p


def existing_dir(path: str | os.PathLike, what: str, error: type[DiaRayError] = DiaRayError) -> Path:
    """``path`` must be an existing directory."""
    p = Path(path).expanduser()
    if p.is_file():
        raise error(f"{what} {p} is a file; give the directory")
    if not p.is_dir():
        raise error(f"{what} {p} not found{_missing_part(p)}")
    return p


def writable_dir(path: str | os.PathLike, what: str, error: type[DiaRayError] = StorageError) -> Path:
    """``path`` is a directory that exists or can be created, and is writable — checked without creating anything
    (commands validate every input first and create their folders only then). Returns the absolute path."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise error(f"{what} {p} is a file; give a directory (it is created when missing)")
    base = p
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise error(f"{what} {p} cannot be created: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        where = "" if base == p else f" ({base} is where it would be created)"
        raise error(f"{what} {p} is not writable{where}: pick a folder you can write to")
    return p


def file_above(p: Path) -> Path | None:
    """The file a missing path ``p`` would have to be created under (``/a/f`` for ``/a/f/x/y``), or None."""
    base = Path(p).expanduser().absolute().parent
    while not base.exists():
        base = base.parent
    return base if base.is_file() else None


def _missing_part(p: Path) -> str:
    """' (/a/f is a file)' or ' (nothing exists below /a)': how far up the path goes wrong."""
    blocker = file_above(p)
    if blocker is not None:
        return f" ({blocker} is a file)"
    base = p.absolute().parent
    while not base.exists():
        base = base.parent
    return "" if base == p.absolute().parent else f" (nothing exists below {base})"
