"""Sweeps: Ray Tune + Optuna, one study per dataset (a study never mixes datasets), all datasets' studies progressing
concurrently on one cluster, resumable after the driver dies.

Layout: ``STORAGE/sweeps/<name>/<dataset>/`` holds the Tune experiment (stable name, no timestamp, so ``--resume``
finds it), ``train/`` (the Ray Train runs of its trials) and ``records/`` (one JSON-lines result record per
(config, seed), written the moment that seed finishes). A trial trains each of the sweep's seeds with the Ray Train
DIA trainer (a Tune function trainable launching a TorchTrainer, the Train V2 / Tune integration) and reports the
mean metric over the seeds done so far. Records are keyed by (config hash, seed): a trial restarted after a crash
skips the seeds whose records exist, so every finished run is kept exactly once.

DDPMs and banks are built once per key by each dataset's study task *before* its trials start, and passed to the
trials by path: no two trials build the same artifact.
"""

from __future__ import annotations

import json
import math
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dia_ray.config import TrainConfig
from dia_ray.distributed.train_ddpm import DataRef
from dia_ray.errors import ClusterError, ConfigError
from dia_ray.sweepfile import Param, SweepFile, decode_params, encode_choice

log = logging.getLogger(__name__)

# Training throughput at 28 px (images/s) used only by --dry-run cost estimates. CPU: measured by `dia-ray demo` on
# this project's 2-core machine kind (one torch thread per trial, ResNet-18 imagenet stem, batch 32; the reference
# code's step does 1.75 img/s there, ALGORITHM.md §10). A100: ESTIMATES, not measured here (from the FLOP count of
# 12 ResNet-18 views per image at ~40 TFLOP/s effective). Cost grows ~linearly with pixels on CPU and ~with their
# square root on an A100 (small images leave it underused).
THROUGHPUT_ESTIMATE = {
    ("cpu", "dia"): 20.0, ("cpu", "csi"): 28.0, ("cpu", "blur"): 19.0,
    ("a100", "dia"): 1500.0, ("a100", "csi"): 2300.0, ("a100", "blur"): 1800.0,
}
# (normal train images, test images) per dataset, for the estimates (ALGORITHM.md §6).
DATASET_SIZES = {"pneumoniamnist": (1214, 624), "breastmnist": (399, 156), "covid": (861, 745),
                 "kvasir": (4900, 2400), "retina": (26315, 968), "aptos": (1264, 1099)}


@dataclass(frozen=True)
class SweepPaths:
    root: Path
    name: str

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / "sweeps" / self.name / dataset

    def experiment(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "tune"

    def records(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "records"


def optuna_space(space: dict[str, Param]) -> dict[str, Any]:
    import optuna

    dists: dict[str, Any] = {}
    for key, p in space.items():
        if p.choices is not None:
            dists[key] = optuna.distributions.CategoricalDistribution([encode_choice(c) for c in p.choices])
        elif p.is_int:
            dists[key] = optuna.distributions.IntDistribution(int(p.low), int(p.high), step=int(p.step or 1),
                                                              log=p.log)
        else:
            dists[key] = optuna.distributions.FloatDistribution(p.low, p.high, step=p.step, log=p.log)
    return dists


def make_sampler(sweep: SweepFile):
    import optuna

    if sweep.sampler == "grid":
        grid = {k: [encode_choice(v) for v in p.grid_values()] for k, p in sweep.search_space().items()}
        return optuna.samplers.GridSampler(grid, seed=sweep.optuna_seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.optuna_seed)
    return optuna.samplers.TPESampler(seed=sweep.optuna_seed)


def method_needs_ddpm(sweep: SweepFile) -> bool:
    space = sweep.search_space()
    methods = space["method"].choices if "method" in space else sweep.methods
    return "dia" in methods


def resolutions(sweep: SweepFile, dataset: str) -> list[int]:
    p = sweep.search_space().get("dissolve.resolution")
    return [int(v) for v in p.grid_values()] if p is not None else [sweep.train_config(dataset, {}, 0).dissolve.resolution]


def t_ranges(sweep: SweepFile, dataset: str) -> list[tuple[int, int]]:
    p = sweep.search_space().get("dissolve.t_range")
    if p is not None:
        return [tuple(int(x) for x in v) for v in p.grid_values()]
    from dia_ray.data.registry import get_spec
    from dia_ray.distributed.train_dia import t_range_for

    return [t_range_for(sweep.train_config(dataset, {}, 0), get_spec(dataset).t_range)]


# ---------------------------------------------------------------------------------------------------------------------
# the trial


def _trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One Tune trial: train every seed of one sampled configuration, report the running mean metric."""
    import numpy as np
    import ray.tune as tune

    from dia_ray.distributed.runtime import worker_logging
    from dia_ray.distributed.train_dia import run_key, t_range_for, train_dia_ray

    worker_logging()
    sweep = SweepFile.model_validate(ctx["sweep"])
    dataset = ctx["dataset"]
    params = decode_params(config, sweep.search_space())
    ref = DataRef(**ctx["data"])
    res = ctx["resources"]
    trial_id = tune.get_context().get_trial_id()
    trial_dir = tune.get_context().get_storage().trial_fs_path  # in storage (get_trial_dir() is a local staging dir)
    values: list[float] = []
    for i, seed in enumerate(sweep.seeds):
        cfg: TrainConfig = sweep.train_config(dataset, params, seed)
        ddpm = bank = None
        if cfg.dissolve.kind == "diffusion":
            if sweep.dissolve_mode == "bank":
                bank = ctx["banks"][_bank_slot(cfg.dissolve.resolution, t_range_for(cfg, tuple(ctx["spec_t_range"])))]
            else:
                ddpm = ctx["ddpms"][str(cfg.dissolve.resolution)]
        rec = train_dia_ray(
            cfg, ref, ctx["storage"], workers=res["workers"], use_gpu=res["gpus_per_worker"] > 0,
            cpus_per_worker=res["cpus_per_worker"], ddpm_path=ddpm, bank_path=bank,
            run_dir=ctx["train_dir"], record_file=Path(ctx["records_dir"]) / f"{run_key(cfg)}.jsonl",
            extra={"sweep": sweep.name, "trial_id": trial_id, "trial_dir": trial_dir},
            params={k: v for k, v in params.items() if k != "method"},
            max_failures=1,
        )
        values.append(getattr(rec, sweep.metric))
        tune.report({"auroc": float(np.mean(values)), "auroc_std": float(np.std(values)), "seeds_done": i + 1,
                     "method": cfg.method, "config_hash": cfg.config_hash(),
                     "images_per_s": rec.images_per_s})


def _bank_slot(resolution: int, t_range: tuple[int, int]) -> str:
    return f"r{resolution}-t{t_range[0]}-{t_range[1]}"


# ---------------------------------------------------------------------------------------------------------------------
# one dataset's study (runs as a Ray task so that all datasets progress at the same time)


def _progress_callback(dataset: str, total: int):
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.done = 0
            self.best: float | None = None

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.done += 1
            value = (trial.last_result or {}).get("auroc")
            if value is not None:
                self.best = value if self.best is None else max(self.best, value)
            log.info("[%s] trial %s finished (%d/%d): auroc %s, best %s", dataset, trial.trial_id, self.done, total,
                     _fmt(value), _fmt(self.best))

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            log.warning("[%s] trial %s errored (retried up to the sweep's max_retries)", dataset, trial.trial_id)

    return Progress()


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def run_study(sweep_dict: dict[str, Any], dataset: str, storage: str, data: dict[str, Any], resume: bool,
              mlflow_uri: str | None = None) -> dict[str, Any]:
    """Build this dataset's DDPMs/banks, then run (or restore) its Tune experiment. Returns a summary."""
    import ray.tune as tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    from dia_ray.data.registry import get_spec
    from dia_ray.distributed.pipeline import ddpm_config
    from dia_ray.distributed.runtime import worker_logging
    from dia_ray.distributed.train_ddpm import train_ddpm_ray

    worker_logging()
    sweep = SweepFile.model_validate(sweep_dict)
    paths = SweepPaths(Path(storage), sweep.name)
    ref = DataRef(**data)
    res = sweep.resources
    t0 = time.time()
    ddpms: dict[str, str] = {}
    banks: dict[str, str] = {}
    spec_t_range = get_spec(dataset, normal_class=sweep.normal_class).t_range
    if method_needs_ddpm(sweep):
        for r in resolutions(sweep, dataset):
            cfg = ddpm_config(dataset, sweep.budget, resolution=r, **sweep.ddpm)
            log.info("[%s] DDPM at r=%d", dataset, r)
            ddpms[str(r)] = str(train_ddpm_ray(ref, cfg, storage, workers=res.workers,
                                               use_gpu=res.gpus_per_worker > 0,
                                               cpus_per_worker=res.cpus_per_worker))
            if sweep.dissolve_mode == "bank":
                from dia_ray.distributed.bank import build_bank

                for tr in t_ranges(sweep, dataset):
                    b = sweep.bank
                    info = build_bank(ref, ddpms[str(r)], storage, t_range=tr, versions=b.versions, resolution=r,
                                      seed=0, actors=b.actors, batch_size=b.batch_size,
                                      num_cpus_per_actor=b.cpus_per_actor, num_gpus_per_actor=b.gpus_per_actor)
                    banks[_bank_slot(r, tr)] = str(info.path)
    ctx = {
        "sweep": sweep_dict, "dataset": dataset, "data": data, "storage": storage, "resources": res.model_dump(),
        "ddpms": ddpms, "banks": banks, "spec_t_range": list(spec_t_range),
        "train_dir": str(paths.dataset_dir(dataset) / "train"), "records_dir": str(paths.records(dataset)),
    }
    def trial(config: dict[str, Any]) -> None:
        _trial(config, ctx)

    # Tune registers trainables by name in a registry shared by the whole Ray job: each study needs its own name,
    # or concurrent studies would run each other's trials (and mix datasets).
    trial.__name__ = trial.__qualname__ = f"dia_trial_{sweep.name}_{dataset}".replace("-", "_").replace(".", "_")
    trainable = tune.with_resources(trial, {"cpu": 0.01})
    exp = paths.experiment(dataset)
    total = sweep.trials()
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), TBXLoggerCallback(), _progress_callback(dataset, total)]
    if mlflow_uri:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=f"{sweep.name}-{dataset}"))
    if resume and tune.Tuner.can_restore(str(exp)):
        log.info("[%s] resuming %s", dataset, exp)
        tuner = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher = OptunaSearch(space=optuna_space(sweep.search_space()), metric="auroc", mode=sweep.mode,
                                sampler=make_sampler(sweep), seed=None, study_name=f"{sweep.name}-{dataset}")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, metric="auroc", mode=sweep.mode, num_samples=total,
                                        max_concurrent_trials=sweep.max_concurrent_trials),
            run_config=tune.RunConfig(name="tune", storage_path=str(paths.dataset_dir(dataset)),
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_retries),
                                      callbacks=callbacks, verbose=0),
        )
    t_trials = time.time()
    results = tuner.fit()
    errors = [str(r.error).splitlines()[0] for r in results if r.error is not None]
    best = None
    try:
        b = results.get_best_result(metric="auroc", mode=sweep.mode)
        best = {"auroc": b.metrics.get("auroc"), "config": b.config}
    except RuntimeError:
        pass
    return {"dataset": dataset, "trials": len(results), "errors": errors, "best": best, "started": t_trials,
            "finished": time.time(), "seconds": time.time() - t0, "records_dir": ctx["records_dir"]}


# ---------------------------------------------------------------------------------------------------------------------
# the driver


def dry_run(sweep: SweepFile) -> str:
    """Trials/grid size, resources and an estimated cost, without touching a cluster."""
    from dia_ray.data.registry import get_spec

    lines = [f"sweep '{sweep.name}': {len(sweep.datasets)} dataset(s), sampler {sweep.sampler}, "
             f"{sweep.trials()} trial(s) per dataset x {len(sweep.seeds)} seed(s)"]
    space = sweep.search_space()
    for key, p in space.items():
        desc = f"choices {p.choices}" if p.choices is not None else (
            f"{'int' if p.is_int else 'float'} [{p.low}, {p.high}]" + (f" step {p.step}" if p.step else "")
            + (" log" if p.log else ""))
        lines.append(f"  space {key}: {desc}")
    r = sweep.resources
    gpu = r.gpus_per_worker > 0
    lines.append(f"  per trial: {r.workers} Train worker(s) x {r.cpus_per_worker:g} CPU"
                 + (f" + {r.gpus_per_worker:g} GPU" if gpu else "") + f"; up to {sweep.max_concurrent_trials} "
                 f"concurrent trial(s) per dataset, {len(sweep.datasets)} studies at once")
    total_cpu_h = total_gpu_h = 0.0
    for ds in sweep.datasets:
        runs = sweep.trials() * len(sweep.seeds)
        cfg = sweep.train_config(ds, {}, sweep.seeds[0])
        spec = get_spec(ds, normal_class=sweep.normal_class)
        n_train, n_test = DATASET_SIZES.get(ds, (600, 200))
        per_epoch = min(math.ceil(n_train / cfg.batch_size), cfg.max_iters_per_epoch) * cfg.batch_size
        # an evaluation featurises train + test images S x 4 times (forward only) ≈ S/9 training images each
        n_eval = min(n_train, cfg.eval.max_train_images or n_train) + n_test
        evals = math.ceil(cfg.epochs / cfg.eval.every)
        images = runs * (cfg.epochs * per_epoch + evals * n_eval * cfg.eval.samples / 9)
        kind = "blur" if cfg.method.startswith("blur") else cfg.method
        pixels = max(1.0, (spec.image_size / 28) ** 2)  # cost grows with the pixel count; GPUs scale better
        cpu_h = images / THROUGHPUT_ESTIMATE[("cpu", kind)] / 3600 * pixels
        gpu_h = images / THROUGHPUT_ESTIMATE[("a100", kind)] / 3600 * pixels ** 0.5
        total_cpu_h += cpu_h
        total_gpu_h += gpu_h
        lines.append(f"  {ds}: {runs} training runs x {cfg.epochs} epochs x {per_epoch} images + {evals} evaluations "
                     f"≈ {gpu_h:.2f} A100-hours (estimate) / {cpu_h:.2f} hours on a 2-core CPU")
    lines.append(f"  total ≈ {total_gpu_h:.2f} A100-hours (estimate; DDPM training extra), "
                 f"{total_cpu_h:.2f} hours on a 2-core CPU")
    return "\n".join(lines)


def check_cluster_fits(sweep: SweepFile) -> None:
    import ray

    res = ray.cluster_resources()
    r = sweep.resources
    need_cpu = r.workers * r.cpus_per_worker + 0.01
    if need_cpu > res.get("CPU", 0) + 1e-9:
        raise ClusterError(f"a trial needs {need_cpu:g} CPUs ({r.workers} worker(s) x {r.cpus_per_worker:g}) but "
                           f"the cluster has {res.get('CPU', 0):g}; lower resources.workers/cpus_per_worker")
    if r.gpus_per_worker and r.workers * r.gpus_per_worker > res.get("GPU", 0):
        raise ClusterError(f"a trial needs {r.workers * r.gpus_per_worker:g} GPUs but the cluster has "
                           f"{res.get('GPU', 0):g}")


def run_sweep(sweep: SweepFile, storage: str | os.PathLike, *, address: str | None = None, resume: bool = False,
              mlflow_uri: str | None = None) -> list[dict[str, Any]]:
    """Validate everything, then run every dataset's study concurrently; returns one summary per dataset."""
    from dia_ray.distributed.cluster_checks import alive_node_count, require_shared_storage
    from dia_ray.distributed.pipeline import data_ref
    from dia_ray.distributed.runtime import connect
    from dia_ray.distributed.storage import ensure_writable

    root = ensure_writable(storage)
    paths = SweepPaths(root, sweep.name)
    existing = [ds for ds in sweep.datasets if paths.experiment(ds).exists()]
    if existing and not resume:
        raise ConfigError(f"sweep '{sweep.name}' already has results in {paths.dataset_dir(existing[0]).parent}; "
                          "pass --resume to continue it (or choose another name/storage)")
    if mlflow_uri:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("--mlflow-uri needs the mlflow package (pip install mlflow)") from None
    refs = {ds: data_ref(ds, sweep.data_root, sweep.normal_class) for ds in sweep.datasets}
    if address is None:
        cpus = os.cpu_count() or 1
        need = sweep.resources.workers * sweep.resources.cpus_per_worker
        if need > cpus:
            raise ClusterError(f"a trial needs {need:g} CPUs but this machine has {cpus}; lower "
                               "resources.workers/cpus_per_worker or pass --address of a cluster")
    connect(address)
    check_cluster_fits(sweep)
    require_shared_storage(str(root), alive_node_count())
    import ray

    study = ray.remote(num_cpus=0, max_retries=0)(run_study)
    sweep_dict = sweep.model_dump(mode="json")
    log.info("sweep '%s': %d studies (%s), %d trial(s) each, storage %s", sweep.name, len(sweep.datasets),
             ", ".join(sweep.datasets), sweep.trials(), paths.root / "sweeps" / sweep.name)
    futures = {ds: study.remote(sweep_dict, ds, str(root), refs[ds].__dict__, resume, mlflow_uri)
               for ds in sweep.datasets}
    summaries = []
    for ds, fut in futures.items():
        summaries.append(ray.get(fut))
    (paths.root / "sweeps" / sweep.name / "sweep.json").write_text(json.dumps(
        {"sweep": sweep_dict, "summaries": summaries}, indent=2, default=str))
    return summaries
