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
import warnings
from pathlib import Path
from typing import Any

from dia_ray.config import TrainConfig
from dia_ray.distributed.checkpointing import (fit_trainer, padding_bytes, report_with_checkpoint,
                                               restore, state_padding, validate_resume, worker_device)
from dia_ray.distributed.dataref import DataRef
from dia_ray.errors import CheckpointError
from dia_ray.results.maps import MAPS_FILE, read_maps, write_maps
from dia_ray.progress import fit_hooks, run_context
from dia_ray.results.records import ResultRecord, write_records
from dia_ray.storage import Storage, open_storage

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
FINAL_FILE = "final.json"
PROGRESS_FILE = "progress.json"


def run_key(cfg: TrainConfig) -> str:
    return f"{cfg.dataset}-{cfg.method}-{cfg.config_hash()}-s{cfg.seed}"


def record_path(cfg: TrainConfig, subdir: str = "train") -> str:
    """Where a run's result record goes, relative to the storage root."""
    return f"results/{subdir}/{run_key(cfg)}.jsonl"


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
    with warnings.catch_warnings():  # arrays from the object store are read-only; training never writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return DIAData.from_arrays(train, test, labels), ds.spec, train_idx


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.algo.dissolve import make_dissolver
    from dia_ray.algo.disyre import final_summary, fit_disyre, new_disyre_state
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
            from dia_ray.distributed.train_ddpm import local_ddpm

            unet, scheduler, _ = load_ddpm(local_ddpm(config["ddpm_path"]), use_ema=d.use_ema, device=device)
            alphas = scheduler.alphas_cumprod
    dissolver = make_dissolver(
        d.kind, t_range=t_range_for(cfg, spec.t_range), resolution=d.resolution, input_range=d.input_range,
        kernel_size=d.kernel_size, blur_resize=d.blur_resize_to_resolution, precision=cfg.precision,
        unet=unet, alphas_cumprod=alphas, bank_versions=versions)
    rank = ray.train.get_context().get_world_rank()
    disyre = cfg.method == "disyre"
    state = new_disyre_state(cfg, data, device) if disyre else new_dia_state(cfg, device, rank)
    rank, world, starts, progress = restore(state, config, device, STATE_FILE, PROGRESS_FILE, "epoch")
    tracker = None
    if rank == 0 and any((config.get("trackers") or {}).values()):
        from dia_ray.config import flatten
        from dia_ray.distributed.trackers import RunTracker

        tracker = RunTracker(run_key(cfg), flatten(cfg.model_dump(mode="json")), **config["trackers"],
                             ids=progress.get("trackers"))
    if world > 1:
        if config["use_gpu"]:
            state.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(state.model)
        state.model = prepare_model(state.model, move_to_device=device)
    every = max(1, int(config.get("checkpoint_every", 1)))
    context = {"dataset": cfg.dataset, "method": cfg.method, "seed": cfg.seed, **placement_facts(),
               **(config.get("report_extra") or {})}
    seen = {"images": state.images_seen, "seconds": state.train_seconds}

    def on_epoch(st, metrics: dict[str, Any]) -> None:
        """Every epoch on every rank: report the epoch's metrics (Tune sees a curve per trial; a checkpoint rides
        along every ``checkpoint_every`` epochs and after the last)."""
        if config.get("epoch_delay"):
            time.sleep(config["epoch_delay"])
        done = st.epoch == cfg.epochs
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        secs = st.train_seconds - seen["seconds"]
        report.update(context, epoch=st.epoch, auroc_best_test=st.best_auroc, auroc_last=st.last_auroc,
                      starts=starts, last_epoch=done,  # not "done": Tune ends a trial on a result with done=True
                      images_per_s=(st.images_seen - seen["images"]) / secs if secs > 0 else 0.0)
        seen.update(images=st.images_seen, seconds=st.train_seconds)
        if tracker is not None:
            tracker.log(report, step=st.epoch)
        if rank != 0 or (st.epoch % every and not done):
            ray.train.report(report)
            return

        def write(tmp: Path) -> None:
            torch.save({**st.state_dict(), **state_padding(config.get("pad_bytes", 0))}, tmp / STATE_FILE)
            (tmp / PROGRESS_FILE).write_text(json.dumps({"starts": starts, "epoch": st.epoch,
                                                         "trackers": tracker.ids if tracker else {}}))
            if done:
                final = {
                    "auroc_last": st.last_auroc, "auroc_best_test": st.best_auroc, "best_epoch": st.best_epoch,
                    "epochs": st.epoch, "test_scores": st.last_scores,
                    "test_labels": data.test_labels.tolist(), "wall_time_s": st.wall_seconds,
                    "images_per_s": st.images_seen / st.train_seconds if st.train_seconds else 0.0,
                    "workers": world, "device": device.type, "starts": starts, "history": st.history,
                    "n_train": len(data.train), "n_test": len(data.test),
                    "t_range": list(t_range_for(cfg, spec.t_range)) if d.kind == "diffusion" else None,
                    "hardware": hardware(device),
                }
                if disyre:
                    final.update(final_summary(cfg, st))
                    write_maps(tmp / MAPS_FILE, st.maps)
                (tmp / FINAL_FILE).write_text(json.dumps(final))

        report_with_checkpoint(report, write, config["local"], final=done)

    hooks = fit_hooks(cfg.epochs, enabled=rank == 0)
    if disyre:
        fit_disyre(cfg, data, device=device, state=state, rank=rank, world=world, on_epoch=on_epoch, **hooks)
    else:
        fit(cfg, data, dissolver, device=device, state=state, rank=rank, world=world, on_epoch=on_epoch, **hooks)
    if tracker is not None:
        tracker.close()


def placement_facts() -> dict[str, Any]:
    """Where this Train worker runs and what it holds (in every report, so Tune's results show the packing): its
    node and its share of a GPU (fractional when several runs share one). Empty outside a Ray worker (local mode)."""
    import ray

    if not ray.is_initialized():
        return {}
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_share": float(ctx.get_assigned_resources().get("GPU", 0.0)),
            "gpu_ids": ",".join(map(str, ray.get_gpu_ids()))}


def read_record(storage: Storage, rel: str) -> ResultRecord | None:
    """The last record of the JSON-lines file ``rel`` under ``storage`` (None when absent or empty)."""
    if not storage.is_file(rel):
        return None
    lines = [line for line in storage.read_text(rel).splitlines() if line.strip()]
    return ResultRecord.model_validate_json(lines[-1]) if lines else None


def default_checkpoint_every(cfg: TrainConfig) -> int:
    """Checkpoint every epoch for short runs, every 5 epochs from 20 epochs on. A checkpoint is the ResNet-18 and
    its LARS momentum, ~90 MB; at ≥ 100 MB/s to storage its upload takes ≤ 1 s, which an asynchronous upload hides
    behind training anyway, and 5 epochs of a paper-budget run on an A100 take ≥ 20 s (estimate: 201 iterations of
    32 images at ~1,500 img/s plus an evaluation per epoch), so uploads stay under 5% of train time even when
    they block. A lost node costs at most 5 epochs."""
    return 1 if cfg.epochs < 20 else 5


def train_dia_ray(
    cfg: TrainConfig,
    ref: DataRef,
    storage: str | os.PathLike | Storage,
    *,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 1.0,
    ddpm_path: str | os.PathLike | None = None,
    bank_path: str | os.PathLike | None = None,
    max_failures: int = 3,
    keep_checkpoints: int = 2,
    checkpoint_every: int | None = None,
    run_dir: str | None = None,
    record_file: str | None = None,
    callbacks: list | None = None,
    extra: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    report_extra: dict[str, Any] | None = None,
    trackers: dict[str, Any] | None = None,
    pid_dir: str | None = None,
    epoch_delay: float = 0.0,
) -> ResultRecord:
    """Train (or resume) one run and return its result record, written to ``record_file`` (relative to the storage
    root; default ``results/train/<run>.jsonl``) when it finishes. ``run_dir`` (relative; default
    ``runs/<dataset>``) holds the Ray Train run. A run whose record exists is not trained again."""
    st = open_storage(storage)
    out = record_file or record_path(cfg)
    done = read_record(st, out)
    if done is not None:
        log.info("run %s is complete (%s); not training again", run_key(cfg), st.join(out))
        return done
    if cfg.dissolve.kind == "diffusion" and not (ddpm_path or bank_path):
        raise CheckpointError("method 'dia' needs a DDPM (--ddpm PATH) or a dissolved bank")
    config = {
        "train": cfg.model_dump(mode="json"),
        "data": ref.as_dict(),
        "ddpm_path": str(ddpm_path) if ddpm_path else None,
        "bank_path": str(bank_path) if bank_path else None,
        "checkpoint_every": checkpoint_every or default_checkpoint_every(cfg),
        "report_extra": report_extra or {},
        "trackers": trackers or {},
        "pid_dir": pid_dir,
        "log_context": run_context(cfg.dataset, cfg.method, cfg.seed, (extra or {}).get("trial_id")),
        # fault-injection tests slow epochs down (argument or DIA_RAY_EPOCH_DELAY) to have time to kill things
        "epoch_delay": epoch_delay or float(os.environ.get("DIA_RAY_EPOCH_DELAY", "0")),
        "pad_bytes": padding_bytes(),
    }
    runs = run_dir or f"runs/{cfg.dataset}"
    name = f"run-{run_key(cfg)}"
    validate_resume(st, f"{runs}/{name}", STATE_FILE, (PROGRESS_FILE,))
    result = fit_trainer(_worker, config, name=name, storage_path=st.join(runs), workers=workers,
                         use_gpu=use_gpu, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                         max_failures=max_failures, keep_checkpoints=keep_checkpoints, callbacks=callbacks)
    if result.checkpoint is None:
        raise CheckpointError(f"run {run_key(cfg)} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        final_file = Path(d) / FINAL_FILE
        if not final_file.is_file():
            raise CheckpointError(f"run {run_key(cfg)}: the last checkpoint holds no final evaluation")
        final = json.loads(final_file.read_text())
        extra = {**(extra or {}), "run": st.join(runs, name)}
        if (Path(d) / MAPS_FILE).is_file():  # disyre: the anomaly-map samples beside the record
            maps = f"{out.removesuffix('.jsonl')}.maps.npz"
            write_maps(st.join(maps), read_maps(Path(d) / MAPS_FILE))
            extra["maps_file"] = maps.rsplit("/", 1)[-1]
    record = make_record(cfg, final, ddpm_path=ddpm_path, bank_path=bank_path, params=params, extra=extra)
    write_records(st.join(out), [record])
    return record


def hardware(device) -> str:
    """What a worker ran on, for the record: the GPU's name, or the CPU model and core count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()} ({os.cpu_count()} CPUs)"


def provenance(ddpm_path: str | os.PathLike | None, bank_path: str | os.PathLike | None) -> dict[str, Any]:
    """What a run actually dissolved with: the bank (its key and version count, from its manifest) and the DDPM
    (location and key = its folder ``STORAGE/ddpm/<key>/model``; in bank mode the DDPM that built the bank)."""
    from dia_ray.distributed.bank import MANIFEST

    out: dict[str, Any] = {}
    if bank_path:  # verified when the run loaded it; here only read
        manifest = Storage(bank_path).read_json(MANIFEST)
        out.update(bank_path=str(bank_path), bank_key=manifest["key"], bank_versions=manifest["counts"]["versions"])
        ddpm_path = ddpm_path or manifest["config"].get("ddpm_path")
    if ddpm_path:
        out.update(ddpm_path=str(ddpm_path), ddpm_key=str(ddpm_path).rstrip("/").split("/")[-2])
    return out


def make_record(cfg: TrainConfig, final: dict[str, Any], *, ddpm_path: str | os.PathLike | None = None,
                bank_path: str | os.PathLike | None = None, params: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> ResultRecord:
    import ray
    import torch

    import dia_ray

    d = cfg.dissolve
    t_range = final.get("t_range") or (None, None)
    p = {"t_min": t_range[0], "t_max": t_range[1], "kernel_size": d.kernel_size if d.kind in ("gaussian", "median") else None,
         "resolution": d.resolution if d.kind != "none" else None, "shift": cfg.shift, "loss_mode": cfg.loss_mode,
         "backbone": cfg.backbone, "epochs": cfg.epochs, "batch_size": cfg.batch_size}
    p = dict(final["params"]) if "params" in final else p  # disyre: its own knobs, none of DIA's
    p.update(params or {})
    if "score_images_per_s" in final:
        extra = {"score_images_per_s": final["score_images_per_s"], **(extra or {})}
    return ResultRecord(
        dataset=cfg.dataset, method=cfg.method, seed=cfg.seed, config_hash=cfg.config_hash(),
        config=cfg.model_dump(mode="json"), params=p,
        auroc_last=final["auroc_last"], auroc_best_test=final["auroc_best_test"], best_epoch=final["best_epoch"],
        epochs=final["epochs"], test_scores=final["test_scores"], test_labels=final["test_labels"],
        wall_time_s=final["wall_time_s"], images_per_s=final["images_per_s"], workers=final["workers"],
        device=final["device"], device_hours=final["workers"] * final["wall_time_s"] / 3600.0,
        dissolve_mode="bank" if bank_path and d.kind == "diffusion" else ("online" if d.kind != "none" else "none"),
        starts=final.get("starts", [0]),  # epochs at which the run (re)started: [0] = never resumed
        versions={"dia_ray": dia_ray.__version__, "torch": torch.__version__, "ray": ray.__version__,
                  "python": platform.python_version()},
        history=final.get("history", []), t_range=final.get("t_range"), hardware=final.get("hardware", ""),
        **provenance(ddpm_path, bank_path), **(extra or {}),
    )
