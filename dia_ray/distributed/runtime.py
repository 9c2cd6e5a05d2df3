"""Connecting to Ray: a local cluster started for the run (default, loopback only) or an existing one (``--address``),
and checks that the requested resources exist before any work starts."""

from __future__ import annotations

import logging
import os

from dia_ray.errors import ClusterError

log = logging.getLogger(__name__)

WORKER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def connect(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True,
            progress_bars: bool = False) -> None:
    """``ray.init`` once: ``address=None`` starts a local Ray bound to 127.0.0.1 (dashboard on loopback), otherwise connects
    (``auto`` or ``ray://host:10001`` or ``host:6379``)."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": dict(WORKER_ENV)}
    kwargs = dict(runtime_env=env, log_to_driver=log_to_driver, configure_logging=True, logging_level=logging.WARNING)
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


def worker_logging(level: int = logging.INFO) -> None:
    """Inside a Ray worker: dia_ray's progress messages to stdout (Ray forwards worker stdout to the driver)."""
    logger = logging.getLogger("dia_ray")
    if not any(getattr(h, "_dia_ray", False) for h in logger.handlers):
        import sys

        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._dia_ray = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    # Ray Train/Tune/Data's per-report INFO lines (some on loggers named after files, under the root logger)
    # drown the progress lines; dia_ray's own logger does not propagate, so this keeps only warnings of theirs.
    for noisy in ("", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

