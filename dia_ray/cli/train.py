"""``dia-ray ddpm train`` and ``dia-ray train``: one DDPM / one contrastive run on Ray Train."""

from __future__ import annotations

import json
from typing import Optional

import typer

from dia_ray.cli import app

ddpm_app = typer.Typer(help="Stage A: the DDPM that dissolving uses.", no_args_is_help=True)
app.add_typer(ddpm_app, name="ddpm")

_BUDGET = ("Named budget: paper (the paper's settings; default for the six datasets), small (2-CPU minutes; default "
           "for synthetic datasets), tiny (seconds, tests). Explicit options override it.")
_ADDRESS = "Ray cluster to use (auto, ray://HOST:10001, HOST:6379). Default: a local Ray started for the run."
DATASET = "Dataset name: one of the paper's six, synthetic, synthetic-folder, or folder (your own images)."
DATA_ROOT = ("Data root on this machine, or a URI (s3://bucket/data): read here and shipped to the workers through the "
             "Ray object store; default $DIA_RAY_DATA_ROOT or ~/.cache/dia-ray/data; for --dataset folder: "
             "DIR/{train,test}.")
NORMAL = "Normal class(es), comma-separated (default: the paper's; required for --dataset folder)."
MAX_FAILURES = "Restarts of the worker group from its last checkpoint after a worker or node dies, before giving up."


@ddpm_app.command("train")
def ddpm_train(
    dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET),
    storage: str = typer.Option(..., "--storage", help="Storage root: a folder or a URI such as s3://bucket/prefix "
                                "(DDPMs go to STORAGE/ddpm/<key>/)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="32 | 64 | 128 (default 32)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (paper: 25000)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch (paper: 256/128/32 by r)."),
    workers: int = typer.Option(1, "--workers", help="Data-parallel Train workers (0 = local mode)."),
    gpu: bool = typer.Option(False, "--gpu", help="Train on GPUs (--gpus-per-worker each)."),
    gpus_per_worker: float = typer.Option(1.0, "--gpus-per-worker", help="GPU share per worker with --gpu."),
    normal_class: Optional[str] = typer.Option(None, "--normal-class", help=NORMAL),
    budget: Optional[str] = typer.Option(None, "--budget", help=_BUDGET),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the UNet's initialisation and of every "
                                       "batch, noise and timestep draw (default 0)."),
    force: bool = typer.Option(False, "--force", help="Retrain even if the DDPM exists."),
    max_failures: int = typer.Option(3, "--max-failures", min=0, help=MAX_FAILURES),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS),
) -> None:
    """Train the DDPM of a dataset data-parallel; prints the folder of the saved model (diffusers layout)."""
    from dia_ray.distributed import pipeline

    placement = pipeline.Placement(workers=workers, use_gpu=gpu, address=address)
    cfg = pipeline.ddpm_config(dataset, budget, workers, resolution=resolution, steps=steps, batch_size=batch_size,
                               seed=seed)
    root, per = pipeline.preflight(placement, storage)
    cfg = pipeline.ddpm_config(dataset, budget, resolution=resolution, steps=steps, batch_size=batch_size, seed=seed)
    ref, loaded = pipeline.data_ref(dataset, data_root, normal_class)
    pipeline.connect_and_check(placement, per, root)
    from dia_ray.distributed.train_ddpm import train_ddpm_ray

    path = train_ddpm_ray(ref.share(loaded), cfg, root, workers=workers, use_gpu=gpu, cpus_per_worker=per,
                          gpus_per_worker=gpus_per_worker, force=force, max_failures=max_failures)
    typer.echo(f"DDPM ready: {path}")


@app.command("train")
def train(
    dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET),
    method: str = typer.Option("dia", "--method", "-m", help="dia | csi | blur-gaussian | blur-median | disyre"),
    storage: str = typer.Option(..., "--storage", help="Storage root: a folder or a URI such as s3://bucket/prefix "
                                "(runs, DDPMs, result records)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (paper: 200; the budget's "
                                         "otherwise)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the run (weights, batches, augmentations); seeds of one "
                             "configuration are grouped in the leaderboard."),
    workers: int = typer.Option(1, "--workers", help="Data-parallel Train workers (0 = local mode)."),
    gpu: bool = typer.Option(False, "--gpu", help="Train on GPUs (--gpus-per-worker each)."),
    gpus_per_worker: float = typer.Option(1.0, "--gpus-per-worker", help="GPU share per worker with --gpu (0.25: "
                                          "four small runs share a GPU)."),
    ddpm: Optional[str] = typer.Option(None, "--ddpm", help="DDPM folder or URI; default: found in storage by its "
                                       "key, trained first when absent."),
    bank: Optional[str] = typer.Option(None, "--bank", help="Use a precomputed dissolved bank (folder or URI; "
                                       "dissolve.mode=bank)."),
    normal_class: Optional[str] = typer.Option(None, "--normal-class", help=NORMAL),
    budget: Optional[str] = typer.Option(None, "--budget", help=_BUDGET),
    t_min: Optional[int] = typer.Option(None, "--t-min", help="Dissolving step range start (paper: 30; Kvasir 130)."),
    t_max: Optional[int] = typer.Option(None, "--t-max", help="Dissolving step range end, exclusive."),
    kernel_size: Optional[int] = typer.Option(None, "--kernel-size", help="Blur kernel 3 | 7 | 11."),
    shift: Optional[str] = typer.Option(None, "--shift", help="rotation | cutperm"),
    set_: list[str] = typer.Option([], "--set", help="Any config value, e.g. --set eval.samples=2 (repeatable)."),
    max_failures: int = typer.Option(3, "--max-failures", min=0, help=MAX_FAILURES),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="Log params and per-epoch metrics to this "
                                             "MLflow tracking URI (default: $MLFLOW_TRACKING_URI)."),
    wandb_project: Optional[str] = typer.Option(None, "--wandb-project", help="Log to this W&B project "
                                                "(WANDB_MODE=offline works without network)."),
) -> None:
    """Train one DIA / CSI / blur / DISYRE run and evaluate it; the last line printed is the result record (JSON)."""
    from dia_ray.distributed import pipeline

    overrides = pipeline.cli_overrides(set_, seed=seed, epochs=epochs, shift=shift, normal_class=normal_class,
                                       dissolve={"t_min": t_min, "t_max": t_max, "kernel_size": kernel_size,
                                                 "mode": "bank" if bank else None})
    cfg = pipeline.train_config(dataset, method, budget, overrides)
    from dia_ray.distributed.trackers import check_trackers

    trackers = check_trackers(mlflow_uri, wandb_project)
    ddpm, bank = pipeline.check_dissolve_inputs(cfg, ddpm, bank)  # before anything is created
    placement = pipeline.Placement(workers=workers, use_gpu=gpu, address=address)
    root, per = pipeline.preflight(placement, storage)
    ref, loaded = pipeline.data_ref(dataset, data_root, normal_class, cfg.image_size)
    record = pipeline.run_training(cfg, ref, root, placement, per, budget=budget, ddpm=ddpm, bank=bank, loaded=loaded,
                                   gpus_per_worker=gpus_per_worker, trackers=trackers,
                                   max_failures=max_failures)
    typer.echo(f"AUROC (last epoch) {record.auroc_last:.4f}, best-on-test {record.auroc_best_test:.4f} "
               f"(epoch {record.best_epoch}); record in {root.join('results')}")
    typer.echo(json.dumps(record.model_dump(mode="json", exclude={"test_scores", "test_labels", "config"})))
