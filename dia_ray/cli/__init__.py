"""The ``dia-ray`` command line. Thin: parse options, call one library function, print.

Each command group lives in its own module and registers itself on :data:`app`. Heavy imports (torch, ray)
happen inside the command functions so that ``dia-ray --help`` and bad-input errors are instant.
Errors the user can cause are :class:`~dia_ray.errors.DiaRayError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from dia_ray.errors import DiaRayError

app = typer.Typer(
    name="dia-ray",
    help="Distributed benchmarking of DIA (Dissolving Is Amplifying) for fine-grained medical anomaly detection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from dia_ray.cli import bank, data, demo, jobs, leaderboard, report, sweep, train  # noqa: F401  (register commands)


def _configure_logging(level: str) -> None:
    """Progress (INFO and below) on stdout, warnings and errors on stderr: a failing command's stderr is its one
    error line (plus any warnings), not the progress that came before it."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(fmt)
    out.addFilter(lambda rec: rec.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    err.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [out, err]
    root.setLevel(level)
    for noisy in ("ray", "urllib3", "filelock", "matplotlib", "PIL", "diffusers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turn user errors into one line + exit code 2."""
    _configure_logging(os.environ.get("DIA_RAY_LOG_LEVEL", "INFO"))
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except DiaRayError as err:
        print(f"dia-ray: error: {err}", file=sys.stderr)
        return err.exit_code
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def run() -> None:
    sys.exit(main())
