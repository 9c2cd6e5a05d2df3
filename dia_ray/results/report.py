"""One call from result records on disk to rendered outputs (used by `leaderboard`, `report` and `demo`).

:func:`render` turns a collection into ``{file name: content}`` without touching the filesystem; :func:`publish`
collects, renders and writes them with :func:`dia_ray.results.files.write_files`. File names: ``report.html``
(the self-contained page), ``leaderboard.{md,csv,json,tex}``, and the leaderboard figure plus one figure per swept
ablation parameter as ``.png``, ``.svg`` and ``.pdf``; a ``--by config`` run writes the same names with a
``_by_config`` suffix, so it never overwrites the per-method files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dia_ray.errors import StorageError


class NoRecordsError(StorageError):
    """Nothing to tabulate; ``problems`` says what was skipped (the CLI prints them before the error)."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


@dataclass
class Report:
    text: str  # the terminal rendering of the table ("" when not asked for)
    summary: str  # the collector's one-line summary
    problems: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    files: dict[str, str | bytes] = field(default_factory=dict)  # what was rendered, by file name
    table: object = None  # the pandas DataFrame

    @property
    def html(self) -> str | None:
        """The path of the HTML report, if one was written."""
        return next((p for p in self.written if p.endswith(".html")), None)


def default_out(storage: str | os.PathLike) -> str:
    from dia_ray.storage import Storage

    return Storage(storage).join("leaderboard")


def render(collection, table, formats: list[str], out_dir: str, figures: bool = True) -> dict[str, str | bytes]:
    """The files of ``formats`` (:data:`~dia_ray.results.leaderboard.FORMATS`) for leaderboard ``table`` built
    from ``collection``, plus the figures (PNG, SVG, PDF) when ``figures``; links in the HTML point from
    ``out_dir``."""
    from dia_ray.results.leaderboard import EXTENSIONS, TEXT_RENDERERS
    from dia_ray.results.page import render_html, sweep_names
    from dia_ray.results.plots import FIGURE_FORMATS, figure_bytes, plot_ablation, plot_leaderboard, swept_params

    suffix = "_by_config" if table.attrs.get("by") == "config" else ""
    frame = collection.frame()
    files: dict[str, str | bytes] = {}
    for fmt in formats:
        if fmt == "html":
            files[f"report{suffix}.html"] = render_html(table, frame, summary=collection.summary(),
                                                        problems=collection.problems, root=collection.root,
                                                        out_dir=out_dir)
        else:
            files[f"leaderboard{suffix}.{EXTENSIONS[fmt]}"] = TEXT_RENDERERS[fmt](table)
    if figures:
        sweep = ", ".join(sweep_names(frame)) or None
        named = {"leaderboard": plot_leaderboard(table, frame, sweep)}
        named.update({f"ablation_{p}": plot_ablation(frame, p, sweep) for p in swept_params(frame)})
        for name, fig in named.items():
            files.update({f"{name}{suffix}.{fmt}": figure_bytes(fig, fmt) for fmt in FIGURE_FORMATS})
    return files


def publish(storage: str | os.PathLike, *, formats: list[str] | None = None, out: str | os.PathLike | None = None,
            compare_paper: bool = True, by: str = "method", wide: bool = False, write: bool = True,
            figures: bool = True, terminal: bool = True) -> Report:
    """Collect every record under ``storage``, build the leaderboard, render ``formats`` (default: all) and the
    figures, and write them to ``out`` (default ``STORAGE/leaderboard``) unless ``write`` is False. Raises
    :class:`NoRecordsError` when there is nothing to show."""
    from dia_ray.results.collect import collect
    from dia_ray.results.files import write_files
    from dia_ray.results.leaderboard import build, parse_formats, to_terminal
    from dia_ray.storage import Storage

    wanted = parse_formats(formats)
    collection = collect(storage)
    if collection.empty:
        raise NoRecordsError(collection.summary(), list(collection.problems))
    table = build(collection, by=by, compare_paper=compare_paper)
    out_dir = Storage(out).uri if out else default_out(storage)
    files = render(collection, table, wanted, out_dir, figures=figures)
    written = write_files(out_dir, files) if write else []
    return Report(text=to_terminal(table, wide=wide) if terminal else "", summary=collection.summary(),
                  problems=list(collection.problems), written=written, files=files, table=table)
