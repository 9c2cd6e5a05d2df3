"""Stage B on Ray Train: DIA / CSI / blur baselines trained data-parallel, checkpointed every epoch, resumable, and
evaluated on rank 0 (CSI score + AUROC on the test split) into one :class:`~dia_ray.results.records.ResultRecord`.

Batch and learning rate: ``TrainConfig.batch_size`` is the global batch (32 images = 384 views for DIA, as in the
paper). With N workers each rank holds batch/N images per step and the projections are all-gathered, so the loss
is the single-process loss on the global batch and the LARS lr (0.1 → 1.0 warm-up) needs no scaling with N.
BatchNorm: SyncBatchNorm on GPUs (the reference's apex SyncBN); on CPU torch has no SyncBatchNorm, so each CPU worker
normalises with its own slice's statistics (documented deviation, CPU multi-worker only).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from dia_ray.config import TrainConfig
from dia_ray.distributed.checkpointing import (fit_trainer, report_with_checkpoint, restore, validate_resume,
                                               worker_device)
from dia_ray.distributed.storage import ensure_writable
from dia_ray.distributed.train_ddpm import DataRef
from dia_ray.errors import CheckpointError
from dia_ray.progress import fit_hooks, run_context
from dia_ray.results.records import ResultRecord, write_records

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
FINAL_FILE = "final.json"
PROGRESS_FILE = "progress.json"


def run_key(cfg: TrainConfig) -> str:
    return f"{cfg.dataset}-{cfg.method}-{cfg.config_hash()}-s{cfg.seed}"


def record_path(storage: str | os.PathLike, cfg: TrainConfig, subdir: str = "train") -> Path:
    return Path(storage) / "results" / subdir / f"{run_key(cfg)}.jsonl"


def t_range_for(cfg: TrainConfig, spec_t_range: tuple[int, int]) -> tuple[int, int]:
    d = cfg.dissolve
    return (d.t_min, d.t_max) if d.t_min is not None else tuple(spec_t_range)


def load_train_data(cfg: TrainConfig, ref: DataRef):
    """(DIAData, spec, train indices) with the config's optional subsampling (deterministic, seed-independent).
    The indices map the used training images to rows of the full normal train split (a bank is built over it)."""
    import numpy as np

    from dia_ray.algo.loops import DIAData

    ds = ref.load()
    train, test, labels = ds.train.images, ds.test.images, ds.test.labels
    rng = np.random.default_rng(12345)
    train_idx = np.arange(len(train))
    if cfg.max_train_images and len(train) > cfg.max_train_images:
        train_idx = np.sort(rng.choice(len(train), cfg.max_train_images, replace=False))
        train = train[train_idx]
    if cfg.max_test_images and len(test) > cfg.max_test_images:
        keep = []
        for cls in (0, 1):  # stratified: keep the normal/anomaly ratio
            idx = np.flatnonzero(labels == cls)
            keep.append(rng.choice(idx, max(1, round(cfg.max_test_images * len(idx) / len(labels))), replace=False))
        sel = np.sort(np.concatenate(keep))
        test, labels = test[sel], labels[sel]
    return DIAData.from_arrays(train, test, labels), ds.spec, train_idx


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.algo.dissolve import make_dissolver
    from dia_ray.algo.loops import fit, new_dia_state

    device = worker_device(config)
    cfg = TrainConfig.model_validate(config["train"])
    ref = DataRef(**config["data"])
    data, spec, train_idx = load_train_data(cfg, ref)
    d = cfg.dissolve
    unet = alphas = versions = None
    if d.kind == "diffusion":
        if config.get("bank_path"):
            from dia_ray.distributed.bank import load_bank_versions

            versions = load_bank_versions(config["bank_path"], len(data.train), indices=train_idx)
        else:
            unet, scheduler, _ = load_ddpm(config["ddpm_path"], use_ema=d.use_ema, device=device)
            alphas = scheduler.alphas_cumprod
    dissolver = make_dissolver(
        d.kind, t_range=t_range_for(cfg, spec.t_range), resolution=d.resolution, input_range=d.input_range,
        kernel_size=d.kernel_size, blur_resize=d.blur_resize_to_resolution, autocast_bf16=d.autocast_bf16,
        unet=unet, alphas_cumprod=alphas, bank_versions=versions)
    rank = ray.train.get_context().get_world_rank()
    state = new_dia_state(cfg, device, rank)
    rank, world, starts = restore(state, config, device, STATE_FILE, PROGRESS_FILE, "epoch")
    if world > 1:
        if config["use_gpu"]:
            state.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(state.model)
        state.model = prepare_model(state.model, move_to_device=device)
    every = max(1, int(config.get("checkpoint_every", 1)))

    def on_epoch(st, metrics: dict[str, Any]) -> None:
        if config.get("epoch_delay"):
            time.sleep(config["epoch_delay"])
        done = st.epoch == cfg.epochs
        if st.epoch % every and not done:
            return
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        report.update(epoch=st.epoch, auroc_best_test=st.best_auroc, auroc_last=st.last_auroc, starts=starts)
        if rank != 0:
            ray.train.report(report)
            return

        def write(tmp: Path) -> None:
            torch.save(st.state_dict(), tmp / STATE_FILE)
            (tmp / PROGRESS_FILE).write_text(json.dumps({"starts": starts, "epoch": st.epoch}))
            if done:
                final = {
                    "auroc_last": st.last_auroc, "auroc_best_test": st.best_auroc, "best_epoch": st.best_epoch,
                    "epochs": st.epoch, "test_scores": st.last_scores,
                    "test_labels": data.test_labels.tolist(), "wall_time_s": st.wall_seconds,
                    "images_per_s": st.images_seen / st.train_seconds if st.train_seconds else 0.0,
                    "workers": world, "device": device.type, "starts": starts, "history": st.history,
                    "n_train": len(data.train), "n_test": len(data.test),
                    "t_range": list(t_range_for(cfg, spec.t_range)) if d.kind == "diffusion" else None,
                }
                (tmp / FINAL_FILE).write_text(json.dumps(final))

        report_with_checkpoint(report, write, config["local"])

    fit(cfg, data, dissolver, device=device, state=state, rank=rank, world=world, on_epoch=on_epoch,
        **fit_hooks(cfg.epochs, enabled=rank == 0))


def read_record(path: Path) -> ResultRecord | None:
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return ResultRecord.model_validate_json(lines[-1]) if lines else None


def train_dia_ray(
    cfg: TrainConfig,
    ref: DataRef,
    storage: str | os.PathLike,
    *,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    ddpm_path: str | os.PathLike | None = None,
    bank_path: str | os.PathLike | None = None,
    max_failures: int = 3,
    keep_checkpoints: int = 2,
    checkpoint_every: int = 1,
    run_dir: str | os.PathLike | None = None,
    record_file: str | os.PathLike | None = None,
    callbacks: list | None = None,
    extra: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    pid_dir: str | None = None,
    epoch_delay: float = 0.0,
) -> ResultRecord:
    """Train (or resume) one run and return its result record, written to ``record_file`` (default
    ``STORAGE/results/train/<run>.jsonl``) when it finishes. A run whose record exists is not trained again."""
    root = ensure_writable(storage)
    out = Path(record_file) if record_file else record_path(root, cfg)
    done = read_record(out)
    if done is not None:
        log.info("run %s is complete (%s); not training again", run_key(cfg), out)
        return done
    if cfg.dissolve.kind == "diffusion" and not (ddpm_path or bank_path):
        raise CheckpointError("method 'dia' needs a DDPM (--ddpm PATH) or a dissolved bank")
    config = {
        "train": cfg.model_dump(mode="json"),
        "data": ref.__dict__,
        "ddpm_path": str(ddpm_path) if ddpm_path else None,
        "bank_path": str(bank_path) if bank_path else None,
        "checkpoint_every": checkpoint_every,
        "pid_dir": pid_dir,
        "log_context": run_context(cfg.dataset, cfg.method, cfg.seed, (extra or {}).get("trial_id")),
        # fault-injection tests slow epochs down (argument or DIA_RAY_EPOCH_DELAY) to have time to kill things
        "epoch_delay": epoch_delay or float(os.environ.get("DIA_RAY_EPOCH_DELAY", "0")),
    }
    runs = Path(run_dir or (root / "runs" / cfg.dataset))
    validate_resume(runs / f"run-{run_key(cfg)}", STATE_FILE, (PROGRESS_FILE,))
    result = fit_trainer(_worker, config, name=f"run-{run_key(cfg)}", storage_path=runs, workers=workers,
                         use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, max_failures=max_failures,
                         keep_checkpoints=keep_checkpoints, callbacks=callbacks)
    if result.checkpoint is None:
        raise CheckpointError(f"run {run_key(cfg)} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        final_file = Path(d) / FINAL_FILE
        if not final_file.is_file():
            raise CheckpointError(f"run {run_key(cfg)}: the last checkpoint holds no final evaluation")
        final = json.loads(final_file.read_text())
    record = make_record(cfg, final, bank_path is not None, params=params, extra=extra)
    write_records(out, [record])
    return record


def make_record(cfg: TrainConfig, final: dict[str, Any], from_bank: bool, *, params: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> ResultRecord:
    import ray
    import torch

    import dia_ray

    d = cfg.dissolve
    t_range = final.get("t_range") or (None, None)
    p = {"t_min": t_range[0], "t_max": t_range[1], "kernel_size": d.kernel_size if d.kind in ("gaussian", "median") else None,
         "resolution": d.resolution if d.kind != "none" else None, "shift": cfg.shift, "loss_mode": cfg.loss_mode,
         "backbone": cfg.backbone, "epochs": cfg.epochs, "batch_size": cfg.batch_size}
    p.update(params or {})
    return ResultRecord(
        dataset=cfg.dataset, method=cfg.method, seed=cfg.seed, config_hash=cfg.config_hash(),
        config=cfg.model_dump(mode="json"), params=p,
        auroc_last=final["auroc_last"], auroc_best_test=final["auroc_best_test"], best_epoch=final["best_epoch"],
        epochs=final["epochs"], test_scores=final["test_scores"], test_labels=final["test_labels"],
        wall_time_s=final["wall_time_s"], images_per_s=final["images_per_s"], workers=final["workers"],
        device=final["device"], device_hours=final["workers"] * final["wall_time_s"] / 3600.0,
        dissolve_mode="bank" if from_bank else ("online" if d.kind != "none" else "none"),
        starts=final.get("starts", [0]),  # epochs at which the run (re)started: [0] = never resumed
        versions={"dia_ray": dia_ray.__version__, "torch": torch.__version__, "ray": ray.__version__,
                  "python": platform.python_version()},
        **(extra or {}),
    )
