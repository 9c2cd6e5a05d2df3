"""``dia-ray demo``: the whole pipeline end to end on a laptop, offline, ending with the leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dia_ray.cli import app


@app.command("demo")
def demo(
    storage: Path = typer.Option(Path("storage/demo"), "--storage", help="Where everything is written."),
    sweep_file: Optional[Path] = typer.Option(None, "--sweep", help="Sweep file (default: sweeps/demo.yaml)."),
) -> None:
    """Local Ray → synthetic data → DDPM (Ray Train) → bank (Ray Data) → sweep (Tune + Optuna) → leaderboard and
    HTML report."""
    from dia_ray.distributed.demo import run_demo

    report = run_demo(storage, sweep_file=sweep_file, stage=typer.echo)
    typer.echo(report.text)
    typer.echo(report.summary)
    for path in report.written:
        typer.echo(f"wrote {path}")
    typer.echo(f"next: dia-ray leaderboard {storage} --by config   (every configuration, not just the best)")
    typer.echo(f"report: {report.html}   (one page: tables, CIs and seeds, ROC curves, scores, AUROC per epoch)")
