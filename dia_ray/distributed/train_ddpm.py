"""Stage A on Ray Train: the DDPM trained data-parallel (DDP over gloo/NCCL), checkpointed every
``checkpoint_every`` steps, resumed from the last checkpoint after a worker dies (``FailureConfig``) or when the same
run is started again (stable ``RunConfig(name, storage_path)``). The finished model is published, in diffusers'
``save_pretrained`` layout, at ``STORAGE/ddpm/<key>/model`` (its ``dia_ray_ddpm.json`` written last: the commit).

Learning rate and batch: ``DDPMConfig.global_batch`` is the paper's batch per resolution and is the *global* batch:
each of N workers gets global/N images per optimiser step, so the lr (8e-5) needs no scaling with N.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from dia_ray.algo.ddpm import DDPM_META
from dia_ray.config import DDPMConfig, stable_hash
from dia_ray.distributed.checkpointing import (fit_trainer, report_with_checkpoint, restore, validate_resume,
                                               worker_device)
from dia_ray.distributed.dataref import DataRef
from dia_ray.errors import CheckpointError
from dia_ray.storage import Storage, open_storage
from dia_ray.progress import Progress, run_context

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"


def ddpm_key(ref: DataRef, cfg: DDPMConfig) -> str:
    """Everything that changes the DDPM: dataset (+ normal class, size) and the whole training config."""
    ident = {"dataset": ref.dataset, "normal_class": ref.normal_class, "image_size": ref.image_size,
             "ddpm": cfg.model_dump(mode="json", exclude={"checkpoint_every", "log_every"})}
    return f"{ref.dataset}-r{cfg.resolution}-{stable_hash(ident)}"


def find_ddpm(storage: Storage, ref: DataRef, cfg: DDPMConfig) -> str | None:
    """The published model's location (``STORAGE/ddpm/<key>/model``), or None when it is not (completely) there."""
    key = ddpm_key(ref, cfg)
    return storage.join("ddpm", key, "model") if storage.is_file("ddpm", key, "model", DDPM_META) else None


def local_ddpm(location: str | os.PathLike) -> Path:
    """A local folder holding the DDPM at ``location`` (a folder, or a storage URI: cached once per node)."""
    return Storage(location).local_dir(commit=DDPM_META)


def training_images(ref: DataRef, cfg: DDPMConfig):
    """uint8 (N, r, r, 3): exactly what the DDPM trains on (:func:`dia_ray.data.ddpm_images`: folder datasets from
    their source files straight to r). Read where the driver runs — the data root need not exist on worker nodes:
    the images reach the Train workers through the object store."""
    from dia_ray.data import ddpm_images
    from dia_ray.distributed.dataref import local_data_root

    root = local_data_root(ref.data_root, ref.dataset, ref.normal_class)
    return ddpm_images(ref.dataset, root, cfg.resolution, normal_class=ref.normal_class, image_size=ref.image_size,
                       whole_folder=cfg.whole_folder)


def _worker(config: dict[str, Any]) -> None:
    """Runs on every Train worker: the plain loop of dia_ray.algo.ddpm with checkpoint/restore around it."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from dia_ray.algo.ddpm import new_state, save_ddpm, train_ddpm

    device = worker_device(config)
    cfg = DDPMConfig.model_validate(config["ddpm"])
    images = config["images"]
    if images is None:  # local mode without a Ray cluster: read them here
        images = training_images(DataRef(**config["data"]), cfg)
    elif not isinstance(images, np.ndarray):
        images = ray.get(images)
    images = torch.from_numpy(np.array(images))  # the object store's arrays are read-only
    state = new_state(cfg, device)
    rank, world, starts, _ = restore(state, config, device, STATE_FILE, PROGRESS_FILE, "step")
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
    storage: str | os.PathLike | Storage,
    *,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 1.0,
    max_failures: int = 3,
    keep_checkpoints: int = 2,
    force: bool = False,
    pid_dir: str | None = None,
    step_delay: float = 0.0,
) -> str:
    """Train (or resume, or reuse) the DDPM for ``ref``; returns the published model's location
    (``STORAGE/ddpm/<key>/model``, a local folder or a URI). ``workers=0`` is Ray Train's local mode."""
    st = open_storage(storage)
    key = ddpm_key(ref, cfg)
    existing = find_ddpm(st, ref, cfg)
    if existing and not force:
        log.info("DDPM %s exists, reusing %s", key, existing)
        return existing
    if force:
        st.delete("ddpm", key)
    import ray

    images = training_images(ref, cfg)
    config = {"ddpm": cfg.model_dump(mode="json"), "data": ref.as_dict(), "pid_dir": pid_dir,
              "step_delay": step_delay, "images": ray.put(images) if ray.is_initialized() else None,
              "log_context": run_context(ref.dataset, f"DDPM r{cfg.resolution}")}
    run_name = f"ddpm-{key}"
    validate_resume(st, f"ddpm/{key}/{run_name}", STATE_FILE, (PROGRESS_FILE,))
    log.info("training DDPM %s: %d steps, global batch %d, %d worker(s)", key, cfg.steps, cfg.global_batch, workers)
    result = fit_trainer(_worker, config, name=run_name, storage_path=st.join("ddpm", key), workers=workers,
                         use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                         max_failures=max_failures, keep_checkpoints=keep_checkpoints)
    if result.checkpoint is None:
        raise CheckpointError(f"DDPM run {key} finished without a checkpoint (see {st.join('ddpm', key)})")
    with result.checkpoint.as_directory() as d:
        src = Path(d) / "model"
        if not (src / DDPM_META).is_file():
            raise CheckpointError(f"DDPM run {key}: last checkpoint has no final model")
        return st.upload_dir(src, "ddpm", key, "model", commit=DDPM_META)
