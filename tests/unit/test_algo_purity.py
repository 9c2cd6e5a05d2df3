"""The algorithm core is plain PyTorch (ARCHITECTURE: ``algo/`` is the math, ``distributed/`` the harness): importing
any of it must not import Ray, and no file under dia_ray/algo may mention a Ray import."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import dia_ray.algo

ALGO_DIR = Path(dia_ray.algo.__file__).parent
RAY_IMPORT = re.compile(r"^\s*(import\s+ray\b|from\s+ray\b)|__import__\(\s*['\"]ray|import_module\(\s*['\"]ray", re.MULTILINE)


def _algo_modules() -> list[str]:
    return sorted(f"dia_ray.algo.{p.stem}" for p in ALGO_DIR.glob("*.py") if p.stem != "__init__")


def test_algo_package_has_the_expected_modules():
    names = set(_algo_modules())
    for module in ("ddpm", "dissolve", "resolution", "losses", "scoring", "loops", "shifts", "augment", "resnet",
                   "lars"):
        assert f"dia_ray.algo.{module}" in names


def test_importing_every_algo_module_does_not_import_ray():
    code = (
        "import importlib, json, sys\n"
        f"for name in {_algo_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         cwd=ALGO_DIR.parents[1])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_no_algo_file_imports_ray():
    offenders = [p.name for p in sorted(ALGO_DIR.rglob("*.py")) if RAY_IMPORT.search(p.read_text())]
    assert offenders == []


def test_the_ray_import_pattern_catches_what_it_should():
    for line in ("import ray", "from ray import train", "    import ray.data as rd", "x = __import__('ray')",
                 "importlib.import_module(\"ray.train\")"):
        assert RAY_IMPORT.search(line), line
    for line in ("import raylib", "# Nothing here imports Ray", "from rays import x", "array = 1"):
        assert not RAY_IMPORT.search(line), line
