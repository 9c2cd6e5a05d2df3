"""Precomputed dissolved bank vs online dissolving (ARCHITECTURE.md: "the benchmark reports speed and the AUROC
difference between them"). Prints ONE JSON object on stdout (logs go to stderr):

(a) DIA training throughput (images/s) with the bank vs online, same model/batch/machine, side by side in this one
    process: one warm-up iteration each, then alternating rounds of a few iterations per mode; ratio bank/online.
(b) bank build throughput (images·versions/s): the Ray Data actor pool (2 actors x 1 thread, 0.5 CPU each) vs the
    single-process loop (torch's 2 threads) on the same 2 cores; the pool's time includes starting its actors.
(c) AUROC (last epoch) of both modes on the synthetic dataset over 3 seeds with a small explicit budget, mean ± std
    per mode and the paired difference. Same seed → same initial weights and batches; only branch 3 differs.

All stages run in-process through the same functions the Ray Train wrappers call (``dia_ray.algo.loops.fit``), so
the comparison measures dissolving, not Train worker start-up. Budget (all explicit, recorded in the JSON): the
``tiny`` budget's DDPM UNet (16, 32) trained for ``--ddpm-steps`` steps; the contrastive runs are a trimmed
``small`` budget (``--epochs`` x ``--iters`` iterations of ``--batch`` images). Defaults finish in ~10 min on an
idle 2-core machine; on a shared one, expect noisier and slower numbers (the JSON records the load average).

    .venv/bin/python benchmarks/bank_vs_online.py [--seeds 3] [--versions 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the loopback cluster this script starts itself

log = logging.getLogger("bank_vs_online")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=None, help="Where data, DDPM and banks go (default: a temp dir).")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--versions", type=int, default=8, help="K dissolved versions per image in the bank.")
    p.add_argument("--ddpm-steps", type=int, default=30)
    p.add_argument("--ddpm-batch", type=int, default=16)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--speed-batch", type=int, default=32, help="Images per DIA step for the throughput part (a).")
    p.add_argument("--speed-iters", type=int, default=2, help="Measured iterations per mode per round in (a).")
    p.add_argument("--speed-rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="Epochs per AUROC run (c).")
    p.add_argument("--iters", type=int, default=5, help="Iterations per epoch in (c).")
    p.add_argument("--batch", type=int, default=16, help="Images per step in (c).")
    return p.parse_args()


def mean_std(values: list[float]) -> dict[str, float | list[float]]:
    return {"values": [round(v, 4) for v in values], "mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def train_ddpm_briefly(images, args, out: Path) -> Path:
    import torch

    from dia_ray.algo.ddpm import new_state, save_ddpm, train_ddpm
    from dia_ray.distributed.pipeline import ddpm_config

    cfg = ddpm_config("synthetic", "tiny", steps=args.ddpm_steps, batch_size=args.ddpm_batch)
    t0 = time.perf_counter()
    state = train_ddpm(torch.from_numpy(images), cfg, new_state(cfg))
    log.info("DDPM: %d steps in %.1f s, last loss %.4f", cfg.steps, time.perf_counter() - t0, state.losses[-1])
    return save_ddpm(out, state, cfg)


def bank_builds(ref, ddpm: Path, work: Path, t_range, args) -> tuple[dict, Path]:
    import ray
    import torch

    from dia_ray.distributed.bank import build_bank, build_bank_local
    from dia_ray.distributed.runtime import connect

    local = build_bank_local(ref, ddpm, work / "storage-local", t_range=t_range, versions=args.versions,
                             batch_size=64)
    connect(num_cpus=2, log_to_driver=False)
    t0 = time.perf_counter()
    pool = build_bank(ref, ddpm, work / "storage-ray", t_range=t_range, versions=args.versions, actors=args.actors,
                      batch_size=64, num_cpus_per_actor=0.5, progress=False)
    pool_wall = time.perf_counter() - t0
    ray.shutdown()
    one_thread = dissolve_throughput_one_thread(ref, ddpm, t_range, args.versions)
    rows = local.manifest.counts.rows
    lb, pb = local.manifest.build, pool.manifest.build
    out = {
        "images": local.manifest.counts.images, "versions": args.versions, "rows": rows, "batch_size": 64,
        "same_key": local.key == pool.key,
        "ray_actor_pool": {"actors": args.actors, "cpus_per_actor": 0.5, "threads_per_actor": 1,
                           "actors_used": len(pb["actors_used"]), "seconds": pb["seconds"],
                           "images_versions_per_s": pb["rows_per_s"],
                           "seconds_incl_ray_start_and_manifest": round(pool_wall, 2)},
        "local_loop": {"threads": torch.get_num_threads(), "seconds": lb["seconds"],
                       "images_versions_per_s": lb["rows_per_s"]},
        "ratio_ray_over_local": round(pb["rows_per_s"] / lb["rows_per_s"], 3),
        "local_1_thread_dissolve_only": one_thread,
        "note": "pool seconds include starting 2 actors (import torch/diffusers, load the DDPM) and the Parquet write; "
                "local_1_thread_dissolve_only is what one single-threaded actor's work runs at in this process (no "
                "I/O), to tell the pool's parallelism apart from the 2-thread loop's OpenMP overhead",
    }
    return out, local.path


def dissolve_throughput_one_thread(ref, ddpm: Path, t_range, versions: int, images: int = 128) -> dict:
    """Rows/s of :func:`dissolve_rows` on ``images`` images with torch limited to 1 thread (an actor's setting)."""
    import torch

    from dia_ray.distributed.bank import BankRecipe, _load_dissolver, dissolve_rows

    recipe = BankRecipe(str(ddpm), *t_range, versions, 32, 0, "raw01", False)
    dissolver = _load_dissolver(recipe, "cpu")
    pixels = ref.load().train.images[:images]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dissolve_rows(dissolver, [0], pixels[:1], recipe)  # warm-up
        t0 = time.perf_counter()
        for start in range(0, images, 64):
            dissolve_rows(dissolver, list(range(start, start + 64)), pixels[start : start + 64], recipe)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return {"images": images, "rows": images * versions, "seconds": round(seconds, 2),
            "images_versions_per_s": round(images * versions / seconds, 2)}


def speed(data, bank_versions, online, args) -> dict:
    import torch

    from dia_ray.algo.dissolve import BankDissolver
    from dia_ray.algo.loops import new_dia_state, train_epoch
    from dia_ray.distributed.pipeline import train_config

    modes = {"bank": BankDissolver(bank_versions), "online": online}
    cfg = {m: train_config("synthetic", "dia", "small", {"batch_size": args.speed_batch, "max_iters_per_epoch": 1,
                                                         "dissolve": {"mode": m}}) for m in modes}
    states = {m: new_dia_state(cfg[m]) for m in modes}
    for m in modes:  # warm-up: first-call allocations, oneDNN kernel selection
        train_epoch(states[m], data, cfg[m], modes[m])
    seconds = dict.fromkeys(modes, 0.0)
    images = dict.fromkeys(modes, 0)
    for _ in range(args.speed_rounds):
        for m in modes:
            c = cfg[m].model_copy(update={"max_iters_per_epoch": args.speed_iters})
            s0, i0 = states[m].train_seconds, states[m].images_seen
            train_epoch(states[m], data, c, modes[m])
            seconds[m] += states[m].train_seconds - s0
            images[m] += states[m].images_seen - i0
    ips = {m: images[m] / seconds[m] for m in modes}
    return {"batch": args.speed_batch, "views_per_step": 3 * 4 * args.speed_batch,
            "iterations_per_mode": args.speed_iters * args.speed_rounds, "torch_threads": torch.get_num_threads(),
            "bank_images_per_s": round(ips["bank"], 3), "online_images_per_s": round(ips["online"], 3),
            "ratio_bank_over_online": round(ips["bank"] / ips["online"], 3),
            "online_unet_calls": online.calls}


def aurocs(data, bank_versions, online, args) -> tuple[dict, dict]:
    from dia_ray.algo.dissolve import BankDissolver
    from dia_ray.algo.loops import fit
    from dia_ray.distributed.pipeline import train_config

    over = {"epochs": args.epochs, "max_iters_per_epoch": args.iters, "batch_size": args.batch,
            "eval": {"samples": 1, "every": args.epochs, "max_train_images": 128}}
    res: dict[str, list[float]] = {"bank": [], "online": []}
    for seed in range(args.seeds):
        for mode in res:
            cfg = train_config("synthetic", "dia", "small", {**over, "seed": seed, "dissolve": {"mode": mode}})
            dissolver = BankDissolver(bank_versions) if mode == "bank" else online
            t0 = time.perf_counter()
            state = fit(cfg, data, dissolver)
            res[mode].append(state.last_auroc)
            log.info("AUROC seed %d %s: %.4f (%.1f s)", seed, mode, state.last_auroc, time.perf_counter() - t0)
    diffs = [b - o for b, o in zip(res["bank"], res["online"])]
    out = {"seeds": list(range(args.seeds)), "metric": "auroc_last (CSI score, synthetic test split, 1 = normal)",
           "bank": mean_std(res["bank"]), "online": mean_std(res["online"]),
           "difference_bank_minus_online": mean_std(diffs)}
    return out, over


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args()
    import torch

    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.algo.dissolve import DiffusionDissolver
    from dia_ray.algo.loops import DIAData
    from dia_ray.data import load_dataset, prepare
    from dia_ray.data.registry import get_spec
    from dia_ray.distributed.bank import load_bank_versions
    from dia_ray.distributed.dataref import DataRef

    t_start, load_start = time.perf_counter(), os.getloadavg()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bank-vs-online-"))
    prepare("synthetic", work / "data", seed=0)
    ref = DataRef("synthetic", str(work / "data"))
    ds = load_dataset("synthetic", work / "data")
    t_range = get_spec("synthetic").t_range
    ddpm = train_ddpm_briefly(ds.train.images, args, work / "ddpm" / "model")

    build, bank_path = bank_builds(ref, ddpm, work, t_range, args)
    log.info("bank build: %s", build)
    versions = load_bank_versions(bank_path, len(ds.train))
    unet, scheduler, _ = load_ddpm(ddpm)
    online = DiffusionDissolver(unet, scheduler.alphas_cumprod, t_range, 32)
    data = DIAData.from_arrays(ds.train.images, ds.test.images, ds.test.labels)

    speed_res = speed(data, versions, online, args)
    log.info("training speed: %s", speed_res)
    auroc_res, train_over = aurocs(data, versions, online, args)

    result = {
        "benchmark": "bank_vs_online",
        "dataset": {"name": "synthetic", "train_images": len(ds.train), "test_images": len(ds.test),
                    "image_size": 28, "ddpm_resolution": 32, "t_range": list(t_range)},
        "budget": {"name": "explicit: tiny DDPM (trained briefly) + trimmed small training",
                   "ddpm": {"base": "tiny", "unet_block_out_channels": [16, 32], "steps": args.ddpm_steps,
                            "batch_size": args.ddpm_batch},
                   "train": {"base": "small", **train_over}, "bank_versions": args.versions},
        "training_speed": speed_res,
        "bank_build": build,
        "auroc": auroc_res,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg()},
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
