"""`dia-ray demo`: the whole system on a laptop, offline — local Ray, the synthetic fine-grained dataset, a small
DDPM (Ray Train), a dissolved bank (Ray Data actor pool), the `sweeps/demo.yaml` study (Tune + Optuna: DIA vs CSI vs
a blur baseline, 2 seeds), the leaderboard and the HTML report. Re-running it resumes: finished work is reused."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from dia_ray.errors import ConfigError

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]


def demo_sweep_file() -> Path:
    path = PROJECT / "sweeps" / "demo.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the demo from a checkout of dia-ray (pip install -e .)")
    return path


def run_demo(storage: str | Path, *, sweep_file: str | Path | None = None, stage=print):
    """Run every stage, calling ``stage(message)`` as each begins; returns the leaderboard report."""
    from dia_ray.data.registry import get_spec
    from dia_ray.distributed.bank import build_bank
    from dia_ray.distributed.pipeline import Placement, data_ref, ddpm_config, ensure_ddpm, preflight
    from dia_ray.distributed.runtime import connect
    from dia_ray.distributed.sweep import SweepPaths, run_sweep
    from dia_ray.results.report import publish
    from dia_ray.sweepfile import load_sweep

    t0 = time.time()
    root, _ = preflight(Placement(workers=1), storage)
    data_dir = root.join("data")
    sweep = load_sweep(sweep_file or demo_sweep_file(), data_root=data_dir)
    dataset = sweep.datasets[0]
    stage(f"[1/5] local Ray cluster (loopback only) and the synthetic fine-grained dataset in {data_dir}")
    ref, loaded = data_ref(dataset, sweep.data_root)
    connect(None)
    ref = ref.share(loaded)
    res = sweep.resources
    stage("[2/5] DDPM on the normal training images (Ray Train)")
    # nothing else runs yet: the DDPM gets every local CPU (torch threads), the sweep's trials share them later
    ddpm = ensure_ddpm(ref, ddpm_config(dataset, sweep.budget, **sweep.ddpm), root,
                       Placement(workers=res.workers), float(os.cpu_count() or 1))
    stage("[3/5] dissolved bank (Ray Data actor pool -> Parquet)")
    cfg = sweep.train_config(dataset, {}, sweep.seeds[0])
    b = sweep.bank
    t_range = (cfg.dissolve.t_min, cfg.dissolve.t_max) if cfg.dissolve.t_min is not None else get_spec(dataset).t_range
    bank = build_bank(ref, ddpm, root, t_range=tuple(t_range), versions=b.versions, resolution=cfg.dissolve.resolution,
                      seed=0, actors=b.actors, batch_size=b.batch_size, num_cpus_per_actor=b.cpus_per_actor)
    stage(f"      bank {bank.path} ({'built' if bank.built else 'reused'})")
    stage(f"[4/5] sweep '{sweep.name}': {', '.join(sweep.methods)} x seeds {sweep.seeds} (Tune + Optuna)")
    resume = root.exists(SweepPaths(root, sweep.name).dataset(dataset), "tune")
    run_sweep(sweep, root, resume=resume)
    stage("[5/5] leaderboard and report")
    report = publish(root)
    stage(f"demo finished in {time.time() - t0:.0f} s")
    return report
