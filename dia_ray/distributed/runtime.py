"""Connecting to Ray: a local cluster started for the run (default, loopback only) or an existing one (``--address``),
and checks that the requested resources exist before any work starts."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
import sys

from dia_ray.errors import ClusterError, DiaRayError, NodeLostError
from dia_ray.progress import LEVEL_ENV, LINE_START_REGEX, ContextFilter, LineFormatter, Verbosity

log = logging.getLogger(__name__)

MAX_NODES_ENV = "DIA_RAY_MAX_NODES"  # set by the shipped cluster configs: 1 + the most workers the autoscaler adds
WORKER_RESOURCES_ENV = "DIA_RAY_WORKER_RESOURCES"  # and the resources of one such worker node, as JSON
# The driver's settings its Ray workers must share: log level, and the fault-injection knobs of the tests (a slower
# epoch, a bigger checkpoint). Never credentials: nodes get those from their own environment or role.
FORWARDED_ENV = ("DIA_RAY_LOG_LEVEL", "DIA_RAY_EPOCH_DELAY", "DIA_RAY_TEST_CHECKPOINT_PAD_BYTES",
                 "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",
                 # tracker settings (not credentials): W&B mode/folder/entity, MLflow's opt-in to its file store
                 "WANDB_MODE", "WANDB_DIR", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_SILENT", "MLFLOW_ALLOW_FILE_STORE")
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
    env = {"env_vars": {**WORKER_ENV, **{k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}}}
    gcs = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    if gcs and "://" not in gcs:
        # Ray Train's PlacementGroupCleaner finds its cluster's State API through RAY_ADDRESS; without it, on a machine
        # that runs several Ray instances it gives up, and the placement group of a stopped trial is never freed.
        env["env_vars"]["RAY_ADDRESS"] = gcs
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


@dataclass(frozen=True)
class Capacity:
    """What the cluster can offer during the run: the larger of the nodes up now and what its autoscaler may add
    (from the autoscaler's cluster config when Ray has one, else ``$DIA_RAY_MAX_NODES`` nodes, the missing ones with
    ``$DIA_RAY_WORKER_RESOURCES`` each, or like the largest node up when that is not set)."""

    resources: dict[str, float]
    nodes: int
    source: str  # "nodes up now" | "autoscaler config" | "$DIA_RAY_MAX_NODES"


def cluster_capacity() -> Capacity:
    import ray

    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    alive = [n for n in ray.nodes() if n.get("Alive")]
    config = None
    try:  # the autoscaler's node groups and their max_count (ray up / KubeRay); private API, so guarded
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler (local/manual cluster) or another Ray version
        config = None
    if config is not None and config.node_group_configs:
        most = {k: 0.0 for k in now}
        nodes = 0
        for group in config.node_group_configs:
            count = group.max_count if group.max_count >= 0 else 1_000
            nodes += count
            for key, value in group.resources.items():
                most[key] = most.get(key, 0.0) + count * float(value)
        merged = {k: max(now.get(k, 0.0), most.get(k, 0.0)) for k in {*now, *most}}
        return Capacity(merged, max(nodes, len(alive)), "autoscaler config")
    try:
        declared = int(os.environ.get(MAX_NODES_ENV, "0"))
    except ValueError:
        declared = 0
    if declared > len(alive) and alive:
        try:
            per_node = {k: float(v) for k, v in json.loads(os.environ.get(WORKER_RESOURCES_ENV) or "{}").items()}
        except (ValueError, AttributeError):
            raise ClusterError(f"${WORKER_RESOURCES_ENV} must be a JSON object such as "
                               '{"CPU": 96, "GPU": 8}') from None
        if not per_node:
            for node in alive:
                for key, value in node.get("Resources", {}).items():
                    per_node[key] = max(per_node.get(key, 0.0), float(value))
        missing = declared - len(alive)
        grown = {k: now.get(k, 0.0) + missing * per_node.get(k, 0.0) for k in {*now, *per_node}}
        return Capacity(grown, declared, f"${MAX_NODES_ENV}")
    return Capacity(now, len(alive), "nodes up now")


def cluster_resources() -> dict[str, float]:
    return cluster_capacity().resources


def check_train_resources(workers: int, use_gpu: bool, cpus_per_worker: float, gpus_per_worker: float = 1.0) -> None:
    """Refuse a Train run the cluster can never schedule (instead of hanging in PENDING). Checked against the
    cluster's capacity (:func:`cluster_capacity`: autoscaling clusters count the nodes they can still add), so a
    run may start while GPU nodes are still coming up."""
    cap = cluster_capacity()
    res = cap.resources
    n = max(workers, 1)
    if use_gpu and res.get("GPU", 0) + 1e-9 < gpus_per_worker * n:
        have = res.get("GPU", 0)
        raise ClusterError(f"--gpu asks for {n} worker(s) x {gpus_per_worker:g} GPU but the cluster has {have:g} "
                           f"GPU(s) ({cap.source})" + ("" if have else "; drop --gpu to train on CPU"))
    need = cpus_per_worker * n
    if res.get("CPU", 0) + 1e-9 < need:
        raise ClusterError(f"{n} worker(s) x {cpus_per_worker:g} CPU need {need:g} CPUs but the cluster has "
                           f"{res.get('CPU', 0):g} ({cap.source}); use fewer --workers")


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
