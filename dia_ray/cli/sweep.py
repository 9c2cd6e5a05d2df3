"""``dia-ray sweep FILE``: Ray Tune + Optuna over one study per dataset, all datasets at once, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dia_ray.cli import app

PARTIAL_EXIT = 3  # some studies failed or some trials errored: finished work is kept, `--resume` retries the rest


@app.command("sweep")
def sweep(
    file: Path = typer.Argument(..., help="Sweep YAML (see sweeps/)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Storage root, a folder or a URI such as "
                                          "s3://bucket/prefix: STORAGE/sweeps/<name>/<dataset>/."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Overrides the file's data_root (a folder on "
                                            "the machine running the sweep's driver, or a URI)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (auto, ray://HOST:10001, "
                                          "HOST:6379). Default: a local Ray started for the sweep."),
    resume: bool = typer.Option(False, "--resume", help="Continue a sweep whose driver stopped or was killed: "
                                "finished trials are kept, unfinished, errored and failed studies run again."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the runs, the packing plan on --cluster and the "
                                 "estimated cost; run nothing."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Cluster shape for --dry-run, NODESxGPUSxKIND "
                                          "(default 1x8xA100)."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="Also log trials to this MLflow tracking "
                                             "URI (default: $MLFLOW_TRACKING_URI); one experiment per sweep."),
    wandb_project: Optional[str] = typer.Option(None, "--wandb-project", help="Also log trials to this W&B project."),
) -> None:
    """Run a sweep file; progress per dataset is logged; ends with the best configuration per dataset. Exit code 0:
    everything finished; 3: partial (a study failed or trials errored — rerun with --resume); 2: bad input."""
    from dia_ray.errors import ConfigError
    from dia_ray.data.loading import check_data_root
    from dia_ray.distributed.pipeline import check_address
    from dia_ray.storage import is_uri
    from dia_ray.sweepfile import load_sweep

    spec = load_sweep(file, data_root)
    if dry_run:
        from dia_ray.distributed.sweep import dry_run as describe

        typer.echo(describe(spec, cluster))
        return
    if cluster:
        raise ConfigError("--cluster describes a cluster shape for --dry-run only; to run on a cluster pass --address")
    if not storage:
        raise ConfigError("--storage is required (a folder or a URI such as s3://bucket/prefix)")
    if address is not None:
        check_address(address)
    if spec.data_root and not is_uri(spec.data_root):
        check_data_root(spec.data_root)
    from dia_ray.distributed.sweep import run_sweep

    outcome = run_sweep(spec, storage, address=address, resume=resume, mlflow_uri=mlflow_uri,
                        wandb_project=wandb_project)
    for s in outcome.summaries:
        if s["status"] == "failed":
            typer.echo(f"{s['dataset']}: FAILED — {s['reason']}", err=True)
            continue
        best = s.get("best") or {}
        value = best.get("value")
        shown = "-" if value is None else f"{value:.4f} (mean of seeds {best['seeds']}, {best['method']} {best['params']})"
        early = f", {s['stopped_early']} stopped early" if s.get("stopped_early") else ""
        typer.echo(f"{s['dataset']}: {s['trials']} trial(s){early}, best {spec.metric} {shown}; records in "
                   f"{s['records']}")
        for err in s["errors"]:
            typer.echo(f"  {s['dataset']}: errored trial: {err}", err=True)
    typer.echo(f"leaderboard: dia-ray leaderboard {storage}   (trial logs: tensorboard --logdir {storage}/sweeps)")
    if outcome.failed:
        names = ", ".join(f"{s['dataset']} ({s['status']})" for s in outcome.failed)
        typer.echo(f"dia-ray: sweep partial: {names}; rerun with --resume to retry", err=True)
        raise typer.Exit(PARTIAL_EXIT)
