"""Sweeps: Ray Tune + Optuna, one study per dataset (a study never mixes datasets), all datasets' studies progressing
concurrently on one cluster, resumable after the driver dies, isolated from each other.

Layout under the storage root (a folder or a URI): ``sweeps/<name>/<dataset>/tune`` (the Tune experiment: stable
name, no timestamp, so ``--resume`` finds it), ``…/train`` (the Ray Train runs of its trials) and ``…/records``
(one JSON-lines result record per (configuration, seed), written the moment that run finishes), and
``sweeps/<name>/sweep.json`` (the last summary).

Trials: every seed of a configuration is its own Tune trial (``Repeater`` around ``OptunaSearch``: the searcher sees
the mean over seeds), running concurrently; a trial trains with the Ray Train DIA trainer, whose every evaluation is
reported to Tune (:func:`report_while_training`): Tune's loggers, TensorBoard, MLflow and W&B get per-epoch curves, and ASHA
can stop a trial early. Tune's config of a trial is the full resolved TrainConfig (dotted keys), so HParams and
MLflow params are complete. Records are keyed by (config hash, seed): a trial restarted after a crash or a lost node
resumes its Ray Train run from the last registered checkpoint, and a finished run is never trained twice.

Dependencies, not barriers: a DIA trial waits (``ray.get``) only for its own DDPM / bank, built by tasks started when
the study starts; CSI and blur trials start at once.

Isolation: each study runs as a Ray task pinned to the driver's node (the head node under ``dia-ray submit``); a
study that fails — its data, its DDPM, OOM, a lost node — is reported in the summary with its reason, the others
go on, and ``--resume`` retries it. Several Tuners in one Ray job (which Ray's Tune FAQ warns about): each study's
trainable has its own registry name, and the Train runs inside trials take their resources as placement groups
that Ray Train waits for (retrying forever, ``FailureConfig.controller_failure_limit=-1``), so studies whose trials
together ask for more workers than exist queue rather than fail; the integration tests run six such studies on the
simulated two-node cluster.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from dia_ray.config import TrainConfig, flatten
from dia_ray.distributed.dataref import DataRef
from dia_ray.errors import ClusterError, ConfigError, DataError
from dia_ray.storage import Storage, open_storage
from dia_ray.sweepfile import Param, SweepFile, decode_params, encode_choice

log = logging.getLogger(__name__)

TRIAL_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX: the seed's index in `seeds`


@dataclass(frozen=True)
class SweepPaths:
    storage: Storage
    name: str

    def dataset(self, dataset: str) -> str:
        """``sweeps/<name>/<dataset>`` relative to the storage root."""
        return f"sweeps/{self.name}/{dataset}"

    def experiment(self, dataset: str) -> str:
        """The Tune experiment's location (what Tune's storage_path + name resolve to)."""
        return self.storage.join(self.dataset(dataset), "tune")

    def records(self, dataset: str) -> str:
        return f"{self.dataset(dataset)}/records"

    def train(self, dataset: str) -> str:
        return f"{self.dataset(dataset)}/train"


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


def make_sampler(sweep: SweepFile, concurrent: int):
    """Grid: exactly the grid. TPE: ``constant_liar`` when trials run concurrently (running trials count as bad
    guesses, so concurrent suggestions spread out instead of repeating the same point)."""
    import optuna

    if sweep.is_grid:
        grid = {k: [encode_choice(v) for v in p.grid_values()] for k, p in sweep.search_space().items()}
        return optuna.samplers.GridSampler(grid, seed=sweep.optuna_seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.optuna_seed)
    return optuna.samplers.TPESampler(seed=sweep.optuna_seed, constant_liar=concurrent > 1)


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


def artifact_slot(cfg: TrainConfig, spec_t_range: tuple[int, int], bank_mode: bool) -> str:
    """Which prebuilt artifact a DIA run dissolves with: the DDPM of its resolution, or its (resolution, t) bank."""
    from dia_ray.distributed.train_dia import t_range_for

    if not bank_mode:
        return f"ddpm-r{cfg.dissolve.resolution}"
    lo, hi = t_range_for(cfg, spec_t_range)
    return f"bank-r{cfg.dissolve.resolution}-t{lo}-{hi}"


# ---------------------------------------------------------------------------------------------------------------------
# the searcher: Optuna's suggestion, repeated once per seed, handed to Tune as the full resolved config


def seed_repeater(sweep: SweepFile, dataset: str, concurrent: int):
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    class SeedRepeater(Repeater):
        """Each Optuna suggestion becomes ``len(seeds)`` trials (one per seed; Optuna is told their mean), and
        each trial's config is the complete TrainConfig it runs, flattened to dotted keys, plus ``param.<key>``
        for the swept values as Optuna encodes them."""

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            index = int(config.get(TRIAL_INDEX, 0))
            raw = {k: v for k, v in config.items() if k != TRIAL_INDEX}
            cfg = sweep.train_config(dataset, decode_params(raw, sweep.search_space()), sweep.seeds[index])
            return {TRIAL_INDEX: index, **{f"param.{k}": v for k, v in raw.items()},
                    **flatten(cfg.model_dump(mode="json"))}

    searcher = OptunaSearch(space=optuna_space(sweep.search_space()), metric=sweep.metric, mode=sweep.mode,
                            sampler=make_sampler(sweep, concurrent), seed=None,
                            study_name=f"{sweep.name}-{dataset}")
    return SeedRepeater(searcher, repeat=len(sweep.seeds), set_index=True)


def trial_config(sweep: SweepFile, dataset: str, config: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """(the TrainConfig, the swept params decoded) of a trial's Tune config (see ``SeedRepeater``)."""
    raw = {k.removeprefix("param."): v for k, v in config.items() if k.startswith("param.")}
    params = decode_params(raw, sweep.search_space())
    return sweep.train_config(dataset, params, sweep.seeds[int(config.get(TRIAL_INDEX, 0))]), params


# ---------------------------------------------------------------------------------------------------------------------
# the trial


def _final_metrics(rec) -> dict[str, Any]:
    last = rec.auroc_last
    return {"auroc": last, "auroc_last": last, "auroc_best_test": rec.auroc_best_test, "epoch": rec.epochs,
            "last_epoch": True, "images_per_s": rec.images_per_s, "from_record": True}


def relay_to_tune(queue: Any):
    """A Ray Train callback that hands every report of a Train run to ``queue`` (a ``ray.util.queue.Queue``).

    Why not Ray's ``TuneReportCallback``: it delivers the Train run's reports from the Tune session's main thread
    through a one-slot queue, and when the run's last report is still in flight as the trial function returns, the
    main thread blocks for ever putting it behind the function's end-of-training marker (seen with Ray 2.60: the trial
    hangs, its placement groups stay reserved, and the next trials starve). Here the trial function itself reads
    the queue and calls ``tune.report`` — one thread reports, and it returns only after the last report."""
    from ray.train import UserCallback

    class RelayToTune(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            item = dict(metrics[0])
            if checkpoint is not None:
                item["checkpoint_path"] = checkpoint.path
            queue.put(item)

    return RelayToTune()


# Ray's marker resource of the head node (1.0 there, absent elsewhere); 0.001 a trial: 1,000 trials at once
HEAD_RESOURCE = "node:__internal_head__"
TRAIN_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train's own setting (default 60 s)
TRAIN_START_TIMEOUT_S = 1800


def report_while_training(train: Any, node: str | None = None) -> Any:
    """Run ``train(callbacks)`` (a Ray Train run) as a Ray task and pass each of its reports to ``tune.report`` from
    this trial's thread as they come; returns ``train``'s result after the last report. When Tune stops the trial
    (ASHA) — ``tune.report`` then exits the thread — the task is cancelled, which ends its Train run: a stopped trial
    does not train on in the background.

    ``node``: where the task runs (the study's node, i.e. the head). Ray Train places a run's controller (and the
    cleaner of its placement group) on the node that calls ``fit()``; there they survive the loss of a worker node,
    restart the worker group from the last registered checkpoint and free the lost group's placement group. A
    controller on the lost node would die with it and leave its placement group reserved for the rest of the job."""
    import ray
    import ray.tune as tune
    from ray.exceptions import RayTaskError
    from ray.util.queue import Empty, Queue

    from dia_ray.distributed.runtime import worker_logging

    def run(queue: Any) -> Any:
        import os

        worker_logging()
        # In a sweep a trial's worker group may have to wait for a slot (after a node is lost the survivors are
        # oversubscribed): wait for it like Tune waits for trial resources instead of failing after Ray Train's 60 s.
        os.environ.setdefault(TRAIN_START_TIMEOUT_ENV, str(TRAIN_START_TIMEOUT_S))
        return train([relay_to_tune(queue)])

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    where = NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": where})  # with the task: survives a lost node
    # max_calls=1: the task's process exits after the run, and with it (owner fate-sharing) the run's Train
    # controller, whose placement-group cleaner then frees any bundle a failed worker-group start left reserved. A
    # pooled process would keep a failed run's controller (held by the traceback) and its reservation alive.
    task = ray.remote(num_cpus=0, max_retries=0, max_calls=1)(run).options(scheduling_strategy=where).remote(queue)
    try:
        while True:
            finished = bool(ray.wait([task], timeout=0)[0])
            try:
                tune.report(queue.get(timeout=1.0))
            except Empty:
                if finished and queue.empty():
                    break
        return ray.get(task)
    except RayTaskError as err:
        raise err.as_instanceof_cause() from None
    except BaseException:
        ray.cancel(task, force=True)
        raise


def _trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One Tune trial: one seed of one configuration, trained by the Ray Train trainer (which reports every epoch
    to Tune). A run whose record exists (a restarted trial) reports that record instead of training again."""
    import ray
    import ray.tune as tune

    from dia_ray.distributed.runtime import worker_logging
    from dia_ray.distributed.train_dia import read_record, run_key, train_dia_ray

    worker_logging()
    sweep = SweepFile.model_validate(ctx["sweep"])
    dataset = ctx["dataset"]
    cfg, params = trial_config(sweep, dataset, config)
    st = Storage(ctx["storage"])
    paths = SweepPaths(st, sweep.name)
    record_rel = f"{paths.records(dataset)}/{run_key(cfg)}.jsonl"
    done = read_record(st, record_rel)
    if done is not None:
        tune.report(_final_metrics(done))
        return
    ddpm = bank = None
    if cfg.dissolve.kind == "diffusion":
        location = ray.get(ctx["artifacts"][artifact_slot(cfg, tuple(ctx["spec_t_range"]),
                                                           sweep.dissolve_mode == "bank")])
        bank, ddpm = (location, None) if sweep.dissolve_mode == "bank" else (None, location)
    res = sweep.resources
    share = res.gpu_share(ctx["image_size"])
    trial_id = tune.get_context().get_trial_id()
    trial_dir = tune.get_context().get_storage().trial_fs_path  # in storage (get_trial_dir() is a local staging dir)
    report_while_training(lambda callbacks: train_dia_ray(
        cfg, DataRef(**ctx["data"]), st, workers=res.workers, use_gpu=share > 0, cpus_per_worker=res.cpus_per_worker,
        gpus_per_worker=share, ddpm_path=ddpm, bank_path=bank, run_dir=paths.train(dataset), record_file=record_rel,
        callbacks=callbacks, extra={"sweep": sweep.name, "trial_id": trial_id, "trial_dir": trial_dir},
        params={k: v for k, v in params.items() if k != "method"}, report_extra={"trial_id": trial_id},
        max_failures=1,
    ), node=ctx["node"])


# ---------------------------------------------------------------------------------------------------------------------
# artifacts: DDPMs and banks, built once per key by tasks the DIA trials wait for


def _build_ddpm(ref: dict[str, Any], sweep_dict: dict[str, Any], resolution: int, storage: str) -> str:
    from dia_ray.distributed.pipeline import ddpm_config
    from dia_ray.distributed.runtime import worker_logging
    from dia_ray.distributed.train_ddpm import train_ddpm_ray

    worker_logging()
    sweep = SweepFile.model_validate(sweep_dict)
    data = DataRef(**ref)
    r = sweep.ddpm_placement()
    from dia_ray.data.registry import get_spec

    share = r.gpu_share(get_spec(data.dataset, normal_class=sweep.normal_class).image_size)
    cfg = ddpm_config(data.dataset, sweep.budget, resolution=resolution, **sweep.ddpm)
    return train_ddpm_ray(data, cfg, storage, workers=r.workers, use_gpu=share > 0, cpus_per_worker=r.cpus_per_worker,
                          gpus_per_worker=share)


def _build_bank(ddpm: str, ref: dict[str, Any], sweep_dict: dict[str, Any], resolution: int,
                t_range: tuple[int, int], gpus_per_actor: float, storage: str) -> str:
    from dia_ray.distributed.bank import build_bank
    from dia_ray.distributed.runtime import worker_logging

    worker_logging()
    b = SweepFile.model_validate(sweep_dict).bank
    info = build_bank(DataRef(**ref), ddpm, storage, t_range=t_range, versions=b.versions, resolution=resolution,
                      seed=0, actors=b.actors, batch_size=b.batch_size, num_cpus_per_actor=b.cpus_per_actor,
                      num_gpus_per_actor=gpus_per_actor)
    return info.path


def start_artifacts(sweep: SweepFile, dataset: str, ref: DataRef, storage: Storage, image_size: int,
                    strategy: Any) -> dict[str, Any]:
    """Start the DDPM/bank builds this study's DIA trials need; returns {slot: ObjectRef of the location}. Nothing
    waits for them here: a trial waits for its own slot only."""
    import ray

    if not method_needs_ddpm(sweep):
        return {}
    sweep_dict = sweep.model_dump(mode="json")
    task = dict(num_cpus=0, max_retries=1, scheduling_strategy=strategy)
    gpus = sweep.bank.gpus_per_actor or (sweep.resources.gpu_share(image_size) if sweep.resources.uses_gpu else 0.0)
    out: dict[str, Any] = {}
    for r in resolutions(sweep, dataset):
        ddpm = ray.remote(_build_ddpm).options(**task, name=f"ddpm-{dataset}-r{r}").remote(
            ref.as_dict(), sweep_dict, r, storage.uri)
        out[f"ddpm-r{r}"] = ddpm
        if sweep.dissolve_mode == "bank":
            for lo, hi in t_ranges(sweep, dataset):
                out[f"bank-r{r}-t{lo}-{hi}"] = ray.remote(_build_bank).options(
                    **task, name=f"bank-{dataset}-r{r}-t{lo}-{hi}").remote(
                    ddpm, ref.as_dict(), sweep_dict, r, (lo, hi), gpus, storage.uri)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# one dataset's study (a Ray task on the driver's node, so that all datasets progress at the same time)


def _progress_callback(dataset: str, total: int, every_s: float = 30.0):
    from ray.tune import Callback

    class Progress(Callback):
        """Trials done / running / pending and the best so far, when a trial ends and every ``every_s``."""

        def __init__(self) -> None:
            self.best: float | None = None
            self.last = 0.0

        def _line(self, trials, what: str) -> None:
            states = [t.status for t in trials]
            done = sum(s in ("TERMINATED", "ERROR") for s in states)
            running = states.count("RUNNING")
            log.info("[%s] %s — trials %d/%d done, %d running, %d pending; best auroc so far %s", dataset, what,
                     done, total, running, total - done - running, _fmt(self.best))
            self.last = time.monotonic()

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            value = result.get("auroc")
            if isinstance(value, (int, float)) and not math.isnan(value):
                self.best = value if self.best is None else max(self.best, value)

        def on_step(self, iteration, trials, **info) -> None:
            if time.monotonic() - self.last > every_s:
                self._line(trials, "running")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._line(trials, f"trial {trial.trial_id} finished (auroc {_fmt((trial.last_result or {}).get('auroc'))})")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            log.warning("[%s] trial %s errored (retried up to the sweep's max_retries)", dataset, trial.trial_id)

    return Progress()


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300] + ("…" if len(text) > 300 else "")


def best_from_records(storage: Storage, records_rel: str, sweep: SweepFile) -> dict[str, Any] | None:
    """The best configuration by the seed-mean of the sweep's metric, from the records on storage."""
    from dia_ray.results.collect import collect

    if not storage.exists(records_rel):
        return None
    groups: dict[str, list] = {}
    for rec in collect(storage.child(records_rel)).records:
        groups.setdefault(rec.config_hash, []).append(rec)
    if not groups:
        return None
    sign = 1 if sweep.mode == "max" else -1
    key = max(groups, key=lambda h: sign * sum(getattr(r, sweep.metric) for r in groups[h]) / len(groups[h]))
    recs = groups[key]
    return {"metric": sweep.metric, "value": sum(getattr(r, sweep.metric) for r in recs) / len(recs),
            "seeds": sorted(r.seed for r in recs), "method": recs[0].method, "params": recs[0].params,
            "config_hash": key}


def asha(sweep: SweepFile, epochs: int):
    """ASHA on the per-epoch AUROC, with rungs at grace_period·rf^k epochs below ``epochs``. A trial is never stopped
    on its last epoch's report: it has trained to the end and still has to write its record."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class LetFinishedRunsWrite(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE if result.get("last_epoch") else decision

    return LetFinishedRunsWrite(time_attr="epoch", metric="auroc", mode=sweep.mode, max_t=epochs,
                                grace_period=min(sweep.asha.grace_period, epochs),
                                reduction_factor=sweep.asha.reduction_factor)


def run_study(sweep_dict: dict[str, Any], dataset: str, storage: str, data: dict[str, Any], image_size: int,
              resume: bool, concurrent: int, trackers: dict[str, Any]) -> dict[str, Any]:
    """Start this dataset's artifacts, run (or restore) its Tune experiment. Returns its summary; any failure is
    caught and summarised (``status: failed`` and the reason) so that it never stops another study."""
    t0 = time.time()
    summary: dict[str, Any] = {"dataset": dataset, "status": "running", "started": t0}
    try:
        summary.update(_run_study(SweepFile.model_validate(sweep_dict), dataset, Storage(storage), DataRef(**data),
                                  image_size, resume, concurrent, trackers))
        summary["status"] = "partial" if summary["errors"] else "ok"
    except Exception as err:  # noqa: BLE001 - isolation: report, never propagate to the other studies
        log.error("[%s] study failed: %s", dataset, _one_line(err))
        summary.update(status="failed", reason=_one_line(err))
    summary["finished"] = time.time()
    summary["seconds"] = summary["finished"] - t0
    return summary


def _run_study(sweep: SweepFile, dataset: str, st: Storage, ref: DataRef, image_size: int, resume: bool,
               concurrent: int, trackers: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.tune as tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from dia_ray.data.registry import get_spec
    from dia_ray.distributed.runtime import worker_logging
    from dia_ray.distributed.trackers import tune_callbacks

    worker_logging()
    paths = SweepPaths(st, sweep.name)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    artifacts = start_artifacts(sweep, dataset, ref, st, image_size, here)
    ctx = {"sweep": sweep.model_dump(mode="json"), "dataset": dataset, "data": ref.as_dict(), "storage": st.uri,
           "artifacts": artifacts, "image_size": image_size, "node": ray.get_runtime_context().get_node_id(),
           "spec_t_range": list(get_spec(dataset, normal_class=sweep.normal_class).t_range)}

    def trial(config: dict[str, Any]) -> None:
        _trial(config, ctx)

    # Tune registers trainables by name in a registry shared by the whole Ray job: each study needs its own name,
    # or concurrent studies would run each other's trials (and mix datasets).
    trial.__name__ = trial.__qualname__ = f"dia_trial_{sweep.name}_{dataset}".replace("-", "_").replace(".", "_")
    # The trial's own actor (it only relays reports) lives on the head node, never on a worker node: if it died with
    # a lost worker node, Ray's owner fate-sharing would take its Train run's controller down mid-restart and leave
    # the new worker group's placement group reserved for the rest of the job. The head node may have no CPUs.
    trainable = tune.with_resources(trial, tune.PlacementGroupFactory([{HEAD_RESOURCE: 0.001}]))
    total = sweep.runs()
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), TBXLoggerCallback(), _progress_callback(dataset, total),
                 *tune_callbacks(sweep.name, dataset, **trackers)]
    exp = paths.experiment(dataset)
    restored = resume and tune.Tuner.can_restore(exp)
    if restored:
        log.info("[%s] resuming %s", dataset, exp)
        tuner = tune.Tuner.restore(exp, trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = None
        if sweep.scheduler == "asha":
            epochs = sweep.train_config(dataset, {}, sweep.seeds[0]).epochs
            scheduler = asha(sweep, epochs)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=seed_repeater(sweep, dataset, concurrent), scheduler=scheduler,
                                        num_samples=total, max_concurrent_trials=concurrent,
                                        # a stopped trial's process must end: its Train run (a background thread
                                        # here) would otherwise train on to the end in a reused actor
                                        reuse_actors=False),
            run_config=tune.RunConfig(name="tune", storage_path=st.join(paths.dataset(dataset)),
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_retries),
                                      callbacks=callbacks, verbose=0),
        )
    log.info("[%s] %d trial(s) (%d configuration(s) x %d seed(s)), up to %d at once%s", dataset, total,
             sweep.trials(), len(sweep.seeds), concurrent, " (resumed)" if restored else "")
    started = time.time()
    results = tuner.fit()
    errors = [_one_line(r.error).split(": ", 1)[-1] for r in results if r.error is not None]
    stopped = sum(1 for r in results if r.error is None and not (r.metrics or {}).get("last_epoch"))
    return {"trials": len(results), "errors": errors, "stopped_early": stopped, "trials_started": started,
            "best": best_from_records(st, paths.records(dataset), sweep), "records": st.join(paths.records(dataset)),
            "experiment": exp}


# ---------------------------------------------------------------------------------------------------------------------
# the driver


def check_cluster_fits(sweep: SweepFile, image_sizes: list[int]) -> None:
    """Refuse a sweep whose single run can never be scheduled, against the cluster's capacity (autoscaling
    clusters count the nodes they can still add, so a sweep may start with only the head up)."""
    from dia_ray.distributed.runtime import cluster_capacity

    cap = cluster_capacity()
    res = cap.resources
    r = sweep.resources
    need_cpu = r.workers * r.cpus_per_worker
    if need_cpu > res.get("CPU", 0) + 1e-9:
        raise ClusterError(f"a trial needs {need_cpu:g} CPUs ({r.workers} worker(s) x {r.cpus_per_worker:g}) but "
                           f"the cluster has {res.get('CPU', 0):g} ({cap.source}); lower "
                           "resources.workers/cpus_per_worker")
    if r.uses_gpu:
        need_gpu = max(r.workers * r.gpu_share(s) for s in image_sizes)
        if need_gpu > res.get("GPU", 0) + 1e-9:
            raise ClusterError(f"a trial needs {need_gpu:g} GPUs but the cluster has {res.get('GPU', 0):g} "
                               f"({cap.source}); lower resources.gpus_per_worker or use a cluster with GPUs")


@dataclass
class SweepOutcome:
    summaries: list[dict[str, Any]]
    location: str  # sweeps/<name> under the storage root

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.summaries if s["status"] != "ok"]


def run_sweep(sweep: SweepFile, storage: str | os.PathLike | Storage, *, address: str | None = None,
              resume: bool = False, mlflow_uri: str | None = None, wandb_project: str | None = None
              ) -> SweepOutcome:
    """Validate everything, then run every dataset's study concurrently; returns one summary per dataset. A dataset
    whose data cannot be read on the driver fails its own study only (all of them failing is an error)."""
    from dia_ray.data.registry import get_spec
    from dia_ray.distributed.cluster_checks import expected_node_count, require_shared_storage
    from dia_ray.distributed.pipeline import data_ref
    from dia_ray.distributed.plan import auto_max_concurrent
    from dia_ray.distributed.runtime import cluster_capacity, connect
    from dia_ray.distributed.trackers import check_trackers

    trackers = check_trackers(mlflow_uri, wandb_project)
    st = open_storage(storage, writable=True)
    paths = SweepPaths(st, sweep.name)
    existing = [ds for ds in sweep.datasets if st.exists(paths.dataset(ds), "tune")]
    if existing and not resume:
        raise ConfigError(f"sweep '{sweep.name}' already has results in {st.join('sweeps', sweep.name)}; pass "
                          "--resume to continue it (or choose another name/storage)")
    asked = {ds: sweep.train_config(ds, {}, sweep.seeds[0]).image_size for ds in sweep.datasets}
    sizes = {ds: asked[ds] or get_spec(ds, normal_class=sweep.normal_class).image_size for ds in sweep.datasets}
    if address is None:
        cpus = os.cpu_count() or 1
        need = sweep.resources.workers * sweep.resources.cpus_per_worker
        if need > cpus:
            raise ClusterError(f"a trial needs {need:g} CPUs but this machine has {cpus}; lower "
                               "resources.workers/cpus_per_worker or pass --address of a cluster")
    loaded: dict[str, tuple[DataRef, Any]] = {}
    failed: dict[str, str] = {}
    for ds in sweep.datasets:
        try:
            loaded[ds] = data_ref(ds, sweep.data_root, sweep.normal_class, asked[ds])
        except DataError as err:
            if len(sweep.datasets) == 1:
                raise
            failed[ds] = str(err)
            log.warning("[%s] its study is skipped: %s (fix it and rerun with --resume)", ds, err)
    if not loaded:
        raise DataError(f"no dataset of sweep '{sweep.name}' can be read: {next(iter(failed.values()))}")
    connect(address)
    check_cluster_fits(sweep, list(sizes.values()))
    require_shared_storage(st, expected_node_count())
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    concurrent = auto_max_concurrent(sweep, cluster_capacity().resources, list(sizes.values()))
    refs = {ds: ref.share(obj) for ds, (ref, obj) in loaded.items()}
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    study = ray.remote(run_study)
    sweep_dict = sweep.model_dump(mode="json")
    log.info("sweep '%s': %d studies (%s), %d run(s) each, storage %s", sweep.name, len(loaded), ", ".join(loaded),
             sweep.runs(), st.join("sweeps", sweep.name))
    futures = {study.options(num_cpus=0, max_retries=0, scheduling_strategy=here, name=f"study-{sweep.name}-{ds}")
               .remote(sweep_dict, ds, st.uri, refs[ds].as_dict(), sizes[ds], resume, concurrent, trackers): ds
               for ds in refs}
    summaries = {ds: {"dataset": ds, "status": "failed", "reason": reason} for ds, reason in failed.items()}
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        ds = futures.pop(ready[0])
        try:
            summaries[ds] = ray.get(ready[0])
        except Exception as err:  # noqa: BLE001 - the study's task died (its node lost, OOM-killed, ...)
            summaries[ds] = {"dataset": ds, "status": "failed", "reason": f"study task lost: {_one_line(err)}"}
            log.error("[%s] study failed: %s", ds, summaries[ds]["reason"])
    ordered = [summaries[ds] for ds in sweep.datasets]
    st.write_json({"sweep": sweep_dict, "summaries": ordered}, "sweeps", sweep.name, "sweep.json")
    return SweepOutcome(ordered, st.join("sweeps", sweep.name))


def dry_run(sweep: SweepFile, cluster: str | None = None) -> str:
    from dia_ray.distributed.plan import describe, parse_cluster

    return describe(sweep, parse_cluster(cluster) if cluster else None)

