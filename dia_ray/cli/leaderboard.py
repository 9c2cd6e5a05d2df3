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
    from dia_ray.errors import StorageError
    from dia_ray.results.collect import collect
    from dia_ray.results.leaderboard import build, parse_formats, to_terminal, write_all

    wanted = parse_formats(formats)
    collection = collect(storage)
    for problem in collection.problems[:MAX_WARNINGS]:
        typer.echo(f"dia-ray: warning: {problem}", err=True)
    if len(collection.problems) > MAX_WARNINGS:
        typer.echo(f"dia-ray: warning: ... and {len(collection.problems) - MAX_WARNINGS} more problems", err=True)
    if collection.empty:
        raise StorageError(collection.summary())
    table = build(collection, by=by, compare_paper=compare_paper)
    typer.echo(to_terminal(table))
    typer.echo(collection.summary())

    from dia_ray.results.plots import plot_ablation, plot_auroc, swept_params

    out_dir = out or storage / "leaderboard"
    written = write_all(table, out_dir, wanted)
    written.append(plot_auroc(table, out_dir / "leaderboard.png"))
    frame = collection.frame()
    written += [plot_ablation(frame, param, out_dir / f"ablation_{param}.png") for param in swept_params(frame)]
    for path in written:
        typer.echo(f"wrote {path}")
