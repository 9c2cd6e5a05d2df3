"""What the CLI commands run: resolve the data and configs, check the request against the machine/cluster before
any work starts, find or build the DDPM, train. Each function is a stage with typed inputs and a path/record out."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dia_ray.config import DDPMConfig, TrainConfig, budget_overrides, deep_update, default_budget, parse
from dia_ray.distributed.dataref import DataRef, local_data_root
from dia_ray.distributed.train_ddpm import find_ddpm, train_ddpm_ray
from dia_ray.errors import BankError, CheckpointError, ClusterError, ConfigError, StorageError
from dia_ray.paths import existing_dir
from dia_ray.storage import Storage, is_uri, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where a Train run goes: ``workers`` data-parallel processes, ``cpus_per_worker`` each, GPUs or not."""

    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # None: split the machine's/cluster's CPUs evenly
    address: str | None = None


def preflight(placement: Placement, storage: str | os.PathLike) -> tuple[Storage, float]:
    """Checks that need no cluster: GPU present when asked, enough local CPUs, the storage writable (a local
    folder is not created here: the stages create their folders when they write). Returns the storage root
    and the CPUs per worker."""
    if placement.workers < 0:
        raise ConfigError("--workers must be >= 0 (0 = Ray Train local mode, in-process)")
    if placement.address is None:
        cpus = os.cpu_count() or 1
        if placement.use_gpu:
            import torch

            if not torch.cuda.is_available():
                raise ClusterError("--gpu given but this machine has no CUDA GPU; drop --gpu to train on CPU, or "
                                   "pass --address of a cluster with GPUs")
        if placement.workers > cpus:
            raise ClusterError(f"--workers {placement.workers} is more than this machine's {cpus} CPUs; use "
                               f"--workers {cpus} or fewer, or --address of a bigger cluster")
        per = placement.cpus_per_worker or max(1.0, float(cpus // max(placement.workers, 1)))
    else:
        check_address(placement.address)
        per = placement.cpus_per_worker or 1.0
    return open_storage(storage, writable=True), per


def check_address(address: str) -> None:
    """``--address`` is ``auto``, ``HOST:PORT`` (the GCS, 6379) or ``ray://HOST:PORT`` (Ray Client, 10001); the
    dashboard URL (http://...:8265) is for `dia-ray submit` / `jobs`."""
    import re

    match = re.fullmatch(r"(?:ray://)?(?:[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})", address)
    if address == "auto" or (match and 0 < int(match.group(1)) < 65536):
        return
    hint = (" (an http:// URL is the dashboard / Jobs API: use it with `dia-ray submit` and `dia-ray jobs`)"
            if address.startswith(("http://", "https://")) else "")
    raise ClusterError(f"--address '{address}' is not a Ray cluster address; use auto, HOST:6379 or "
                       f"ray://HOST:10001{hint}")


def connect_and_check(placement: Placement, cpus_per_worker: float, storage: Storage | None = None) -> None:
    """Join/start Ray, refuse a request the cluster can never schedule, and (multi-node) a node-local storage."""
    from dia_ray.distributed.cluster_checks import expected_node_count, require_shared_storage
    from dia_ray.distributed.runtime import check_train_resources, connect

    probe_address(placement.address)
    connect(placement.address)
    check_train_resources(max(placement.workers, 1), placement.use_gpu, cpus_per_worker)
    if storage is not None:
        require_shared_storage(storage, expected_node_count())


def probe_address(address: str | None, timeout: float = 5.0) -> None:
    """A TCP connection to ``--address`` before ``ray.init`` (which retries an unreachable host for minutes)."""
    import socket

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClusterError(f"cannot reach a Ray cluster at {address} ({err.strerror or err}); check that it runs "
                           "(`ray status` on its head node) and that the port is open or forwarded") from None


def data_ref(dataset: str, data_root: str | os.PathLike | None, normal_class: str | None = None,
             image_size: int | None = None) -> tuple[DataRef, Any]:
    """Resolve, read and validate the dataset on the driver (one clear error before any worker starts; synthetic
    datasets that are absent are generated). ``data_root`` may be a URI: only this dataset is fetched. Returns the
    reference and the loaded dataset; :meth:`DataRef.share` puts the latter into the object store once Ray runs."""
    from dia_ray.data import default_data_root, load_dataset

    given = str(data_root) if data_root else str(default_data_root())
    root = local_data_root(given, dataset, normal_class)
    loaded = load_dataset(dataset, root, normal_class=normal_class, image_size=image_size)
    location = given if is_uri(given) else str(root)
    return DataRef(dataset=dataset, data_root=location, normal_class=normal_class, image_size=image_size), loaded


def ddpm_config(dataset: str, budget: str | None = None, workers: int = 1, **overrides: Any) -> DDPMConfig:
    """The DDPM config of a budget with overrides; its global batch must split evenly over ``workers`` x
    ``grad_accum`` micro-batches (checked here, not in a worker)."""
    base = budget_overrides(budget or default_budget(dataset), "ddpm")
    cfg = parse(DDPMConfig, deep_update(base, {k: v for k, v in overrides.items() if v is not None}), "ddpm config")
    parts = max(workers, 1) * cfg.grad_accum
    if cfg.global_batch % parts:
        fits = max(parts, cfg.global_batch // parts * parts)
        raise ConfigError(f"DDPM batch {cfg.global_batch} does not split over {max(workers, 1)} worker(s) x "
                          f"grad_accum {cfg.grad_accum}; use --batch-size {fits} or another --workers")
    return cfg


def train_config(dataset: str, method: str, budget: str | None = None, overrides: dict[str, Any] | None = None
                 ) -> TrainConfig:
    base = deep_update({"dataset": dataset, "method": method}, budget_overrides(budget or default_budget(dataset),
                                                                               "train"))
    return parse(TrainConfig, deep_update(base, overrides or {}), "train config")


def ensure_ddpm(ref: DataRef, cfg: DDPMConfig, storage: Storage, placement: Placement,
                cpus_per_worker: float) -> str:
    """The DDPM for (dataset, config) from storage (its location), trained first when absent."""
    found = find_ddpm(storage, ref, cfg)
    if found is not None:
        log.info("using DDPM %s", found)
        return found
    return train_ddpm_ray(ref, cfg, storage, workers=placement.workers, use_gpu=placement.use_gpu,
                          cpus_per_worker=cpus_per_worker)


def ddpm_for_training(cfg: TrainConfig, dataset: str, budget: str | None, workers: int = 1) -> DDPMConfig:
    """The DDPM a DIA run dissolves with: the budget's DDPM at the dissolving resolution."""
    return ddpm_config(dataset, budget, workers, resolution=cfg.dissolve.resolution)


# `--set` keys that have their own option: setting them twice would silently let one win.
OWN_OPTION = {"dataset": "--dataset", "method": "--method", "seed": "--seed", "epochs": "--epochs",
              "shift": "--shift", "normal_class": "--normal-class", "dissolve.t_min": "--t-min",
              "dissolve.t_max": "--t-max", "dissolve.kernel_size": "--kernel-size", "dissolve.mode": "--bank",
              "dissolve.kind": "--method"}


def cli_overrides(sets: list[str], **named: Any) -> dict[str, Any]:
    """``--set a.b=value`` pairs (YAML-parsed values) plus named options that were given (None = not given)."""
    import yaml

    out: dict[str, Any] = {}
    for item in sets:
        key, eq, raw = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(p.strip() for p in parts):
            raise ConfigError(f"--set expects KEY=VALUE with a dotted key (e.g. --set eval.samples=2), got '{item}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({getattr(err, 'problem', None) or err}); "
                              "quote lists and strings, e.g. --set 'eval.crop_scale=[0.54, 1.0]'") from None
        for path in _dotted(parts, value):
            if path in OWN_OPTION:
                raise ConfigError(f"--set {item}: '{path}' has its own option, use {OWN_OPTION[path]}")
        node = out
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{'.'.join(parts[:depth + 1])}' was already set to {node!r} by "
                                  "another --set, so it has no sub-keys; drop one of the two")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"--set {item}: '{key.strip()}' already has sub-keys from another --set; drop one")
        node[parts[-1]] = value
    for key, value in named.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
            if value:
                out[key] = deep_update(out.get(key, {}), value)
        elif value is not None:
            out[key] = value
    return out


def _dotted(parts: list[str], value: Any) -> list[str]:
    """Every dotted key a ``--set`` writes (a mapping value writes its leaves)."""
    if isinstance(value, dict) and value:
        return [k for sub, v in value.items() for k in _dotted([*parts, str(sub)], v)]
    return [".".join(parts)]


def existing_location(location: str | os.PathLike, what: str, error: type[Exception]) -> Storage:
    """``location`` (a local folder or a URI) exists and is a folder: one line naming what is wrong otherwise."""
    if not is_uri(location):
        existing_dir(location, what, error)
    try:
        st = open_storage(location)
        if not st.exists():
            raise error(f"{what} {st} not found")
    except StorageError as err:
        raise error(f"{what}: {err}") from None
    return st


def check_ddpm_folder(path: str | os.PathLike, resolution: int | None = None) -> str:
    """``--ddpm`` is a dia-ray DDPM folder (local or a URI): its ``dia_ray_ddpm.json`` is a JSON object with the
    config it was trained with (at ``resolution`` when given). Reads only that file; returns the location."""
    import json

    from dia_ray.algo.ddpm import DDPM_META

    st = existing_location(path, "--ddpm", CheckpointError)
    if not st.is_file(DDPM_META):
        raise CheckpointError(f"--ddpm {st} is not a dia-ray DDPM folder (no {DDPM_META}); give the 'model' "
                              "folder that `dia-ray ddpm train` printed (STORAGE/ddpm/<key>/model)")
    try:
        meta = json.loads(st.read_text(DDPM_META))
    except (OSError, UnicodeDecodeError, ValueError, StorageError) as err:
        raise CheckpointError(f"--ddpm {st}: {DDPM_META} is corrupt ({type(err).__name__}: {err}); "
                              "train the DDPM again (dia-ray ddpm train ... --force)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        got = type(meta).__name__ if not isinstance(meta, dict) else "an object without a 'config' mapping"
        raise CheckpointError(f"--ddpm {st}: {DDPM_META} holds {got}, not a dia-ray DDPM's metadata; train "
                              "the DDPM again (dia-ray ddpm train ... --force)")
    trained_at = meta["config"].get("resolution")
    if resolution is not None and trained_at is not None and trained_at != resolution:
        raise ConfigError(f"--ddpm {st} was trained at resolution {trained_at}, the run dissolves at "
                          f"{resolution}; use a DDPM trained at {resolution} or dissolve at {trained_at}")
    return st.uri


def check_dissolve_inputs(cfg: TrainConfig, ddpm: str | os.PathLike | None, bank: str | os.PathLike | None
                          ) -> tuple[str | None, str | None]:
    """``--ddpm`` / ``--bank`` (folders or URIs) are used only by ``--method dia`` and not together; each is
    checked where it is stored. Returns their locations."""
    if ddpm is None and bank is None:
        return None, None
    if cfg.method != "dia":
        given = "--ddpm" if ddpm is not None else "--bank"
        raise ConfigError(f"{given} is used only by --method dia (method '{cfg.method}' does not dissolve with a "
                          f"DDPM); drop {given}")
    if ddpm is not None and bank is not None:
        raise ConfigError("give --ddpm (dissolve online) or --bank (precomputed), not both")
    if ddpm is not None:
        return check_ddpm_folder(ddpm, cfg.dissolve.resolution), None
    from dia_ray.distributed.bank import verify_bank

    st = existing_location(bank, "--bank", BankError)
    verify_bank(st)
    return None, st.uri


def check_dissolve_resolution(cfg: TrainConfig, ref: DataRef) -> None:
    """MedMNIST-size (28 px) images are dissolved at resolution 32 only (ALGORITHM.md §3): refused here, not after a
    DDPM at another resolution has been trained."""
    from dia_ray.algo.resolution import check_resolution
    from dia_ray.data.registry import get_spec

    if cfg.dissolve.kind == "none":
        return
    size = get_spec(ref.dataset, normal_class=ref.normal_class, image_size=ref.image_size).image_size
    try:
        check_resolution(size, cfg.dissolve.resolution)
    except ValueError as err:
        raise ConfigError(f"{err}; drop --set dissolve.resolution or set it to 32") from None


def run_training(cfg: TrainConfig, ref: DataRef, storage: Storage, placement: Placement, cpus_per_worker: float, *,
                 budget: str | None = None, ddpm: str | os.PathLike | None = None,
                 bank: str | os.PathLike | None = None, loaded: Any = None, **kwargs: Any):
    """One `dia-ray train`: check the cluster, get the DDPM (given, found, or trained) when the method dissolves with
    it, train, return the result record. ``loaded`` (from :func:`data_ref`) goes to the object store once. ``ddpm`` /
    ``bank`` are the locations :func:`check_dissolve_inputs` returned (the CLI checks them before creating anything)."""
    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.distributed.train_ddpm import local_ddpm
    from dia_ray.distributed.train_dia import train_dia_ray

    check_dissolve_resolution(cfg, ref)
    if ddpm is not None:
        try:
            load_ddpm(local_ddpm(ddpm))
        except (OSError, ValueError, StorageError) as err:
            raise CheckpointError(f"--ddpm {ddpm}: cannot load it ({err})") from None
    connect_and_check(placement, cpus_per_worker, storage)
    ref = ref.share(loaded)
    if cfg.dissolve.kind == "diffusion" and ddpm is None and bank is None:
        ddpm = ensure_ddpm(ref, ddpm_for_training(cfg, ref.dataset, budget, placement.workers), storage, placement,
                           cpus_per_worker)
    return train_dia_ray(cfg, ref, storage, workers=placement.workers, use_gpu=placement.use_gpu,
                         cpus_per_worker=cpus_per_worker, ddpm_path=ddpm, bank_path=bank, **kwargs)
