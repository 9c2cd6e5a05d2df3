"""``dia-ray leaderboard STORAGE``: tables and figures from the result records on disk (no cluster needed)."""

from __future__ import annotations

from typing import Optional

import typer

from dia_ray.cli import app

MAX_WARNINGS = 20  # a storage root full of broken files should not bury the table


def warn_problems(problems: list[str]) -> None:
    """The collector's problems on stderr, one line each (at most :data:`MAX_WARNINGS`)."""
    for problem in problems[:MAX_WARNINGS]:
        typer.echo(f"dia-ray: warning: {problem}", err=True)
    if len(problems) > MAX_WARNINGS:
        typer.echo(f"dia-ray: warning: ... and {len(problems) - MAX_WARNINGS} more problems", err=True)


def publish_or_explain(storage: str, **options):
    """:func:`~dia_ray.results.report.publish`, printing the skipped files' problems before a no-records error."""
    from dia_ray.results.report import NoRecordsError, publish

    try:
        return publish(storage, **options)
    except NoRecordsError as err:
        warn_problems(err.problems)
        raise


@app.command("leaderboard")
def leaderboard(
    storage: str = typer.Argument(..., help="Storage root of a sweep or demo, a folder or a URI such as "
                                  "s3://bucket/prefix (its *.jsonl result records are read)."),
    formats: Optional[list[str]] = typer.Option(
        None, "--format", "-f", help="md, csv, json, html, latex; repeat or comma-separate (default: all). csv or "
        "json alone prints the data on stdout and writes nothing (to pipe it)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder or URI (default: STORAGE/leaderboard)."),
    compare_paper: bool = typer.Option(
        True, "--compare-paper/--no-compare-paper", help="Put the paper's numbers (best-test epoch) beside ours."),
    by: str = typer.Option("method", "--by", help="method: best config per method; config: every config "
                           "(written as *_by_config.*)."),
    wide: bool = typer.Option(False, "--wide", help="Every column in the terminal table (default: fits 100 columns)."),
) -> None:
    """Print the leaderboard (mean ± std over seeds, DeLong CIs, paper comparison) and write tables, the HTML
    report and figures (PNG, SVG, PDF)."""
    from pathlib import Path

    from dia_ray.errors import ConfigError
    from dia_ray.paths import writable_dir
    from dia_ray.results.leaderboard import DATA_FORMATS, parse_formats
    from dia_ray.storage import is_uri

    wanted = parse_formats(formats)
    if formats and not any(part.strip() for item in formats for part in item.split(",")):
        raise ConfigError(f"--format {','.join(formats)!r} names no format; choose from: md, csv, json, html, latex")
    if by not in ("method", "config"):
        raise ConfigError(f"--by '{by}' unknown; choose from: method, config")
    if len(wanted) == 1 and wanted[0] in DATA_FORMATS:
        report = publish_or_explain(storage, formats=wanted, compare_paper=compare_paper, by=by, write=False,
                                    figures=False, terminal=False)
        warn_problems(report.problems)
        (data,) = report.files.values()
        typer.echo(data, nl=False)
        return
    # where the files go (local folders), checked before anything is read or written
    if out is not None and not is_uri(out):
        writable_dir(out, "--out")
    elif out is None and not is_uri(storage) and Path(storage).is_dir():
        writable_dir(Path(storage) / "leaderboard", "leaderboard folder")
    report = publish_or_explain(storage, formats=wanted, out=out, compare_paper=compare_paper, by=by, wide=wide)
    warn_problems(report.problems)
    typer.echo(report.text)
    typer.echo(report.summary)
    for path in report.written:
        typer.echo(f"wrote {path}")
