"""Stage A on Ray Train: the DDPM trained data-parallel (DDP over gloo/NCCL), checkpointed every
``checkpoint_every`` steps, resumed from the last checkpoint after a worker dies (``FailureConfig``) or when the same
run is started again (stable ``RunConfig(name, storage_path)``). The finished model is published, in diffusers'
``save_pretrained`` layout, at ``STORAGE/ddpm/<key>/model`` with one rename.

Learning rate and batch: ``DDPMConfig.global_batch`` is the paper's batch per resolution and is the *global* batch:
each of N workers gets global/N images per optimiser step, so the lr (8e-5) needs no scaling with N.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dia_ray.config import DDPMConfig, stable_hash
from dia_ray.distributed.checkpointing import (fit_trainer, report_with_checkpoint, restore, validate_resume,
                                               worker_device)
from dia_ray.distributed.storage import atomic_publish, ensure_writable, staging_dir
from dia_ray.errors import CheckpointError
from dia_ray.progress import Progress, run_context

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class DataRef:
    """Where a worker finds its images (every worker reads the data root; on a cluster it must be shared)."""

    dataset: str
    data_root: str
    normal_class: str | None = None
    image_size: int | None = None

    def load(self):
        from dia_ray.data import load_dataset

        return load_dataset(self.dataset, self.data_root, normal_class=self.normal_class, image_size=self.image_size)


def ddpm_key(ref: DataRef, cfg: DDPMConfig) -> str:
    """Everything that changes the DDPM: dataset (+ normal class, size) and the whole training config."""
    ident = {"dataset": ref.dataset, "normal_class": ref.normal_class, "image_size": ref.image_size,
             "ddpm": cfg.model_dump(mode="json", exclude={"checkpoint_every", "log_every"})}
    return f"{ref.dataset}-r{cfg.resolution}-{stable_hash(ident)}"


def ddpm_dir(storage: str | os.PathLike, key: str) -> Path:
    return Path(storage) / "ddpm" / key


def find_ddpm(storage: str | os.PathLike, ref: DataRef, cfg: DDPMConfig) -> Path | None:
    model = ddpm_dir(storage, ddpm_key(ref, cfg)) / "model"
    return model if (model / "dia_ray_ddpm.json").is_file() else None


def _worker(config: dict[str, Any]) -> None:
    """Runs on every Train worker: the plain loop of dia_ray.algo.ddpm with checkpoint/restore around it."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from dia_ray.algo.ddpm import new_state, save_ddpm, train_ddpm

    device = worker_device(config)
    cfg = DDPMConfig.model_validate(config["ddpm"])
    images = torch.from_numpy(DataRef(**config["data"]).load().train.images)
    state = new_state(cfg, device)
    rank, world, starts = restore(state, config, device, STATE_FILE, PROGRESS_FILE, "step")
    if world > 1:
        state.unet = prepare_model(state.unet, move_to_device=device)

    progress = Progress("DDPM", cfg.steps, unit="steps", announce=True)

    def on_step(st, metrics: dict[str, float]) -> None:
        if rank == 0:
            progress.at(st.step, images=cfg.global_batch, since=st.step - 1, loss=metrics["loss"])
        if st.step % cfg.checkpoint_every and st.step != cfg.steps:
            return
        metrics = {**metrics, "starts": list(starts), "world_size": world}
        if rank != 0:
            ray.train.report(metrics)
            return

        def write(tmp: Path) -> None:
            torch.save(st.state_dict(), tmp / STATE_FILE)
            (tmp / PROGRESS_FILE).write_text(json.dumps({"starts": starts, "step": st.step}))
            if st.step == cfg.steps:
                save_ddpm(tmp / "model", st, cfg, extra={"starts": starts, "world_size": world})

        report_with_checkpoint(metrics, write, config["local"])

    if config.get("step_delay"):  # fault-injection tests slow the loop down to have time to kill a worker
        inner = on_step

        def on_step(st, metrics):  # noqa: F811
            time.sleep(config["step_delay"])
            inner(st, metrics)

    train_ddpm(images, cfg, state, device=device, rank=rank, world_size=world, on_step=on_step)


def train_ddpm_ray(
    ref: DataRef,
    cfg: DDPMConfig,
    storage: str | os.PathLike,
    *,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 3,
    keep_checkpoints: int = 2,
    force: bool = False,
    pid_dir: str | None = None,
    step_delay: float = 0.0,
) -> Path:
    """Train (or resume, or reuse) the DDPM for ``ref``; returns the published model folder
    (``STORAGE/ddpm/<key>/model``). ``workers=0`` is Ray Train's local mode (in-process, for unit tests)."""
    root = ensure_writable(storage)
    key = ddpm_key(ref, cfg)
    home = ddpm_dir(root, key)
    existing = find_ddpm(root, ref, cfg)
    if existing and not force:
        log.info("DDPM %s exists, reusing %s", key, existing)
        return existing
    if force and home.exists():
        shutil.rmtree(home)
    config = {"ddpm": cfg.model_dump(mode="json"), "data": ref.__dict__, "pid_dir": pid_dir,
              "step_delay": step_delay, "log_context": run_context(ref.dataset, f"DDPM r{cfg.resolution}")}
    run_name = f"ddpm-{key}"
    validate_resume(home / run_name, STATE_FILE, (PROGRESS_FILE,))
    log.info("training DDPM %s: %d steps, global batch %d, %d worker(s)", key, cfg.steps, cfg.global_batch, workers)
    result = fit_trainer(_worker, config, name=run_name, storage_path=home, workers=workers, use_gpu=use_gpu,
                         cpus_per_worker=cpus_per_worker, max_failures=max_failures,
                         keep_checkpoints=keep_checkpoints)
    if result.checkpoint is None:
        raise CheckpointError(f"DDPM run {key} finished without a checkpoint (see {home})")
    staging = staging_dir(home / "model")
    with result.checkpoint.as_directory() as d:
        src = Path(d) / "model"
        if not (src / "dia_ray_ddpm.json").is_file():
            raise CheckpointError(f"DDPM run {key}: last checkpoint has no final model")
        shutil.copytree(src, staging, dirs_exist_ok=True)
    return atomic_publish(staging, home / "model")
