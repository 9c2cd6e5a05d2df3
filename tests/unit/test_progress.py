"""Progress lines, the console line format, what Ray's log forwarding lets through, and how a lost Ray worker is
reported — each checked against hand-computed numbers or against the installed Ray's own code paths."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap

import pytest

from dia_ray.errors import ConfigError, DataError, NodeLostError
from dia_ray.progress import (LINE_START_REGEX, ContextFilter, LineFormatter, Progress, Verbosity, duration,
                              fit_hooks, parquet_rows, run_context, watch)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="dia_ray.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "dia_ray.progress"]


def test_plain_lines_every_tenth_with_rate_and_eta(lines):
    clock = Clock()
    bar = Progress("train", 100, unit="it", tty=False, clock=clock)
    for i in range(1, 101):
        clock.t += 2.0  # 2 s per iteration of 16 images
        bar.at(i, images=16, since=i - 1, note=f"epoch {(i - 1) // 25 + 1}/4")
    got = lines()
    assert len(got) == 10  # 10 %, 20 %, ..., 100 %
    assert got[0] == "train: 10/100 it (10%), epoch 1/4, 8.0 img/s, ETA 3m00s"
    assert got[4] == "train: 50/100 it (50%), epoch 2/4, 8.0 img/s, ETA 1m40s"
    assert got[-1] == "train: 100/100 it (100%), epoch 4/4, 8.0 img/s, took 3m20s"


def test_slow_work_gets_a_line_every_30_s_and_fast_passes_none(lines):
    clock = Clock()
    bar = Progress("DDPM", 1000, unit="steps", tty=False, clock=clock)
    for i in range(1, 41):  # 4 % of the work in 120 s: no 10 % boundary, a time line every 30 s
        clock.t += 3.0
        bar.at(i, images=8, since=i - 1, loss=0.25)
    assert [re.match(r"DDPM: (\d+)/1000", ln).group(1) for ln in lines()] == ["10", "20", "30", "40"]
    assert lines()[0].endswith("ETA 49m30s, loss 0.25")
    evaluation = Progress("eval", unit="images", tty=False, clock=clock)
    evaluation.begin(0, 300)
    for _ in range(3):  # 3 s in all: under min_s, no line at all
        clock.t += 1.0
        evaluation.update(100, images=100)
    assert len(lines()) == 4


def test_a_resumed_run_counts_only_its_own_work(lines):
    clock = Clock()
    bar = Progress("train", 100, tty=False, clock=clock)
    clock.t += 10.0
    bar.at(61, images=32, since=60)  # resumed at 60: the first iteration took 10 s
    for i in range(62, 71):
        clock.t += 10.0
        bar.at(i, images=32, since=i - 1)
    assert bar.eta() == pytest.approx(30 * 10.0)  # 30 iterations left at 10 s each, not 60 done in 100 s
    assert lines()[-1] == "train: 70/100 it (70%), 3.2 img/s, ETA 5m00s"


def test_the_next_pass_starts_fresh():
    clock = Clock()
    bar = Progress("eval", unit="images", tty=False, clock=clock)
    bar.begin(0, 10)
    clock.t += 50
    bar.update(10, images=10)
    clock.t += 1000  # training in between
    bar.begin(0, 10)
    clock.t += 2
    bar.update(5, images=5)
    assert bar.eta() == pytest.approx(2.0) and bar.line().startswith("eval: 5/10 images (50%), 2.5 img/s")


def test_progress_is_off_when_its_logger_is(caplog):
    logging.getLogger("dia_ray.progress").setLevel(logging.WARNING)
    try:
        bar = Progress("bank", 10, tty=True)  # not even a tqdm bar
        bar.at(10)
        assert bar._bar is None and not caplog.records
    finally:
        logging.getLogger("dia_ray.progress").setLevel(logging.NOTSET)


def test_watch_polls_a_counter_until_the_block_ends(lines):
    seen = iter([0, 3, 7, 10])
    bar = Progress("bank", 10, unit="images", tty=False, min_s=0.0)
    with watch(lambda: next(seen), bar, every_s=0.01):
        while bar.done < 7:
            pass
    assert bar.done == 10 and lines()[-1].startswith("bank: 10/10 images (100%)")
    assert "ETA ?" not in "".join(lines())  # the first poll already has work done since the start


def test_parquet_rows_skip_a_file_being_written(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": list(range(7))}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": list(range(5))}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 half a file")
    assert parquet_rows(tmp_path) == 12


def test_fit_hooks_show_iterations_of_the_whole_run_and_each_evaluation(lines):
    class State:
        step, epoch = 0, 0

    clock = Clock()
    hooks = fit_hooks(epochs=2, tty=False, clock=clock)
    state = State()
    for epoch in range(2):
        state.epoch = epoch
        for _ in range(5):
            clock.t += 4.0
            state.step += 1
            hooks["on_iter"](state, 32, 5)
        hooks["on_eval"](0, 600)
        for _ in range(6):
            clock.t += 2.0
            hooks["on_eval"](100, 600)
    train = [ln for ln in lines() if ln.startswith("train")]
    assert train[:2] == ["train: 1/10 it (10%), epoch 1/2, 8.0 img/s, ETA 36s",  # announced at once
                         "train: 3/10 it (30%), epoch 1/2, 8.0 img/s, ETA 28s"]  # 2/10 came within min_s
    assert train[-1] == "train: 10/10 it (100%), epoch 2/2, 6.2 img/s, took 52s"  # 320 images in 52 s, 1 eval in
    evals = [ln for ln in lines() if ln.startswith("eval")]
    assert evals == ["eval: 300/600 images (50%), 50.0 img/s, ETA 6s",
                     "eval: 600/600 images (100%), 50.0 img/s, took 12s"] * 2  # each pass timed on its own
    assert fit_hooks(epochs=2, enabled=False) == {}


def test_durations():
    got = [duration(s) for s in (0.4, 42, 185, 3720, None, float("inf"))]
    assert got == ["0s", "42s", "3m05s", "1h02m", "?", "?"]


def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("dia_ray.algo.loops", level, __file__, 1, msg, None, None)


def test_a_run_context_tags_every_line():
    rec = record("epoch 3: loss 5.1")
    ContextFilter(run_context("synthetic", "dia", 1, "3f2a_00002")).filter(rec)
    line = LineFormatter().format(rec)
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[synthetic \| dia \| seed 1 \| trial 3f2a_00002\] epoch 3: loss 5.1", line)
    warn = record("disk full", logging.WARNING)
    ContextFilter(run_context("kvasir", "DDPM r64")).filter(warn)
    assert LineFormatter(verbose=True).format(warn).endswith(" WARNING [kvasir | DDPM r64] dia_ray.algo.loops: "
                                                             "disk full")
    assert re.match(LINE_START_REGEX, line) and not re.match(LINE_START_REGEX, "[2026-12-06 07:44:20,871 E 8015]")


def test_verbosity_from_the_environment():
    assert Verbosity.from_env(env={}) == Verbosity(logging.INFO, logging.WARNING)
    assert not Verbosity.from_env(env={}).raw
    assert Verbosity.from_env(env={"DIA_RAY_LOG_LEVEL": "info"}) == Verbosity(logging.INFO, logging.INFO)
    assert Verbosity.from_env(verbose=True, env={"DIA_RAY_LOG_LEVEL": "ERROR"}).raw
    with pytest.raises(ConfigError, match="DIA_RAY_LOG_LEVEL='LOUD' is not a log level"):
        Verbosity.from_env(env={"DIA_RAY_LOG_LEVEL": "loud"})


RAY_LINES = [  # what the demo printed before (Ray 2.60), as the driver receives them from the workers
    "[2026-12-06 07:44:20,871 E 8015 8092] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: "
    "'9c6c' has constructor arguments in the object store and max_restarts > 0.",
    "WARNING: 8 PYTHON worker processes have been started on node: abc with address: 127.0.0.1. This could be a "
    "result of using a large number of actors, or due to tasks blocked in ray.get() calls.",
    "2026-12-06 07:44:21,002\tINFO trainable.py:161 -- Trainable.setup took 12.013 seconds.",
    "\x1b[36m╭──────────────────────────────────────────╮\x1b[0m",
    "View detailed results here: /tmp/ray/session_latest/artifacts/tune",
]


def test_ray_forwards_dia_rays_lines_and_drops_its_own_by_default(monkeypatch):
    """The environment console_env sets, fed to the installed Ray's own log deduplicator: every Ray line above is
    dropped, every dia-ray line passes (even identical ones from several workers: never merged)."""
    from ray._private import ray_logging
    from ray._private.ray_logging import LogDeduplicator

    monkeypatch.setattr(ray_logging, "RAY_DEDUP_LOGS", True)  # what RAY_DEDUP_LOGS=1 (console_env) gives at import
    from dia_ray.distributed.runtime import console_env

    env = console_env(Verbosity(), tty=False)
    assert env["RAY_COLOR_PREFIX"] == "0" and env["RAY_DISABLE_WORKER_LOG_PREFIX"] == "1"
    dedup = LogDeduplicator(5, env["RAY_DEDUP_LOGS_ALLOW_REGEX"], env["RAY_DEDUP_LOGS_SKIP_REGEX"])
    ours = "07:44:33 [synthetic | dia | seed 0] train: 2/4 it (50%), epoch 1/2, 3.0 img/s, ETA 5s"
    out = []
    for pid in (1, 2):
        for batch in dedup.deduplicate({"ip": "127.0.0.1", "pid": pid, "lines": [*RAY_LINES, ours]}):
            out += batch["lines"]
    assert out == [ours, ours]
    assert console_env(Verbosity(logging.INFO, logging.INFO), tty=True) == {}  # DIA_RAY_LOG_LEVEL=INFO: Ray as is


def test_a_lost_worker_is_reported_as_such_and_a_workers_own_error_as_itself():
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from dia_ray.distributed.runtime import explain_failure

    died = WorkerGroupError("x", {0: WorkerHealthCheckFailedError("health check failed", ActorDiedError())})
    lost = explain_failure(died)
    assert isinstance(lost, NodeLostError) and "(Train worker 0: ActorDiedError)" in str(lost)
    assert "run the same command to resume" in str(lost)
    assert "with --resume" in str(explain_failure(ControllerError(ActorDiedError()), command="sweep"))
    user = DataError("/data/x.npz: not a readable .npz file")
    assert explain_failure(WorkerGroupError("x", {0: died.worker_failures[0], 1: user})) is user
    assert explain_failure(WorkerGroupError("x", {0: ValueError("a bug")})) is None  # bugs keep their traceback
    wrapped = RayTaskError("run_study", "Traceback ...", user)
    assert explain_failure(wrapped) is user or str(explain_failure(wrapped)) == str(user)


def test_on_a_terminal_a_bar_then_the_last_line_stays(capsys, lines):
    clock = Clock()
    bar = Progress("DDPM", 10, unit="steps", tty=True, clock=clock)
    for i in range(1, 11):
        clock.t += 1.0
        bar.at(i, images=4, since=i - 1, loss=0.5)
    drawn = capsys.readouterr().err
    assert "DDPM:  50%" in drawn and "5/10 steps" in drawn and "4.0 img/s, ETA 5s, loss 0.5" in drawn
    assert lines() == ["DDPM: 10/10 steps (100%), 4.0 img/s, took 10s, loss 0.5"]


BENIGN_LINE = ("[2026-12-06 14:52:18,101 E 8015 8092] core_worker.cc:2465: Actor with class name: "
               "'MapWorker(MapBatches(DissolveActor))' and ID: '46a1f0e27c1b' has constructor arguments in the "
               "object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, "
               "the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.")


def test_stderr_filter_drops_only_the_benign_ray_line_from_fd_2_and_keeps_order():
    """What reaches the real stderr of a process that filters its fd 2 (as `dia-ray` does): the Ray line written by
    C-level code is gone; Python's and a child process's lines, an unterminated one, and the same message about a
    non-Ray-Data actor, all pass in order; after stop() fd 2 is the real stderr again."""
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        from dia_ray.progress import StderrFilter
        f = StderrFilter().start()
        os.write(2, b"one\\n" + {BENIGN_LINE.encode()!r} + b"\\ntwo\\n")
        print("three", file=sys.stderr)
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('four\\\\n')"], check=True)
        os.write(2, {BENIGN_LINE.replace("MapWorker(MapBatches(DissolveActor))", "Trainer").encode()!r} + b"\\n")
        os.write(2, b"fi")
        os.write(2, b"ve\\n" * 3000)  # more than a pipe holds: the pump keeps up
        f.stop()
        os.write(2, b"six\\n")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.decode().splitlines()
    assert lines[:4] == ["one", "two", "three", "four"]
    assert "'Trainer'" in lines[4] and "max_restarts > 0" in lines[4]
    assert lines[5:] == ["five"] + ["ve"] * 2999 + ["six"]
    assert "MapWorker" not in done.stderr.decode()
