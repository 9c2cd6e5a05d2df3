"""Checkpoint plumbing shared by the Train wrappers: report a checkpoint written by a callback, and refuse to resume
from a corrupt one (one clear line instead of a worker crash loop)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dia_ray.errors import CheckpointError, StorageError
from dia_ray.storage import Storage

SNAPSHOT = "checkpoint_manager_snapshot.json"
PAD_ENV = "DIA_RAY_TEST_CHECKPOINT_PAD_BYTES"  # tests only: make every checkpoint this much bigger


def report_with_checkpoint(metrics: dict[str, Any], write: Callable[[Path], None], local_mode: bool,
                           final: bool = False) -> None:
    """Rank 0: write the checkpoint into a fresh directory and report it. Intermediate checkpoints upload
    asynchronously (training goes on while Ray copies them to storage and then deletes the local copy; Ray
    registers a checkpoint only once its upload finished); the final one synchronously, so the run's result points
    at it. In local mode (num_workers=0) Ray keeps pointing at the directory, so it must stay."""
    import ray.train
    from ray.train import CheckpointUploadMode

    tmp = Path(tempfile.mkdtemp(prefix="dia-ray-ckpt-"))
    mode = CheckpointUploadMode.SYNC if (final or local_mode) else CheckpointUploadMode.ASYNC
    try:
        write(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=not local_mode)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def padding_bytes() -> int:
    """On the driver: ``$DIA_RAY_TEST_CHECKPOINT_PAD_BYTES`` (fault injection for tests), passed to the workers."""
    return int(os.environ.get(PAD_ENV, "0") or 0)


def state_padding(pad: int) -> dict[str, Any]:
    """``pad`` extra random bytes in the saved state (tests only: an upload slow enough to kill a run in the middle
    of it). Empty when 0."""
    import torch

    return {"test_padding": torch.randint(0, 255, (pad,), dtype=torch.uint8)} if pad else {}


def registered_checkpoint(storage: Storage, run: str) -> str | None:
    """The checkpoint folder (relative to ``storage``) that Ray Train will restore for run folder ``run``: the
    latest one registered in the run's ``checkpoint_manager_snapshot.json``. A checkpoint is registered only after
    its upload finished, so a newer, half-uploaded ``checkpoint_*`` folder (a run killed mid-upload) is never
    chosen. None when the run has no snapshot or the snapshot names no checkpoint."""
    if not storage.is_file(run, SNAPSHOT):
        return None
    try:
        snap = storage.read_json(run, SNAPSHOT)
        latest = snap.get("latest_checkpoint_result") or {}
        name = latest.get("checkpoint_dir_name")
    except (StorageError, AttributeError):
        raise CheckpointError(f"{storage.join(run, SNAPSHOT)} is unreadable; delete {storage.join(run)} to start "
                              "over") from None
    return f"{run}/{name}" if name else None


def validate_resume(storage: Storage, run: str, state_file: str, required: tuple[str, ...] = ()) -> str | None:
    """Before resuming run folder ``run``: the checkpoint Ray Train will restore (:func:`registered_checkpoint`)
    must hold ``state_file`` (loadable with ``torch.load(weights_only=True)``) and the ``required`` files, else
    :class:`CheckpointError` naming it. Returns that checkpoint's location (None: nothing to resume)."""
    import io

    import torch

    ckpt = registered_checkpoint(storage, run)
    if ckpt is None:
        return None
    where = storage.join(ckpt)
    for name in (state_file, *required):
        if not storage.is_file(ckpt, name):
            raise CheckpointError(f"checkpoint {where} is incomplete (no {name}); delete {storage.join(run)} to "
                                  "start over")
    try:
        torch.load(io.BytesIO(storage.read_bytes(ckpt, state_file)), map_location="cpu", weights_only=True)
        for name in required:
            if name.endswith(".json"):
                json.loads(storage.read_text(ckpt, name))
    except Exception as err:  # noqa: BLE001 - any decode failure means the file is unusable
        raise CheckpointError(f"checkpoint {where} is corrupt ({type(err).__name__}); delete {storage.join(run)} "
                              "to start over") from None
    return where


def fit_trainer(worker: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str, storage_path: str,
                workers: int, use_gpu: bool, cpus_per_worker: float, max_failures: int, keep_checkpoints: int,
                gpus_per_worker: float = 1.0, callbacks: list | None = None):
    """``TorchTrainer(...).fit()`` with the house settings: ``gpus_per_worker`` (fractional: several small runs
    share a GPU) when ``use_gpu``, a stable run name under ``storage_path`` (a folder or a URI; run again = resume),
    ``max_failures`` worker-group restarts from the last registered checkpoint, the last k checkpoints kept.
    ``workers=0`` is Ray Train's local mode (in-process)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    import torch.distributed
    from ray.train.torch import TorchConfig, TorchTrainer

    # NCCL for GPU workers; a CPU build of torch has no NCCL (a cluster that declares GPUs to a CPU-only image, as the
    # simulated cluster of the tests does): gloo then, and the workers fall back to the CPU (worker_device).
    nccl = use_gpu and torch.distributed.is_available() and torch.distributed.is_nccl_available()
    trainer = TorchTrainer(
        worker,
        torch_config=TorchConfig(backend="nccl" if nccl else "gloo"),
        train_loop_config={**config, "local": workers == 0, "use_gpu": use_gpu,
                           "threads": max(1, int(cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker,
                                                           **({"GPU": gpus_per_worker} if use_gpu else {})}),
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
    return get_device() if config["use_gpu"] and torch.cuda.is_available() else torch.device("cpu")


def restore(state: Any, config: dict[str, Any], device: Any, state_file: str, progress_file: str,
            position: str) -> tuple[int, int, list[int], dict[str, Any]]:
    """Load ``state`` from the run's last checkpoint (if any). Returns (rank, world size, starts, progress) where
    ``starts`` lists the ``position`` (step or epoch) at which each (re)start of the run began — the proof that a
    restarted run resumed instead of starting over — and ``progress`` is the checkpoint's progress file ({} when
    starting fresh)."""
    import os

    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    progress: dict[str, Any] = {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state.load_state_dict(torch.load(Path(d) / state_file, map_location=device, weights_only=True))
            progress = json.loads((Path(d) / progress_file).read_text())
    starts = [*progress.get("starts", []), getattr(state, position)]
    if config.get("pid_dir") and rank == world - 1:  # lets fault-injection tests find a worker process
        Path(config["pid_dir"], f"worker-{rank}.pid").write_text(str(os.getpid()))
    return rank, world, starts, progress
