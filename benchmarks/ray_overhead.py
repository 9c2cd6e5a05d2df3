"""(e) What Ray costs on this machine, each side measured in turn in one run:

- Train: DIA training iterations (bank mode, fp32 — what sweeps run) inside a 1-worker Ray Train ``TorchTrainer``
  (dia-ray's ``fit_trainer``: 1 worker x 2 CPUs, torch threads 2) vs the same iterations in this process's plain loop.
  The worker and this process take turns — files in a shared directory say whose turn it is, the waiting side sleeps —
  so they never compete for the cores. The worker's start-up (process, imports, data) is reported on its own.
- Data: the same dissolved bank built by the Ray Data actor pool (``build_bank``: 2 actors x 0.5 CPU x 1 thread) vs the
  plain batched single-process loop (``build_bank_local``, torch's threads); wall time of the whole call, so the pool
  pays its actors' start (process, imports, DDPM load) and the loop its DDPM load.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

import benchmarks
from benchmarks.config import BenchConfig
from benchmarks.measure import PeakRSS, Variant, interleave, paired_ratio, summary

log = logging.getLogger("benchmarks")


def bank_step(config: dict[str, Any]):
    """A callable running ``iters`` DIA iterations (bank mode, fp32) on the synthetic data under ``data_root``; the
    same construction (seeds, random bank) in the worker and in this process."""
    from dia_ray.algo.dissolve import BankDissolver
    from dia_ray.algo.loops import DIAData, new_dia_state, train_epoch
    from dia_ray.config import TrainConfig
    from dia_ray.data import load_dataset

    ds = load_dataset("synthetic", config["data_root"])
    data = DIAData.from_arrays(ds.train.images, ds.test.images, ds.test.labels)
    cfg = TrainConfig(dataset="synthetic", method="dia", backbone=config["backbone"], batch_size=config["batch"],
                      max_iters_per_epoch=config["iters"], dissolve={"mode": "bank"})
    gen = torch.Generator().manual_seed(0)
    dissolver = BankDissolver((torch.rand(len(data.train), config["versions"], 3, 32, 32, generator=gen) * 2 - 1)
                              .half())
    state = new_dia_state(cfg)
    return lambda: train_epoch(state, data, cfg, dissolver)


def _wait(path: Path, timeout: float, alive: threading.Thread | None = None) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end or (alive is not None and not alive.is_alive()):
            raise RuntimeError(f"benchmark: gave up waiting for {path.name} (the Ray Train worker stopped or hung)")
        time.sleep(0.02)


def train_worker(config: dict[str, Any]) -> None:
    """The Train worker: warm up, say ready, then one timed run per ``go-r`` file, answering with ``done-r.json``."""
    from dia_ray.distributed.checkpointing import worker_device

    worker_device(config)
    if config.get("bench_threads"):
        torch.set_num_threads(config["bench_threads"])
    sync = Path(config["sync"])
    step = bank_step(config)
    step()
    (sync / "ready").write_text(str(time.time()))
    for r in range(config["rounds"]):
        _wait(sync / f"go-{r}", config["timeout"])
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            step()
            dt = time.perf_counter() - t0
        tmp = sync / f".done-{r}.json"
        tmp.write_text(json.dumps({"wall": dt, "cpu": mem.cpu_seconds, "peak_rss_mb": mem.peak_mb,
                                   "delta_mb": mem.delta_mb, "threads": torch.get_num_threads()}))
        tmp.rename(sync / f"done-{r}.json")


def train_overhead(bc: BenchConfig, data_root: Path, storage: Path, timeout: float = 900.0) -> dict[str, Any]:
    import ray.cloudpickle

    from dia_ray.distributed.checkpointing import fit_trainer
    from dia_ray.distributed.runtime import connect

    connect(num_cpus=2, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(benchmarks)  # workers need not find this repo's benchmarks/ on a path
    sync = storage / "sync"
    sync.mkdir(parents=True, exist_ok=True)
    config = {"sync": str(sync), "data_root": str(data_root), "backbone": bc.backbone, "batch": bc.batch,
              "iters": bc.iters, "versions": bc.bank_versions, "rounds": bc.ray_rounds, "timeout": timeout,
              "bench_threads": bc.threads}
    plain = Variant("plain_loop", bank_step(config), bc.iters * bc.batch)
    plain.run()  # warm-up before the worker starts, so the two never overlap
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            fit_trainer(train_worker, config, name="ray-train-overhead", storage_path=storage / "train", workers=1,
                        use_gpu=False, cpus_per_worker=2.0, max_failures=0, keep_checkpoints=1)
        except BaseException as err:  # noqa: BLE001 - reported by the waiting side
            failure.append(err)

    t0 = time.perf_counter()
    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    _wait(sync / "ready", timeout, thread)
    ready_s = time.perf_counter() - t0
    worker = Variant("ray_train_worker", lambda: None, bc.iters * bc.batch)
    reports = []
    for r in range(bc.ray_rounds):
        for side in (("plain", "ray") if r % 2 == 0 else ("ray", "plain")):
            if side == "plain":
                plain.timed(bc.clock)
                continue
            (sync / f"go-{r}").touch()
            _wait(sync / f"done-{r}.json", timeout, thread)
            rep = json.loads((sync / f"done-{r}.json").read_text())
            reports.append(rep)
            worker.record(rep["wall"], rep["cpu"], bc.clock)
            worker.peak_rss_mb = max(worker.peak_rss_mb, rep["peak_rss_mb"])
            worker.peak_rss_delta_mb = max(worker.peak_rss_delta_mb, rep["delta_mb"])
            log.info("ray train round %d: plain %.2f s, worker %.2f s (%s)", r + 1, plain.seconds[-1],
                     worker.seconds[-1], bc.clock)
    thread.join(timeout)
    if failure:
        raise RuntimeError(f"the Ray Train run failed: {failure[0]}")
    return {"what": "DIA bank-mode fp32 iterations, 1 Train worker (2 CPUs) vs this process",
            "plain_loop": summary(plain, "image"), "ray_train_worker": summary(worker, "image"),
            "worker_threads": reports[0]["threads"] if reports else None,
            "worker_start_to_ready_seconds": round(ready_s, 1),
            "ratio_ray_over_plain": paired_ratio(plain, worker)}


def bank_build_overhead(bc: BenchConfig, data_root: Path, storage: Path, t_range: tuple[int, int]) -> dict[str, Any]:
    from dia_ray.algo.ddpm import new_state, save_ddpm
    from dia_ray.distributed.bank import build_bank, build_bank_local
    from dia_ray.distributed.train_ddpm import DataRef

    from benchmarks.suite import ddpm_config

    cfg = ddpm_config(bc)
    ddpm = save_ddpm(storage / "ddpm" / "model", new_state(cfg), cfg)  # random weights: the work is the same
    ref = DataRef("synthetic", str(data_root))
    common = dict(t_range=t_range, versions=bc.bank_build_versions, batch_size=64, force=True)
    info: dict[str, Any] = {}

    def local() -> None:
        info["local"] = build_bank_local(ref, ddpm, storage / "local", **common)

    def pool() -> None:
        info["ray"] = build_bank(ref, ddpm, storage / "ray", actors=2, num_cpus_per_actor=0.5, progress=False,
                                 **common)

    rows = len(ref.load().train) * bc.bank_build_versions
    variants = [Variant("plain_loop", local, rows, warmup=lambda: None),
                Variant("ray_data_pool", pool, rows, warmup=lambda: None, tree_rss=True)]
    interleave(variants, bc.bank_build_rounds, lambda m: log.info("bank build %s", m), bc.clock)
    return {"what": f"{rows} rows ({rows // bc.bank_build_versions} images x {bc.bank_build_versions} versions), "
                    "UNet as in training_step, batch 64",
            "plain_loop": summary(variants[0], "row"), "ray_data_pool": summary(variants[1], "row"),
            "pool": {"actors": 2, "cpus_per_actor": 0.5, "threads_per_actor": 1},
            "same_bank_key": info["local"].key == info["ray"].key,
            "build_seconds_excluding_start": {"plain_loop": info["local"].manifest.build["seconds"],
                                              "ray_data_pool": info["ray"].manifest.build["seconds"]},
            "ratio_ray_over_plain": paired_ratio(variants[0], variants[1]),
            "peak_rss_note": "ray_data_pool: peak of the summed PSS of this process and its Ray processes"}


def ray_overheads(bc: BenchConfig, data_root: Path, storage: Path, t_range: tuple[int, int]) -> dict[str, Any]:
    import ray

    started = not ray.is_initialized()
    try:
        train = train_overhead(bc, data_root, storage)
        bank = bank_build_overhead(bc, data_root, storage, t_range)
    finally:
        if started:
            ray.shutdown()
    return {"train": train, "bank_build": bank}
