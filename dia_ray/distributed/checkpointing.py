"""Checkpoint plumbing shared by the Train wrappers: report a checkpoint written by a callback, and refuse to resume
from a corrupt one (one clear line instead of a worker crash loop)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dia_ray.errors import CheckpointError

SNAPSHOT = "checkpoint_manager_snapshot.json"


def report_with_checkpoint(metrics: dict[str, Any], write: Callable[[Path], None], local_mode: bool) -> None:
    """Rank 0: write the checkpoint into a fresh directory and report it. Ray uploads it to the run's storage and
    deletes the local copy; in local mode (num_workers=0) Ray keeps pointing at the directory, so it must stay."""
    import ray.train

    tmp = Path(tempfile.mkdtemp(prefix="dia-ray-ckpt-"))
    try:
        write(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                         delete_local_checkpoint_after_upload=not local_mode)
    finally:
        if not local_mode:
            shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    """The newest ``checkpoint_*`` folder of a Ray Train run directory (None when the run never checkpointed)."""
    if not run_dir.is_dir():
        return None
    found = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    return found[-1] if found else None


def validate_resume(run_dir: Path, state_file: str, required: tuple[str, ...] = ()) -> Path | None:
    """Before resuming ``run_dir``: the latest checkpoint must load (``torch.load(weights_only=True)``) and hold the
    ``required`` files, else raise :class:`CheckpointError` naming it."""
    import torch

    ckpt = latest_checkpoint_dir(run_dir)
    if ckpt is None:
        return None
    for name in (state_file, *required):
        if not (ckpt / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete (no {name}); delete {run_dir} to start over")
    try:
        torch.load(ckpt / state_file, map_location="cpu", weights_only=True)
        for name in required:
            if name.endswith(".json"):
                json.loads((ckpt / name).read_text())
    except Exception as err:  # noqa: BLE001 - any decode failure means the file is unusable
        raise CheckpointError(f"checkpoint {ckpt} is corrupt ({type(err).__name__}); delete {run_dir} to start "
                              "over") from None
    return ckpt


def fit_trainer(worker: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str, storage_path: Path,
                workers: int, use_gpu: bool, cpus_per_worker: float, max_failures: int, keep_checkpoints: int,
                callbacks: list | None = None):
    """``TorchTrainer(...).fit()`` with the house settings: one GPU per worker when asked, a stable run name (run
    again = resume), ``max_failures`` worker-group restarts from the last checkpoint, the last k checkpoints kept.
    ``workers=0`` is Ray Train's local mode (in-process)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        worker,
        train_loop_config={**config, "local": workers == 0, "use_gpu": use_gpu,
                           "threads": max(1, int(cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=callbacks or None,
            logging_config=LoggingConfig(log_level="WARNING"),  # progress comes from dia_ray's own lines
        ),
    )
    return trainer.fit()


def worker_device(config: dict[str, Any]):
    """First call in a Train worker: progress logging, torch threads, and the device (its GPU, or the CPU)."""
    import torch
    from ray.train.torch import get_device

    from dia_ray.distributed.runtime import worker_logging

    worker_logging(config.get("log_context"))
    torch.set_num_threads(config["threads"])
    return get_device() if config["use_gpu"] else torch.device("cpu")


def restore(state: Any, config: dict[str, Any], device: Any, state_file: str, progress_file: str,
            position: str) -> tuple[int, int, list[int]]:
    """Load ``state`` from the run's last checkpoint (if any). Returns (rank, world size, starts) where ``starts``
    lists the ``position`` (step or epoch) at which each (re)start of the run began — the proof that a restarted
    run resumed instead of starting over."""
    import os

    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    starts: list[int] = []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state.load_state_dict(torch.load(Path(d) / state_file, map_location=device, weights_only=True))
            starts = json.loads((Path(d) / progress_file).read_text())["starts"]
    starts.append(getattr(state, position))
    if config.get("pid_dir") and rank == world - 1:  # lets fault-injection tests find a worker process
        Path(config["pid_dir"], f"worker-{rank}.pid").write_text(str(os.getpid()))
    return rank, world, starts
