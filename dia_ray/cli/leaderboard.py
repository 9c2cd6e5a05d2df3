"""``dia-ray leaderboard STORAGE``: tables and plots from the result records on disk (no cluster needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dia_ray.cli import app

MAX_WARNINGS = 20  # a storage root full of broken files should not bury the table


@app.command("leaderboard")
def leaderboard(
    storage: Path = typer.Argument(..., help="Storage root of a sweep or demo (its *.jsonl result records are read)."),
    formats: Optional[list[str]] = typer.Option(
        None, "--format", "-f", help="md, csv, html, json; repeat or comma-separate (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: STORAGE/leaderboard)."),
    compare_paper: bool = typer.Option(
        True, "--compare-paper/--no-compare-paper", help="Put the paper's numbers (best-test epoch) beside ours."),
    by: str = typer.Option("method", "--by", help="method: best config per method; config: every config."),
) -> None:
    """Print the leaderboard (mean ± std over seeds, DeLong CIs, paper comparison) and write tables and PNG plots."""
    from dia_ray.errors import ConfigError
    from dia_ray.paths import writable_dir
    from dia_ray.results.leaderboard import parse_formats
    from dia_ray.results.report import publish

    parse_formats(formats)
    if formats and not any(part.strip() for item in formats for part in item.split(",")):
        raise ConfigError(f"--format {','.join(formats)!r} names no format; choose from: md, csv, html, json")
    if by not in ("method", "config"):
        raise ConfigError(f"--by '{by}' unknown; choose from: method, config")
    if out is not None or storage.is_dir():  # where the files go, checked before anything is read or written
        writable_dir(out if out is not None else storage / "leaderboard", "--out" if out else "leaderboard folder")
    report = publish(storage, formats=formats, out=out, compare_paper=compare_paper, by=by)
    for problem in report.problems[:MAX_WARNINGS]:
        typer.echo(f"dia-ray: warning: {problem}", err=True)
    if len(report.problems) > MAX_WARNINGS:
        typer.echo(f"dia-ray: warning: ... and {len(report.problems) - MAX_WARNINGS} more problems", err=True)
    typer.echo(report.text)
    typer.echo(report.summary)
    for path in report.written:
        typer.echo(f"wrote {path}")
