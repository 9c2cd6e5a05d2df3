"""``dia-ray leaderboard STORAGE``: tables and plots from the result records on disk (no cluster needed)."""

from __future__ import annotations

from typing import Optional

import typer

from dia_ray.cli import app

MAX_WARNINGS = 20  # a storage root full of broken files should not bury the table


@app.command("leaderboard")
def leaderboard(
    storage: str = typer.Argument(..., help="Storage root of a sweep or demo, a folder or a URI such as "
                                  "s3://bucket/prefix (its *.jsonl result records are read)."),
    formats: Optional[list[str]] = typer.Option(
        None, "--format", "-f", help="md, csv, html, json; repeat or comma-separate (default: all)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder or URI (default: STORAGE/leaderboard)."),
    compare_paper: bool = typer.Option(
        True, "--compare-paper/--no-compare-paper", help="Put the paper's numbers (best-test epoch) beside ours."),
    by: str = typer.Option("method", "--by", help="method: best config per method; config: every config."),
) -> None:
    """Print the leaderboard (mean ± std over seeds, DeLong CIs, paper comparison) and write tables and PNG plots."""
    from dia_ray.results.report import publish

    report = publish(storage, formats=formats, out=out, compare_paper=compare_paper, by=by)
    for problem in report.problems[:MAX_WARNINGS]:
        typer.echo(f"dia-ray: warning: {problem}", err=True)
    if len(report.problems) > MAX_WARNINGS:
        typer.echo(f"dia-ray: warning: ... and {len(report.problems) - MAX_WARNINGS} more problems", err=True)
    typer.echo(report.text)
    typer.echo(report.summary)
    for path in report.written:
        typer.echo(f"wrote {path}")
