"""``dia-ray sweep FILE``: Ray Tune + Optuna over one study per dataset, all datasets at once, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dia_ray.cli import app


@app.command("sweep")
def sweep(
    file: Path = typer.Argument(..., help="Sweep YAML (see sweeps/)."),
    storage: Path = typer.Option(..., "--storage", help="Storage root: STORAGE/sweeps/<name>/<dataset>/."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Overrides the file's data_root."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (auto, ray://HOST:10001, "
                                          "HOST:6379). Default: a local Ray started for the sweep."),
    resume: bool = typer.Option(False, "--resume", help="Continue a sweep whose driver stopped or was killed: "
                                "finished trials are kept, unfinished and errored ones run again."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print trials, resources and estimated cost; run nothing."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="Also log trials to this MLflow server."),
) -> None:
    """Run a sweep file; progress per dataset is logged; ends with the best trial per dataset."""
    from dia_ray.data.loading import check_data_root
    from dia_ray.distributed.pipeline import check_address
    from dia_ray.distributed.storage import is_uri
    from dia_ray.paths import writable_dir
    from dia_ray.sweepfile import load_sweep

    spec = load_sweep(file, data_root)
    from dia_ray.distributed.sweep import dry_run as describe

    if dry_run:
        typer.echo(describe(spec))
        return
    if address is not None:
        check_address(address)
    if not is_uri(storage):
        writable_dir(storage, "storage")
    if spec.data_root:
        check_data_root(spec.data_root)
    from dia_ray.distributed.sweep import run_sweep

    summaries = run_sweep(spec, str(storage), address=address, resume=resume, mlflow_uri=mlflow_uri)
    failed = False
    for s in summaries:
        best = s["best"] or {}
        auroc = best.get("auroc")
        typer.echo(f"{s['dataset']}: {s['trials']} trial(s), best auroc "
                   f"{'-' if auroc is None else f'{auroc:.4f}'} {best.get('config', '')}; records in {s['records_dir']}")
        for err in s["errors"]:
            failed = True
            typer.echo(f"  errored trial: {err}", err=True)
    typer.echo(f"leaderboard: dia-ray leaderboard {storage}   (trial logs: tensorboard --logdir {storage}/sweeps)")
    if failed:
        raise typer.Exit(1)
