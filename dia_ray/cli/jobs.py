"""``dia-ray submit`` and ``dia-ray jobs list|status|logs|stop``: sweeps on a remote Ray cluster via the Jobs API."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Optional

import typer

from dia_ray.cli import app

ADDRESS_ENVVARS = ["DIA_RAY_ADDRESS", "RAY_ADDRESS"]
ADDRESS_HELP = ("Ray dashboard / Jobs API URL, e.g. http://127.0.0.1:8265 (through `ssh -L` or `kubectl "
                "port-forward`). Default: $DIA_RAY_ADDRESS, then $RAY_ADDRESS.")

JOB_ID = "The job's submission id, as `dia-ray submit` and `dia-ray jobs list` print it (raysubmit_...)."

jobs_app = typer.Typer(help="List, inspect, follow and stop jobs on a Ray cluster.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def _address_option() -> Optional[str]:
    return typer.Option(None, "--address", envvar=ADDRESS_ENVVARS, show_envvar=False, help=ADDRESS_HELP)


def _write(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _time(ms: Optional[int]) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _follow_until_done(address: str, job_id: str) -> None:
    """Stream logs until the job ends; exit with 0 (SUCCEEDED) or 1 (FAILED/STOPPED). Ctrl-C stops following only."""
    from dia_ray.distributed.jobs import exit_code, follow

    try:
        status = follow(address, job_id, _write)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following; job {job_id} keeps running (dia-ray jobs stop {job_id})", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"job {job_id} {status}", err=True)
    raise typer.Exit(exit_code(status))


@app.command("submit")
def submit(
    sweep: Path = typer.Argument(..., help="Sweep YAML (e.g. sweeps/table1_main.yaml); shipped with the project."),
    storage: str = typer.Option(..., "--storage", help="Storage root as the cluster sees it: a shared filesystem "
                                "path (/mnt/shared/dia-ray) or an object-store URI (s3://bucket/prefix)."),
    address: Optional[str] = _address_option(),
    wait: bool = typer.Option(False, "--wait", help="Follow the logs until the job ends; exit code = the job's."),
    runtime_env: Optional[Path] = typer.Option(
        None, "--runtime-env", help="YAML runtime_env merged over dia-ray's (e.g. cluster/runtime_env.yaml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a sweep that already has results in --storage "
                                "(after a stop or a failure): finished trials are kept."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Data root as the head node sees it (an "
                                            "absolute path there, or a URI); read by the sweep's driver and shipped "
                                            "to the workers through the object store, never uploaded from here."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="MLflow tracking URI for the sweep's trials."),
    wandb_project: Optional[str] = typer.Option(None, "--wandb-project", help="W&B project for the sweep's trials."),
) -> None:
    """Run a sweep on a Ray cluster: upload the project, start `dia-ray sweep` on the head node. Submitting the same
    sweep file to the same storage again returns the running (or finished) job instead of starting another."""
    from dia_ray.distributed.jobs import submit_sweep

    job = submit_sweep(sweep, address, storage, runtime_env, resume=resume, data_root=data_root,
                       mlflow_uri=mlflow_uri, wandb_project=wandb_project)
    typer.echo(job.job_id)
    if job.reused:
        typer.echo(f"this sweep and storage already have job {job.job_id} ({job.reused}); not starting another",
                   err=True)
    typer.echo(f"submitted to {job.address}: {job.entrypoint}\n"
               f"  follow: dia-ray jobs logs {job.job_id} --follow --address {job.address}\n"
               f"  status: dia-ray jobs status {job.job_id} --address {job.address}\n"
               f"  stop:   dia-ray jobs stop {job.job_id} --address {job.address}", err=True)
    if wait:
        _follow_until_done(job.address, job.job_id)


@jobs_app.command("list")
def list_(address: Optional[str] = _address_option()) -> None:
    """Every job of the cluster, oldest first: id, status, start time, entrypoint."""
    from dia_ray.distributed.jobs import list_jobs

    for job in list_jobs(address):
        job_id = job.submission_id or job.job_id or "-"
        entry = job.entrypoint if len(job.entrypoint) <= 100 else job.entrypoint[:97] + "..."
        typer.echo(f"{job_id:<32} {str(job.status):<10} {_time(job.start_time):<19} {entry}")


@jobs_app.command("status")
def status(job_id: str = typer.Argument(..., help=JOB_ID), address: Optional[str] = _address_option()) -> None:
    """Status, message and times of one job; exit code 0 unless the job FAILED or was STOPPED."""
    from dia_ray.distributed.jobs import exit_code, job_info

    job = job_info(address, job_id)
    typer.echo(f"{job_id}: {job.status}")
    if job.message:
        typer.echo(f"  message:    {' '.join(job.message.split())}")
    typer.echo(f"  entrypoint: {job.entrypoint}")
    typer.echo(f"  started:    {_time(job.start_time)}   ended: {_time(job.end_time)}")
    if job.status.is_terminal():
        raise typer.Exit(exit_code(job.status))


@jobs_app.command("logs")
def logs(
    job_id: str = typer.Argument(..., help=JOB_ID),
    address: Optional[str] = _address_option(),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends."),
) -> None:
    """The job's driver output (what `dia-ray sweep` printed on the head)."""
    from dia_ray.distributed.jobs import job_logs

    if follow:
        _follow_until_done(address, job_id)
    _write(job_logs(address, job_id))


@jobs_app.command("stop")
def stop(job_id: str = typer.Argument(..., help=JOB_ID), address: Optional[str] = _address_option()) -> None:
    """Stop a running job (its trials are cancelled; finished results stay in storage)."""
    from dia_ray.distributed.jobs import stop_job

    stopped = stop_job(address, job_id)
    typer.echo(f"job {job_id}: " + ("stop requested" if stopped else "already finished"))
