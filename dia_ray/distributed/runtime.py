"""Connecting to Ray: a local cluster started for the run (default, loopback only) or an existing one (``--address``),
and checks that the requested resources exist before any work starts."""

from __future__ import annotations

import logging
import os
import sys

from dia_ray.errors import ClusterError, DiaRayError, NodeLostError
from dia_ray.progress import LEVEL_ENV, LINE_START_REGEX, ContextFilter, LineFormatter, Verbosity

log = logging.getLogger(__name__)

WORKER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# Ray failures that mean a process or node went away (not a bug in the training code): the run can be resumed.
LOST_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
               "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError",
               "WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError", "WorkerGroupStartupFailedError",
               "PreemptionError", "RaySystemError")


def console_env(verbosity: Verbosity, tty: bool) -> dict[str, str]:
    """Environment variables for Ray's console output, to set before ``import ray`` (Ray reads them at import).

    Not a terminal: no colour codes. Default verbosity: of what Ray forwards from its workers to the driver, only
    dia-ray's own lines (they start with the time of day, see dia_ray.progress.LineFormatter) are printed — not the
    C++ core-worker/raylet lines (``core_worker.cc ... PreemptionWatcher``, "N PYTHON worker processes have been
    started"), Tune's tables or Ray's Python INFO lines — and they are printed without Ray's "(pid=...)" prefix (they
    carry their run's context) and never merged by Ray's log deduplication. Everything stays in Ray's log files
    (``/tmp/ray/session_latest/logs``)."""
    env = {} if tty else {"RAY_COLOR_PREFIX": "0"}
    if verbosity.raw:
        return env
    return {**env, "RAY_DEDUP_LOGS": "1", "RAY_DEDUP_LOGS_SKIP_REGEX": f"^(?!{LINE_START_REGEX})",
            "RAY_DEDUP_LOGS_ALLOW_REGEX": f"^{LINE_START_REGEX}", "RAY_DISABLE_WORKER_LOG_PREFIX": "1"}


def connect(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True,
            progress_bars: bool = False) -> None:
    """``ray.init`` once: ``address=None`` starts a local Ray bound to 127.0.0.1 (dashboard on loopback), otherwise connects
    (``auto`` or ``ray://host:10001`` or ``host:6379``)."""
    import ray

    if ray.is_initialized():
        return
    verbosity = Verbosity.from_env()
    env = {"env_vars": {**WORKER_ENV, **({LEVEL_ENV: os.environ[LEVEL_ENV]} if os.environ.get(LEVEL_ENV) else {})}}
    kwargs = dict(runtime_env=env, log_to_driver=log_to_driver, configure_logging=True,
                  logging_level=verbosity.libraries)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # our own loopback-only cluster
            # The dashboard (bound to loopback) also serves the State API that Ray Train's controller polls.
            ctx = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                           _node_ip_address="127.0.0.1", **kwargs)
            if getattr(ctx, "dashboard_url", None):
                log.info("local Ray started; dashboard at http://%s", ctx.dashboard_url)
    except ConnectionError as err:
        raise ClusterError(f"cannot connect to Ray at '{address}': {err}") from None
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress_bars
    if not verbosity.raw:
        quiet_ray_data(verbosity.libraries)


def quiet_ray_data(level: int) -> None:
    """Ray Data logs to its own console handler at INFO ("Execution plan ...", "Data sink Parquet finished") and warns
    that the progress bars are off (dia-ray switches them off and prints its own progress): raise that handler to
    ``level`` and drop the warning. Ray Data's log file (ray-data.log) keeps everything."""
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # the console one (the others write the session's files)
            handler.setLevel(max(handler.level, level))
            handler.addFilter(lambda record: not record.getMessage().startswith("Progress bars"))


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def check_train_resources(workers: int, use_gpu: bool, cpus_per_worker: float, gpus_per_worker: float = 1.0) -> None:
    """Refuse a Train run the cluster can never schedule (instead of hanging in PENDING)."""
    res = cluster_resources()
    n = max(workers, 1)
    if use_gpu and res.get("GPU", 0) < gpus_per_worker * n:
        have = res.get("GPU", 0)
        raise ClusterError(f"--gpu asks for {n} worker(s) x {gpus_per_worker} GPU but the cluster has {have:g} GPU(s)"
                           + ("" if have else "; drop --gpu to train on CPU"))
    need = cpus_per_worker * n
    if res.get("CPU", 0) + 1e-9 < need:
        raise ClusterError(f"{n} worker(s) x {cpus_per_worker:g} CPU need {need:g} CPUs but the cluster has "
                           f"{res.get('CPU', 0):g}; use fewer --workers")


def worker_threads(cpus_per_worker: float) -> int:
    return max(1, int(cpus_per_worker))


def worker_logging(context: dict | None = None) -> None:
    """Inside a Ray worker: dia_ray's messages as console lines on stdout (Ray forwards worker stdout to the driver),
    each tagged with the run's ``context`` (dataset, method, seed, trial: see dia_ray.progress.run_context). Levels
    follow ``$DIA_RAY_LOG_LEVEL``, which :func:`connect` passes to the workers."""
    verbosity = Verbosity.from_env()
    logger = logging.getLogger("dia_ray")
    handler = next((h for h in logger.handlers if getattr(h, "_dia_ray", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler._dia_ray = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(LineFormatter(verbose=verbosity.raw))
    handler.filters[:] = [ContextFilter(context)]
    logger.setLevel(verbosity.own)
    # Ray Train/Tune/Data's per-report INFO lines (some on loggers named after files, under the root logger)
    # drown the progress lines; dia_ray's own logger does not propagate, so this keeps only warnings of theirs.
    for noisy in ("", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(noisy).setLevel(verbosity.libraries)


def explain_failure(err: BaseException, command: str = "") -> DiaRayError | None:
    """The one-line error for a Ray failure reaching the CLI: a dia-ray error raised inside a worker (passed on as
    is), or a lost worker/node (:class:`NodeLostError`: rerunning resumes); None for anything else (a bug)."""
    if isinstance(err, DiaRayError):
        return err
    failures = getattr(err, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        found = [explain_failure(f, command) for f in failures.values()]
        user = [f for f in found if f is not None and not isinstance(f, NodeLostError)]
        if user:
            return user[0]
        if all(isinstance(f, NodeLostError) for f in found):
            rank, failure = next(iter(failures.items()))
            return _lost(f"Train worker {rank}: {_name(failure)}", command)
        return None
    for inner in ("controller_failure", "cause", "_base_exc"):  # ControllerError, RayTaskError, user exceptions
        wrapped = getattr(err, inner, None)
        if isinstance(wrapped, BaseException) and wrapped is not err:
            return explain_failure(wrapped, command)
    if any(cls.__name__ in LOST_ERRORS for cls in type(err).__mro__):
        return _lost(_name(err), command)
    return None


def _name(err: BaseException) -> str:
    inner = getattr(err, "health_check_failure", None)  # Train's health check saw the worker's actor die
    return type(inner if isinstance(inner, BaseException) else err).__name__


def _lost(what: str, command: str) -> NodeLostError:
    again = "the same command with --resume" if command == "sweep" else "the same command"
    return NodeLostError(f"a Ray worker process or node was lost ({what}); run {again} to resume from the last "
                         "checkpoint")
