"""The ``dia-ray`` command line. Thin: parse options, call one library function, print.

Each command group lives in its own module and registers itself on :data:`app`. Heavy imports (torch, ray)
happen inside the command functions so that ``dia-ray --help`` and bad-input errors are instant.
Errors the user can cause — a :class:`~dia_ray.errors.DiaRayError`, a usage error (unknown option, ``--seed abc``),
a Ray worker or node lost mid-run — are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import metadata

import typer

from dia_ray.errors import DiaRayError

app = typer.Typer(
    name="dia-ray",
    help="Distributed benchmarking of DIA (Dissolving Is Amplifying) for fine-grained medical anomaly detection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

VERBOSE_HELP = ("Show everything: dia-ray's debug lines and Ray/Tune/Optuna's own console output, unfiltered "
                "(same as DIA_RAY_LOG_LEVEL=DEBUG). Default: dia-ray's progress, and only warnings of the libraries.")


def _version(value: bool) -> None:
    if not value:
        return
    import dia_ray

    stack = []
    for dist in ("ray", "torch", "diffusers", "optuna"):
        try:
            stack.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            stack.append(f"{dist} missing")
    typer.echo(f"dia-ray {dia_ray.__version__} ({', '.join(stack)}; python {sys.version.split()[0]})")
    raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                 help="Print the versions of dia-ray and of the stack it runs on, and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
) -> None:
    """Distributed benchmarking of DIA (Dissolving Is Amplifying) for fine-grained medical anomaly detection."""
    configure_console(verbose)


def _register() -> None:
    from dia_ray.cli import bank, data, demo, jobs, leaderboard, report, sweep, train  # noqa: F401  (register commands)


def configure_console(verbose: bool = False) -> None:
    """Logging and Ray's console settings for this process, before any command runs (and before ``import ray``).

    Progress (below WARNING) goes to stdout, warnings and errors to stderr: a failing command's stderr is its one
    error line (plus any warnings), not the progress that came before it."""
    from dia_ray.distributed.runtime import console_env
    from dia_ray.progress import LEVEL_ENV, LineFormatter, Verbosity

    if verbose:
        os.environ[LEVEL_ENV] = "DEBUG"  # also reaches the Ray workers (see runtime.connect)
    verbosity = Verbosity.from_env()
    os.environ.update(console_env(verbosity, tty=sys.stdout.isatty()))
    fmt = LineFormatter(verbose=verbosity.raw)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(fmt)
    out.addFilter(lambda rec: rec.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    err.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [out, err]
    root.setLevel(verbosity.libraries)
    logging.getLogger("dia_ray").setLevel(verbosity.own)
    for noisy in ("ray", "urllib3", "filelock", "matplotlib", "PIL", "diffusers"):
        logging.getLogger(noisy).setLevel(verbosity.libraries)


def usage_line(err: typer.TyperException) -> str:
    """A usage error (unknown command or option, bad value, missing argument) as one line with where to look."""
    message = " ".join(err.format_message().split())
    if message.startswith("No such option: --verbose") or message.startswith("No such option: -v"):
        message += " (--verbose is a global option: dia-ray --verbose COMMAND ...)"
    ctx = getattr(err, "ctx", None)
    return f"dia-ray: error: {message}" + (f" (see '{ctx.command_path} --help')" if ctx is not None else "")


def error_line(err: DiaRayError) -> str:
    return "dia-ray: error: " + " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app; user errors become one line on stderr and exit code 2."""
    _register()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args, prog_name="dia-ray", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except typer.TyperException as err:  # typer's (vendored click's) usage errors
        if type(err).__name__ != "NoArgsIsHelpError":  # that one printed the help
            print(usage_line(err), file=sys.stderr)
        return 2
    except typer.Abort:
        print("dia-ray: interrupted", file=sys.stderr)
        return 130
    except DiaRayError as err:
        print(error_line(err), file=sys.stderr)
        return err.exit_code
    except Exception as err:
        if "ray" not in sys.modules:
            raise
        from dia_ray.distributed.runtime import explain_failure

        known = explain_failure(err, command=next((a for a in args if not a.startswith("-")), ""))
        if known is None:
            raise
        print(error_line(known), file=sys.stderr)
        return known.exit_code


def run(argv: list[str] | None = None) -> None:
    """``dia-ray`` / ``python -m dia_ray``: :func:`main`, with this process's file descriptor 2 filtered of the
    Ray C++ lines that read like failures but are not (see :data:`dia_ray.progress.BENIGN_RAY_STDERR`), unless the
    console is raw (``--verbose``, ``DIA_RAY_LOG_LEVEL=INFO|DEBUG``)."""
    from dia_ray.progress import StderrFilter, Verbosity

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        raw = Verbosity.from_env(verbose="--verbose" in args or "-v" in args).raw
    except DiaRayError:
        raw = True  # a bad DIA_RAY_LOG_LEVEL: main() says so
    if raw:
        sys.exit(main(args))
    stderr = StderrFilter().start()
    try:
        code = main(args)
    finally:
        stderr.stop()
    sys.exit(code)
