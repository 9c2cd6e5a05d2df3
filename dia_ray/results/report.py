"""One call from result records on disk to a printed table and written files (used by `leaderboard` and `demo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dia_ray.errors import StorageError


@dataclass
class Report:
    text: str  # the terminal rendering of the table
    summary: str  # the collector's one-line summary
    problems: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    table: object = None  # the pandas DataFrame


def publish(storage: str | Path, *, formats: list[str] | None = None, out: str | Path | None = None,
            compare_paper: bool = True, by: str = "method") -> Report:
    """Collect every record under ``storage``, build the leaderboard, write md/csv/html/json + PNG plots to ``out``
    (default ``STORAGE/leaderboard``). Raises :class:`StorageError` when there is nothing to show."""
    from dia_ray.results.collect import collect
    from dia_ray.results.leaderboard import build, parse_formats, to_terminal, write_all
    from dia_ray.results.plots import plot_ablation, plot_auroc, swept_params

    from dia_ray.storage import Storage

    wanted = parse_formats(formats)
    collection = collect(storage)
    if collection.empty:
        raise StorageError(collection.summary())
    table = build(collection, by=by, compare_paper=compare_paper)
    out_dir = str(out) if out else Storage(storage).join("leaderboard")
    written = write_all(table, out_dir, wanted)
    written.append(plot_auroc(table, f"{out_dir}/leaderboard.png"))
    frame = collection.frame()
    written += [plot_ablation(frame, param, f"{out_dir}/ablation_{param}.png") for param in swept_params(frame)]
    return Report(text=to_terminal(table), summary=collection.summary(), problems=list(collection.problems),
                  written=written, table=table)
