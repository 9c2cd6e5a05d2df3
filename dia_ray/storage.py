"""The storage root (``--storage``): the one place that reads or writes storage.

A root is a local/shared directory or any URI ``pyarrow.fs`` understands (``s3://bucket/prefix``, ``gs://…``,
``hdfs://…``, ``file:///…``). Every command goes through :class:`Storage`, so a local folder and an object store take
the same code path, and a URI is never turned into a local path (``s3://b/x`` stays ``s3://b/x`` — it does not
become a folder named ``s3:/b/x``). S3-compatible endpoints are configured the standard way, through the ``AWS_*``
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …) of the processes that touch storage (on a cluster: set
them, or an instance role, on every node — never in a sweep file or runtime env).

Layout under the root: ``ddpm/<key>/`` (the Ray Train run and the published ``model/`` in ``save_pretrained``
layout), ``banks/<key>/`` (Parquet + ``manifest.json``), ``runs/`` (Ray Train runs of ``dia-ray train``),
``sweeps/<name>/<dataset>/`` (Tune experiments, their runs and result records), ``results/**.jsonl`` (records of
single runs), ``leaderboard/``.

Commit rules (a reader never trusts a half-written artifact): a single file is written whole (local: temp + rename;
object stores: one PUT, which is atomic); a directory artifact is written file by file with its *commit file*
(``manifest.json`` of a bank, ``dia_ray_ddpm.json`` of a DDPM) written last, and readers look for the commit file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from dia_ray.errors import StorageError

log = logging.getLogger(__name__)

CACHE_ENV = "DIA_RAY_CACHE"  # node-local cache of artifacts downloaded from an object store


def is_uri(location: str | os.PathLike) -> bool:
    """``scheme://…`` (other than a Windows drive). ``file://`` counts as a URI too (pyarrow maps it to local)."""
    text = str(location)
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isascii() and head.replace("+", "").replace("-", "").isalnum() and len(head) > 1


def _one_line(err: BaseException) -> str:
    """The useful part of a filesystem error: object-store SDK messages are long and repeat themselves."""
    text = " ".join(str(err).split())
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return "the bucket does not exist; create it first (e.g. `aws s3 mb s3://BUCKET`)"
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "Couldn't connect" in text:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the provider's default endpoint"
        return (f"cannot reach the object store at {endpoint} (AWS_ENDPOINT_URL); is the endpoint up and reachable "
                "from this machine?")
    if "ACCESS_DENIED" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return "access denied; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the node's role)"
    return text[:300]


class Storage:
    """A storage root. ``Storage("s3://bucket/run")``, ``Storage("/mnt/shared/dia")``, ``Storage("~/dia")``.

    Paths below the root are given as parts (``st.read_text("results", "x.jsonl")``) and are always ``/``-joined.
    Construction never touches the network for local roots; for a URI it resolves the filesystem (S3 asks for the
    bucket's region), so a malformed URI or an unreachable endpoint is one :class:`StorageError` line here."""

    def __init__(self, location: str | os.PathLike):
        import pyarrow.fs as pafs

        text = str(location).strip()
        if not text:
            raise StorageError("storage location is empty; pass a directory or a URI such as s3://bucket/prefix")
        if not is_uri(text) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text):
            raise StorageError(f"storage '{text}' looks like a URI but cannot open it (write scheme://bucket/prefix, "
                               "e.g. s3://bucket/run; a local folder whose name has a ':' needs a ./ in front)")
        if is_uri(text):
            scheme = text.split("://", 1)[0].lower()
            try:
                fs, path = pafs.FileSystem.from_uri(text)
            except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/… for bad URIs
                raise StorageError(f"storage '{text}': cannot open it ({_one_line(err)}); check the URI and, for "
                                   "S3-compatible stores, AWS_ENDPOINT_URL and the AWS_* credentials") from None
            self.local = isinstance(fs, pafs.LocalFileSystem)
            if self.local:
                path = str(Path(path).expanduser().resolve())
                self.uri = path
            else:
                path = path.rstrip("/")
                if not path:
                    raise StorageError(f"storage '{text}': the URI names no bucket/container")
                self.uri = f"{scheme}://{path}"
        else:
            fs = pafs.LocalFileSystem()
            path = str(Path(text).expanduser().resolve())
            self.local = True
            self.uri = path
        self.fs = fs
        self.base = path

    # -- names -------------------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self):  # pickles as its location (filesystems are rebuilt, credentials come from the node)
        return (Storage, (self.uri,))

    @staticmethod
    def _rel(parts: tuple[str, ...]) -> str:
        rel = "/".join(str(p).strip("/") for p in parts if str(p).strip("/"))
        if ".." in PurePosixPath(rel).parts:
            raise StorageError(f"storage path '{rel}' must not contain '..'")
        return rel

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` (for ``self.fs``)."""
        rel = self._rel(parts)
        return f"{self.base}/{rel}" if rel else self.base

    def join(self, *parts: str) -> str:
        """The location of ``parts`` as the user would write it: a local path or a URI (what Ray's
        ``storage_path`` and the CLI take)."""
        rel = self._rel(parts)
        return f"{self.uri}/{rel}" if rel else self.uri

    def child(self, *parts: str) -> "Storage":
        return Storage(self.join(*parts))

    def local_path(self, *parts: str) -> Path:
        """The local path of ``parts``; only for local roots (object stores have none)."""
        if not self.local:
            raise StorageError(f"{self.join(*parts)} is in an object store; it has no local path")
        return Path(self.path(*parts))

    # -- queries -----------------------------------------------------------------------------------------------------

    def _info(self, *parts: str):
        try:
            return self.fs.get_file_info(self.path(*parts))
        except OSError as err:
            raise StorageError(f"storage {self.join(*parts)}: {_one_line(err)}") from None

    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(*parts).type != pafs.FileType.NotFound

    def is_file(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(*parts).type == pafs.FileType.File

    def is_dir(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(*parts).type == pafs.FileType.Directory

    def size(self, *parts: str) -> int:
        return int(self._info(*parts).size or 0)

    def list(self, *parts: str, suffix: str = "", recursive: bool = True) -> list[str]:
        """Files under ``parts`` (relative to it, ``/``-separated, sorted), optionally ending in ``suffix``.
        Missing folder → empty list."""
        import pyarrow.fs as pafs

        base = self.path(*parts)
        if self.local:  # os.walk does not follow directory symlinks: a link loop cannot hang a listing
            found = []
            for dirpath, dirnames, filenames in os.walk(base):
                rel = os.path.relpath(dirpath, base)
                found += [name if rel == "." else f"{rel}/{name}" for name in filenames if name.endswith(suffix)]
                if not recursive:
                    break
            return sorted(p.replace(os.sep, "/") for p in found)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
        except OSError as err:
            raise StorageError(f"storage {self.join(*parts)}: cannot list it ({_one_line(err)})") from None
        prefix = base.rstrip("/") + "/"
        return sorted(i.path[len(prefix):] for i in infos
                      if i.type == pafs.FileType.File and i.path.startswith(prefix) and i.path.endswith(suffix))

    def subdirs(self, *parts: str) -> list[str]:
        import pyarrow.fs as pafs

        base = self.path(*parts)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
        except OSError as err:
            raise StorageError(f"storage {self.join(*parts)}: cannot list it ({_one_line(err)})") from None
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    # -- reading -----------------------------------------------------------------------------------------------------

    def read_bytes(self, *parts: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(*parts)) as fh:
                return fh.read()
        except FileNotFoundError:
            raise StorageError(f"{self.join(*parts)} not found") from None
        except OSError as err:
            raise StorageError(f"cannot read {self.join(*parts)} ({_one_line(err)})") from None

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def read_json(self, *parts: str) -> Any:
        text = self.read_text(*parts)
        try:
            return json.loads(text)
        except ValueError as err:
            raise StorageError(f"{self.join(*parts)} is not valid JSON ({err})") from None

    # -- writing -----------------------------------------------------------------------------------------------------

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write one file whole: a reader sees the old file or the new one, never a part (local: a temp file in the
        same folder, fsync, rename; object stores: one PUT). Returns its location."""
        target = self.path(*parts)
        try:
            if self.local:
                dest = Path(target)
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.chmod(tmp, 0o644)  # mkstemp makes 0600; storage is shared with the team
                    os.replace(tmp, dest)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            else:
                with self.fs.open_output_stream(target) as fh:
                    fh.write(data)
        except OSError as err:
            raise StorageError(f"cannot write {self.join(*parts)} ({_one_line(err)})") from None
        return self.join(*parts)

    def write_text(self, text: str, *parts: str) -> str:
        return self.write_bytes(text.encode("utf-8"), *parts)

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_text(json.dumps(obj, indent=2, default=str), *parts)

    def delete(self, *parts: str) -> None:
        """Delete a file or a folder tree; missing is fine."""
        import pyarrow.fs as pafs

        info = self._info(*parts)
        try:
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(self.path(*parts))
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(self.path(*parts))
        except OSError as err:
            raise StorageError(f"cannot delete {self.join(*parts)} ({_one_line(err)})") from None

    def upload_dir(self, local_dir: str | os.PathLike, *parts: str, commit: str | None = None) -> str:
        """Copy the local folder ``local_dir`` to ``parts`` (replacing what was there). ``commit`` (a file name in
        ``local_dir``) is written last: readers that check for it never see a partial copy. Local roots get the
        copy in a staging folder beside the target and one rename."""
        src = Path(local_dir)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        if commit is not None and not (src / commit).is_file():
            raise StorageError(f"{src}: commit file {commit} is missing")
        try:
            if self.local:
                dest = Path(self.path(*parts))
                dest.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
                try:
                    shutil.copytree(src, staging, dirs_exist_ok=True)
                    if dest.exists():
                        shutil.rmtree(dest)
                    os.replace(staging, dest)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            else:
                self.delete(*parts)
                ordered = [p for p in files if commit is None or p != src / commit]
                if commit is not None:
                    ordered.append(src / commit)
                for p in ordered:
                    self.write_bytes(p.read_bytes(), *parts, p.relative_to(src).as_posix())
        except OSError as err:
            raise StorageError(f"cannot write {self.join(*parts)} ({_one_line(err)})") from None
        return self.join(*parts)

    def download_dir(self, *parts: str, dest: str | os.PathLike) -> Path:
        """Copy the folder ``parts`` to the local folder ``dest`` (created)."""
        out = Path(dest)
        names = self.list(*parts)
        if not names:
            raise StorageError(f"{self.join(*parts)} is empty or missing")
        for name in names:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(*parts, name))
        return out

    def local_dir(self, *parts: str, commit: str | None = None) -> Path:
        """A local folder holding the folder ``parts``: itself for local roots, else a node-local cached copy
        (``$DIA_RAY_CACHE`` or ``~/.cache/dia-ray/storage``) keyed by the location and the commit file's size and
        mtime, so a re-published artifact is downloaded again and an unchanged one once per node."""
        if self.local:
            return self.local_path(*parts)
        stamp = ""
        if commit is not None:
            info = self._info(*parts, commit)
            stamp = f"{info.size}:{info.mtime_ns}"
        digest = hashlib.sha256(f"{self.join(*parts)}\0{stamp}".encode()).hexdigest()[:20]
        cache = Path(os.environ.get(CACHE_ENV) or "~/.cache/dia-ray/storage").expanduser()
        final = cache / f"{PurePosixPath(self._rel(parts)).name}-{digest}"
        if (final / ".complete").is_file():
            return final
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache))
        try:
            self.download_dir(*parts, dest=tmp)
            (tmp / ".complete").write_text("ok")
            try:
                os.replace(tmp, final)
            except OSError:  # another process on this node finished first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def ensure_writable(self) -> "Storage":
        """Prove the root can be written, one clear line if not. A local root is checked without creating anything
        (commands validate every input first; the stages create their folders when they write); an object store
        gets a probe object written and removed (it has no folders to leave behind)."""
        if self.local:
            from dia_ray.paths import writable_dir

            writable_dir(self.base, "storage")
            return self
        name = f".write-test-{uuid.uuid4().hex}"
        try:
            self.write_bytes(b"ok", name)
            self.delete(name)
        except StorageError as err:
            raise StorageError(f"storage '{self.uri}' is not writable: {err}") from None
        except OSError as err:
            raise StorageError(f"storage '{self.uri}' is not writable: {err.strerror or err}") from None
        return self


def open_storage(location: str | os.PathLike | Storage, *, writable: bool = False) -> Storage:
    """A :class:`Storage` for ``location`` (unchanged when it already is one); ``writable`` proves it."""
    st = location if isinstance(location, Storage) else Storage(location)
    return st.ensure_writable() if writable else st
