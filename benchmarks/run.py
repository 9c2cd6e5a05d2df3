"""Runs the chosen parts in order and assembles the one results dict (``run``), writes it atomically (``write``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import measure, suite
from benchmarks.config import BenchConfig
from benchmarks.report import check_targets

log = logging.getLogger("benchmarks")


def _peaks(bc: BenchConfig, into: dict[str, list[float]]) -> None:
    into["fp32"].append(measure.matmul_peak_gflops(bc.matmul_n, clock=bc.clock))
    into["bf16"].append(measure.matmul_peak_gflops(bc.matmul_n, dtype=torch.bfloat16, clock=bc.clock))


def run(bc: BenchConfig, workdir: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    """All parts of ``bc``; with ``out``, the results so far are written after every part (``complete`` false), so a
    stopped run leaves what it measured."""
    t_start = time.perf_counter()
    if bc.threads:
        torch.set_num_threads(bc.threads)
    load_start = os.getloadavg()
    own = workdir is None
    work_dir = Path(tempfile.mkdtemp(prefix="dia-ray-bench-")) if own else Path(workdir)
    try:
        work = suite.load_workload(work_dir / "data")
        peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
        _peaks(bc, peaks)
        results: dict[str, Any] = {"benchmark": "dia-ray performance (issue 13)", "config": bc.as_dict()}
        seconds: dict[str, float] = {}

        def ray_part() -> dict[str, Any]:
            from benchmarks.ray_overhead import ray_overheads

            return ray_overheads(bc, work.root, work_dir / "ray", work.t_range)

        parts = (("step", "training_step", lambda: suite.training_steps(bc, work)),
                 ("eval", "evaluation", lambda: suite.evaluation(bc, work)),
                 ("ddpm", "ddpm_training", lambda: suite.ddpm_training(bc, work)),
                 ("auroc", "auroc", lambda: suite.auroc_bf16_vs_fp32(bc, work)),
                 ("disyre", "disyre", lambda: suite.disyre_speed(bc, work)),
                 ("ray", "ray", ray_part))
        for part, key, fn in parts:
            if part not in bc.parts:
                continue
            t0 = time.perf_counter()
            results[key] = fn()
            seconds[part] = time.perf_counter() - t0
            _peaks(bc, peaks)
            _finish(results, bc, peaks, seconds, load_start, t_start, complete=False)
            if out is not None:
                write(results, out)
        return _finish(results, bc, peaks, seconds, load_start, t_start, complete=True)
    finally:
        if own:
            shutil.rmtree(work_dir, ignore_errors=True)


def _finish(results: dict[str, Any], bc: BenchConfig, peaks: dict[str, list[float]], seconds: dict[str, float],
            load_start: tuple[float, float, float], t_start: float, complete: bool) -> dict[str, Any]:
    if "training_step" in results:
        _peak_fractions(results["training_step"], max(peaks["fp32"]))
    results["peak"] = {"fp32_gflops": round(max(peaks["fp32"]), 1), "bf16_gflops": round(max(peaks["bf16"]), 1),
                       "samples_fp32": [round(p, 1) for p in peaks["fp32"]],
                       "samples_bf16": [round(p, 1) for p in peaks["bf16"]],
                       "how": f"best of 8 {bc.matmul_n}x{bc.matmul_n} matmuls ({bc.clock} clock, torch's threads), at "
                              "the start and after every part; fractions use the best"}
    results["machine"] = {**measure.machine(), "loadavg_start": [round(x, 2) for x in load_start],
                          "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    results["clock"] = bc.clock
    results["part_seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    results["targets"] = check_targets(results)
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    results["complete"] = complete
    return results


def _peak_fractions(step: dict[str, Any], peak: float) -> None:
    """(d): each step's achieved FLOP/s as a fraction of the run's best fp32 matmul rate."""
    for method in ("dia", "csi", "blur"):
        for r in step.get(method, {}).values():
            r["fraction_of_fp32_peak"] = round(r["achieved_gflops"] / peak, 3)


def write(results: dict[str, Any], out: Path) -> None:
    """JSON to ``out`` via a temporary file and a rename: never half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(out)
