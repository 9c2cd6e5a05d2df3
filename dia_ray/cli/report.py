"""``dia-ray report STORAGE``: the self-contained HTML report of the result records on disk."""

from __future__ import annotations

from typing import Optional

import typer

from dia_ray.cli import app
from dia_ray.cli.leaderboard import publish_or_explain, warn_problems


@app.command("report")
def report(
    storage: str = typer.Argument(..., help="Storage root of a sweep or demo, a folder or a URI such as "
                                  "s3://bucket/prefix (its *.jsonl result records are read)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder or URI (default: STORAGE/leaderboard)."),
    compare_paper: bool = typer.Option(
        True, "--compare-paper/--no-compare-paper", help="Put the paper's numbers (best-test epoch) beside ours."),
    by: str = typer.Option("method", "--by", help="method: best config per method; config: every config."),
) -> None:
    """Write one HTML page (no network needed to view it): header with sweeps, dates, versions and hardware, the
    sortable leaderboard, per-dataset figures (CIs and seeds, ROC, score histograms, AUROC per epoch) and links to
    every run's record and Tune trial."""
    done = publish_or_explain(storage, formats=["html"], out=out, compare_paper=compare_paper, by=by,
                              figures=False, terminal=False)
    warn_problems(done.problems)
    typer.echo(done.summary)
    typer.echo(f"wrote {done.html}")
