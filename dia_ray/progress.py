"""Progress of long work and the format of every console line dia-ray writes.

A :class:`Progress` draws a tqdm bar when stderr is a terminal and otherwise (Ray workers, CI, ``> log``) logs a
plain line every ``every_frac`` of the work or ``every_s`` seconds, and at the end — each with counts, throughput and
ETA. Lines go through :mod:`logging`, so a Ray worker's lines carry its run context (see
:class:`ContextFilter`) and reach the driver through Ray's log forwarding. No Ray import: the pure-torch loops'
hooks, Ray workers and the driver all use it.

>>> bar = Progress("DDPM", total=200, unit="steps")
>>> bar.at(20, images=320, loss=0.12)    # 20 of 200 steps done, 320 images in this call
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dia_ray.errors import ConfigError

log = logging.getLogger("dia_ray.progress")

TIME_FORMAT = "%H:%M:%S"
# Every console line dia-ray's handlers write starts with this (the time of day): how Ray's log forwarding tells
# dia-ray's lines from Ray's own when filtering them (see dia_ray.distributed.runtime.console_env).
LINE_START_REGEX = r"\d\d:\d\d:\d\d "


def duration(seconds: float | None) -> str:
    """42s, 3m05s, 1h02m; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Counts of one piece of work (``total`` units), shown as a bar on a terminal, as log lines otherwise.

    :meth:`at` takes the absolute position, so a resumed run starts at its checkpoint and the rate and ETA count only
    the work this process did (timed from construction or :meth:`begin`). ``images`` passed with each call give an
    images/s rate; without them the rate is in ``unit``/s. Reaching ``total`` ends the pass; :meth:`begin` starts the
    next one (e.g. the next evaluation).

    Plain lines: at every ``every_frac`` of the work and every ``every_s`` seconds, but never twice within ``min_s``
    seconds, and the last line at the end; with ``announce``, also at the first call (the first rate and ETA at once).
    Otherwise a pass that ends within ``min_s`` prints nothing (a 3-second evaluation needs no progress line)."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "it", logger: logging.Logger | None = None,
                 every_s: float = 30.0, every_frac: float = 0.1, min_s: float = 5.0, announce: bool = False,
                 tty: bool | None = None, clock: Callable[[], float] | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.logger = logger or log
        self.every_s, self.every_frac, self.min_s, self.announce = every_s, every_frac, min_s, announce
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.clock = clock or time.monotonic
        self.done = 0
        self._bar: Any = None
        self._t0, self._d0 = self.clock(), None  # when and where this pass started (d0 None: at the first call)
        self._images = 0
        self._last: tuple[float, int] | None = None  # (time, 10%-bucket) of the last plain line of this pass

    def begin(self, done: int = 0, total: int | None = None) -> None:
        """A new pass starts now at ``done``."""
        self._close()
        self._t0, self._d0, self.done, self._images, self._last = self.clock(), done, done, 0, None
        if total is not None:
            self.total = total

    def update(self, n: int = 1, *, images: int = 0, note: str = "", **extra: Any) -> None:
        """``n`` more units done."""
        self.at(self.done + n, images=images, since=self.done, note=note, **extra)

    def at(self, done: int, total: int | None = None, *, images: int = 0, since: int | None = None, note: str = "",
           **extra: Any) -> None:
        """The work is at ``done`` of ``total`` units; ``images`` were processed since the previous call. ``since``:
        the position before this call's work (the first call of a pass starts counting there; default: ``done``)."""
        now = self.clock()
        if total is not None:
            self.total = total
        if self._d0 is None:
            self._d0 = done if since is None else since
        self.done = done
        self._images += images
        finished = bool(self.total) and done >= self.total
        if not self.logger.isEnabledFor(logging.INFO):  # progress switched off (e.g. `bank build --quiet`)
            pass
        elif self.tty and not finished:
            self._draw(note, extra, now)
        elif self._due(now, finished):  # plain lines; on a terminal the bar goes and a pass's last line stays
            self._close()
            self.logger.info(self.line(note, extra, now))
        if finished:
            self._close()
            self._t0, self._d0, self._images, self._last = now, None, 0, None

    def line(self, note: str = "", extra: dict[str, Any] | None = None, now: float | None = None) -> str:
        """'train: 12/60 it (20%), epoch 3/6, 31.2 img/s, ETA 1m32s, loss 5.412'."""
        now = self.clock() if now is None else now
        head = f"{self.label}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        parts = [head + (f" ({100 * self.done / self.total:.0f}%)" if self.total else "")]
        parts += [note] if note else []
        parts.append(self._rate(now))
        if self.total and self.done < self.total:
            parts.append(f"ETA {duration(self.eta(now))}")
        elif self.total:
            parts.append(f"took {duration(now - self._t0)}")
        parts += [f"{k} {_value(v)}" for k, v in (extra or {}).items()]
        return ", ".join(parts)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at this pass's rate (None before any unit is done)."""
        if not self.total or self._d0 is None:
            return None
        elapsed, units = (self.clock() if now is None else now) - self._t0, self.done - self._d0
        return (self.total - self.done) * elapsed / units if units > 0 and elapsed > 0 else None

    def _rate(self, now: float) -> str:
        elapsed = now - self._t0
        if elapsed <= 0:
            return "? img/s" if self._images else f"? {self.unit}/s"
        if self._images:
            return f"{self._images / elapsed:.1f} img/s"
        return f"{(self.done - (self._d0 or 0)) / elapsed:.2f} {self.unit}/s"

    def _due(self, now: float, finished: bool) -> bool:
        bucket = int(self.done / self.total / self.every_frac + 1e-9) if self.total and self.every_frac else 0
        last_t, last_bucket = self._last or (self._t0, 0)
        since = now - last_t
        due = (finished and (self._last is not None or since >= self.min_s)) or since >= self.every_s or (
            bucket > last_bucket and since >= self.min_s) or (self.announce and self._last is None)
        if due:
            self._last = (now, bucket)
        return due

    def _draw(self, note: str, extra: dict[str, Any], now: float) -> None:
        if self._bar is None:
            from tqdm import tqdm

            # the size once, with a fallback: tqdm draws nothing on a terminal that reports 0 x 0 (a fresh pty)
            size = shutil.get_terminal_size()
            self._bar = tqdm(total=self.total, initial=self._d0 or 0, desc=self.label, unit=self.unit,
                             file=sys.stderr, ncols=size.columns, nrows=size.lines, leave=False,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]")
        self._bar.total = self.total
        self._bar.n = self.done
        shown = [note] if note else []
        shown += [self._rate(now)] + ([f"ETA {duration(self.eta(now))}"] if self.total else [])
        self._bar.set_postfix_str(", ".join(shown + [f"{k} {_value(v)}" for k, v in extra.items()]), refresh=False)
        self._bar.refresh()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def watch(count: Callable[[], int], progress: Progress, every_s: float = 2.0) -> Iterator[Progress]:
    """Progress of work seen only from outside (e.g. the files a Ray Data job writes): ``count()`` is polled every
    ``every_s`` seconds in a thread while the block runs, and once more at its end."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            done = count()
            if done > progress.done:
                progress.at(done, images=done - progress.done, since=progress.done)

    thread = threading.Thread(target=poll, name=f"progress-{progress.label}", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
    done = count()
    if done > progress.done:
        progress.at(done, images=done - progress.done, since=progress.done)


def parquet_rows(folder: str | os.PathLike, filesystem: Any = None) -> int:
    """Rows in the Parquet files of ``folder`` so far (on ``filesystem``, a pyarrow filesystem, local by default; a
    file still being written, without its footer, counts 0)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs = filesystem or pafs.LocalFileSystem()
    try:
        infos = fs.get_file_info(pafs.FileSelector(str(folder), allow_not_found=True))
    except OSError:
        return 0
    rows = 0
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        try:
            with fs.open_input_file(info.path) as f:
                rows += pq.read_metadata(f).num_rows
        except (OSError, ValueError):
            pass
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# the line format


class LineFormatter(logging.Formatter):
    """'HH:MM:SS [context] message' for progress, 'HH:MM:SS WARNING [context] message' for problems; ``verbose``
    adds the logger's name (where a line comes from)."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(datefmt=TIME_FORMAT)
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname} " if record.levelno >= logging.WARNING else ""
        name = f"{record.name}: " if self.verbose else ""
        text = f"{self.formatTime(record, self.datefmt)} {level}{getattr(record, 'context', '')}{name}" \
               f"{record.getMessage()}"
        if record.exc_info and self.verbose:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ContextFilter(logging.Filter):
    """Tags every record with the run it belongs to: '[synthetic | dia | seed 0 | trial 3f2a_00001] '. Keys with a
    None value are left out; the dataset and method are shown bare, other keys with their name."""

    BARE = ("dataset", "method")

    def __init__(self, context: dict[str, Any] | None) -> None:
        super().__init__()
        parts = [str(v) if k in self.BARE else f"{k} {v}" for k, v in (context or {}).items() if v is not None]
        self.prefix = f"[{' | '.join(parts)}] " if parts else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = self.prefix
        return True


def run_context(dataset: str, method: str | None = None, seed: int | None = None, trial: str | None = None,
                **more: Any) -> dict[str, Any]:
    """The context of one run's lines (see :class:`ContextFilter`)."""
    return {"dataset": dataset, "method": method, "seed": seed, "trial": trial, **more}


def fit_hooks(epochs: int, enabled: bool = True, **options: Any) -> dict[str, Any]:
    """Keyword arguments for :func:`dia_ray.algo.loops.fit`: per-iteration training progress (iterations, epoch,
    img/s, ETA of the whole run) and per-batch evaluation progress; ``options`` go to both :class:`Progress`.
    ``enabled=False`` (ranks > 0): no hooks."""
    if not enabled:
        return {}
    train = Progress("train", unit="it", announce=True, **options)
    evaluation = Progress("eval", unit="images", **options)

    def on_iter(state: Any, images: int, iters_per_epoch: int) -> None:
        train.at(state.step, epochs * iters_per_epoch, images=images, since=state.step - 1,
                 note=f"epoch {min(state.epoch + 1, epochs)}/{epochs}")

    def on_eval(images: int, total: int) -> None:
        if images == 0:
            evaluation.begin(0, total)
        else:
            evaluation.update(images, images=images)

    return {"on_iter": on_iter, "on_eval": on_eval}


# ---------------------------------------------------------------------------------------------------------------------
# how much is shown


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEVEL_ENV = "DIA_RAY_LOG_LEVEL"


@dataclass(frozen=True)
class Verbosity:
    """How much reaches the console. Default: dia-ray's own lines at INFO (progress), Ray/Tune/Optuna/... at WARNING,
    and Ray's forwarded worker output reduced to dia-ray's lines. ``$DIA_RAY_LOG_LEVEL`` sets every logger to that
    level (INFO or DEBUG also shows Ray's own console output, unfiltered); ``--verbose`` is DEBUG."""

    own: int = logging.INFO
    libraries: int = logging.WARNING

    @property
    def raw(self) -> bool:
        """Libraries below WARNING: Ray's own console output is shown as Ray prints it, with logger names."""
        return self.libraries < logging.WARNING

    @classmethod
    def from_env(cls, verbose: bool = False, env: Mapping[str, str] | None = None) -> "Verbosity":
        name = "DEBUG" if verbose else (os.environ if env is None else env).get(LEVEL_ENV, "").strip().upper()
        if not name:
            return cls()
        if name not in LEVELS:
            raise ConfigError(f"{LEVEL_ENV}={name!r} is not a log level; use one of {', '.join(LEVELS)} (or unset it)")
        level = logging.getLevelName(name)
        return cls(own=level, libraries=level)


# ---------------------------------------------------------------------------------------------------------------------
# lines written straight to file descriptor 2


# Ray's C++ core worker in the driver writes its ERROR lines straight to fd 2 (not through Python, so no logging
# filter or Ray setting reaches them; they also go to the session's python-core-driver-*.log). This one is printed
# for every Ray Data actor pool, since Ray Data always passes its context and transform by object reference
# (ray-project/ray#53727, #57733); it names a limitation of Ray's actor restarts, not a failure of the run.
BENIGN_RAY_STDERR = (
    rb"core_worker\.cc:\d+: Actor with class name: '[^']*MapWorker[^']*' and ID: '[0-9a-f]+' has constructor "
    rb"arguments in the object store and max_restarts > 0",
)


class StderrFilter:
    """Route file descriptor 2 of this process through a pipe and drop the lines matching any of ``drop`` (bytes
    regexes); everything else reaches the real stderr unchanged, in order. Also covers what C/C++ code and child
    processes that inherit fd 2 write. :meth:`stop` forwards everything written before it and restores fd 2.

    >>> f = StderrFilter(BENIGN_RAY_STDERR); f.start()
    >>> ...  # run the command
    >>> f.stop()
    """

    _FLUSHED = b"\x00dia-ray: stderr flushed\x00\n"

    def __init__(self, drop: tuple[bytes, ...] = BENIGN_RAY_STDERR):
        import re

        self._drop = [re.compile(p) for p in drop]
        self._saved: int | None = None  # the real stderr, put back on fd 2 by stop()
        self._out: int | None = None  # the real stderr, where the pump writes (open until the process exits)
        self._flushed = threading.Event()

    def start(self) -> StderrFilter:
        sys.stderr.flush()
        read, write = os.pipe()
        self._saved, self._out = os.dup(2), os.dup(2)
        os.dup2(write, 2)
        os.close(write)
        threading.Thread(target=self._pump, args=(read,), name="dia-ray-stderr", daemon=True).start()
        return self

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self._out, data):]
        except OSError:  # the real stderr is gone (closed pipe): keep draining, so writers never block
            pass

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line + b"\n" == self._FLUSHED:
                        self._flushed.set()
                    elif not any(p.search(line) for p in self._drop):
                        self._write(line + b"\n")
            if pending:
                self._write(pending)
        self._flushed.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Forward what was written so far (a marker line goes through the pipe; the pump has seen everything before
        it when it arrives) and give fd 2 back. Child processes still holding the pipe keep being filtered."""
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
            os.write(2, self._FLUSHED)
            self._flushed.wait(timeout)
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
