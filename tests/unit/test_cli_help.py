"""The command line documents itself: every option and argument of every command has help text, `--version` names
the stack, and a usage mistake anywhere is one line."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import typer

import dia_ray
from dia_ray.cli import _register, app

REPO = Path(__file__).resolve().parents[2]


def walk(command, path=("dia-ray",)):
    """(command path, click command) for every command and group below ``command``."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


def all_commands():
    _register()
    return list(walk(typer.main.get_command(app)))


def test_every_option_and_argument_of_every_command_has_help():
    commands = all_commands()
    leaves = [" ".join(p) for p, c in commands if not getattr(c, "commands", None)]
    assert {"dia-ray train", "dia-ray ddpm train", "dia-ray bank build", "dia-ray bank info", "dia-ray sweep",
            "dia-ray leaderboard", "dia-ray demo", "dia-ray submit", "dia-ray jobs logs", "dia-ray data prepare",
            "dia-ray data check"} <= set(leaves), leaves
    missing = [f"{' '.join(path)} {param.opts[0] if param.opts else param.name}"
               for path, command in commands for param in command.params
               if param.name != "help" and not (getattr(param, "help", None) or "").strip()]
    assert not missing, f"options without help: {missing}"
    assert all((c.help or c.short_help or "").strip() for _, c in commands), "a command without a description"


def test_version_names_dia_ray_and_the_stack():
    done = subprocess.run([sys.executable, "-m", "dia_ray", "--version"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    line = done.stdout.strip()
    assert line.startswith(f"dia-ray {dia_ray.__version__} (")
    assert f"ray {metadata.version('ray')}" in line and f"torch {metadata.version('torch')}" in line


def test_every_command_refuses_an_unknown_option_in_one_line():
    for path, command in all_commands():
        if getattr(command, "commands", None):
            continue
        args = [*path[1:], "--no-such-option"]
        done = subprocess.run([sys.executable, "-m", "dia_ray", *args], capture_output=True, text=True, cwd=REPO,
                              timeout=60)
        assert done.returncode == 2, args
        (line,) = done.stderr.splitlines()
        assert line.startswith("dia-ray: error: No such option: --no-such-option"), line
        assert line.endswith(f"(see '{' '.join(path)} --help')"), line
