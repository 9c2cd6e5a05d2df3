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
from dia_ray.errors import ClusterError, ConfigError
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
    """Checks that need no cluster: storage writable, GPU present when asked, enough local CPUs. Returns the
    storage root and the CPUs per worker."""
    root = open_storage(storage, writable=True)
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
        per = placement.cpus_per_worker or 1.0
    return root, per


def connect_and_check(placement: Placement, cpus_per_worker: float, storage: Storage | None = None) -> None:
    """Join/start Ray, refuse a request the cluster can never schedule, and (multi-node) a node-local storage."""
    from dia_ray.distributed.cluster_checks import expected_node_count, require_shared_storage
    from dia_ray.distributed.runtime import check_train_resources, connect

    connect(placement.address)
    check_train_resources(max(placement.workers, 1), placement.use_gpu, cpus_per_worker)
    if storage is not None:
        require_shared_storage(storage, expected_node_count())


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


def ddpm_config(dataset: str, budget: str | None = None, **overrides: Any) -> DDPMConfig:
    base = budget_overrides(budget or default_budget(dataset), "ddpm")
    return parse(DDPMConfig, deep_update(base, {k: v for k, v in overrides.items() if v is not None}), "ddpm config")


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


def ddpm_for_training(cfg: TrainConfig, dataset: str, budget: str | None) -> DDPMConfig:
    """The DDPM a DIA run dissolves with: the budget's DDPM at the dissolving resolution."""
    return ddpm_config(dataset, budget, resolution=cfg.dissolve.resolution)


def cli_overrides(sets: list[str], **named: Any) -> dict[str, Any]:
    """``--set a.b=value`` pairs (YAML-parsed values) plus named options that were given (None = not given)."""
    import yaml

    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    for key, value in named.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
            if value:
                out[key] = deep_update(out.get(key, {}), value)
        elif value is not None:
            out[key] = value
    return out


def run_training(cfg: TrainConfig, ref: DataRef, storage: Storage, placement: Placement, cpus_per_worker: float, *,
                 budget: str | None = None, ddpm: str | os.PathLike | None = None,
                 bank: str | os.PathLike | None = None, loaded: Any = None, **kwargs: Any):
    """One `dia-ray train`: check the cluster, get the DDPM (given, found, or trained) when the method dissolves with
    it, train, return the result record. ``loaded`` (from :func:`data_ref`) goes to the object store once."""
    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.distributed.train_ddpm import local_ddpm
    from dia_ray.distributed.train_dia import train_dia_ray
    from dia_ray.errors import CheckpointError, StorageError

    if ddpm is not None:
        try:
            load_ddpm(local_ddpm(ddpm))
        except (OSError, ValueError, StorageError) as err:
            raise CheckpointError(f"--ddpm {ddpm}: cannot load it ({err})") from None
    connect_and_check(placement, cpus_per_worker, storage)
    ref = ref.share(loaded)
    if cfg.dissolve.kind == "diffusion" and ddpm is None and bank is None:
        ddpm = ensure_ddpm(ref, ddpm_for_training(cfg, ref.dataset, budget), storage, placement, cpus_per_worker)
    return train_dia_ray(cfg, ref, storage, workers=placement.workers, use_gpu=placement.use_gpu,
                         cpus_per_worker=cpus_per_worker, ddpm_path=ddpm, bank_path=bank, **kwargs)
