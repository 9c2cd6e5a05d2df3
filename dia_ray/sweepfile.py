"""The sweep file (YAML, validated by pydantic; unknown keys are errors naming the key).

```yaml
name: step_range                   # experiment name: STORAGE/sweeps/<name>/<dataset>/
datasets: [covid, kvasir]          # one Optuna study per dataset, all progressing concurrently
methods: [dia]                     # several methods = a `method` dimension of the search space
seeds: [0, 1, 2]                   # every trial trains each seed; Tune sees the mean AUROC, records keep each seed
budget: paper                      # paper | small | tiny (default: per dataset, see config.BUDGETS)
base: {epochs: 200}                # fixed TrainConfig overrides
ddpm: {}                           # DDPMConfig overrides for the DDPMs the trials dissolve with
space:                             # TrainConfig dotted keys (+ `method`, `dissolve.t_range`)
  dissolve.t_range: {choices: [[30, 130], [130, 230]]}
  optim.lr: {low: 0.01, high: 1.0, log: true}
sampler: grid                      # tpe | grid (Optuna GridSampler: exactly the grid) | random
metric: auroc_last                 # or auroc_best_test (the paper's model selection)
mode: max
trials_per_dataset: 8              # tpe/random; a grid runs its size
resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}   # per Train worker of one run; gpus_per_worker
                                   # may be fractional (0.25: four 28 px runs share an A100) or `auto` (0.25 up to
                                   # 64 px images, 1 above)
ddpm_resources: {workers: 1, cpus_per_worker: 8, gpus_per_worker: 1}  # the DDPMs (default: `resources`, whole GPUs)
max_concurrent_trials: 2           # per dataset; default: what the cluster's capacity holds, shared by the studies
max_retries: 1                     # an errored trial is retried this many times
dissolve_mode: online              # online (paper) | bank (precomputed, shared by trials)
scheduler: none                    # none | asha (early stopping on the per-epoch AUROC)
asha: {grace_period: 10, reduction_factor: 3}
```
Every seed of a configuration is its own trial (they run concurrently); the searcher sees the mean over seeds.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dia_ray.config import TrainConfig, deep_update, parse
from dia_ray.errors import ConfigError
from dia_ray.paths import existing_file

SPECIAL_KEYS = ("method", "dissolve.t_range")
MAX_GRID = 10_000  # trials per dataset: a grid above this is a typo (a step too small), refused before it is built


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Param(_Strict):
    """One search dimension: ``choices`` or a numeric range ``low``..``high`` (``step``, ``log``)."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    type: Literal["int", "float"] | None = None

    @model_validator(mode="after")
    def _shape(self) -> "Param":
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices is empty")
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices, or low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        return self

    @property
    def is_int(self) -> bool:
        if self.type:
            return self.type == "int"
        vals = [self.low, self.high] + ([self.step] if self.step else [])
        return all(float(v).is_integer() for v in vals if v is not None) and not self.log

    def grid_size(self) -> int:
        """Points of this dimension in a grid, without listing them."""
        if self.choices is not None:
            return len(self.choices)
        if self.step is None:
            raise ValueError("a grid needs choices or a step")
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def grid_values(self) -> list[Any]:
        if self.choices is not None:
            return list(self.choices)
        n = self.grid_size()
        vals = [self.low + i * self.step for i in range(n)]
        return [int(v) for v in vals] if self.is_int else vals

    def example(self) -> Any:
        if self.choices is not None:
            return self.choices[0]
        return int(self.low) if self.is_int else float(self.low)


SMALL_IMAGE_GPU_SHARE = 0.25  # `gpus_per_worker: auto`: four runs on 28-64 px images share one A100
SMALL_IMAGE_MAX_SIZE = 64


class Resources(_Strict):
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | Literal["auto"] = 0.0

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus(cls, v: float | str) -> float | str:
        if v != "auto" and not 0 <= float(v) <= 64:
            raise ValueError("gpus_per_worker must be 0 (CPU), a fraction such as 0.25, a whole number or 'auto'")
        return v

    def gpu_share(self, image_size: int) -> float:
        """GPUs per Train worker for a dataset of ``image_size`` px (``auto``: fractional for small images)."""
        if self.gpus_per_worker == "auto":
            return SMALL_IMAGE_GPU_SHARE if image_size <= SMALL_IMAGE_MAX_SIZE else 1.0
        return float(self.gpus_per_worker)

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_worker == "auto" or float(self.gpus_per_worker) > 0


class AshaOptions(_Strict):
    """ASHA (asynchronous successive halving) on the per-epoch AUROC: a trial is compared with others at epochs
    grace_period, grace_period·rf, … and stopped when it is not in the top 1/rf."""

    grace_period: int = Field(10, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class BankOptions(_Strict):
    versions: int = Field(8, ge=1)
    actors: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)


class SweepFile(_Strict):
    name: str
    description: str = ""
    datasets: list[str]
    data_root: str | None = None
    normal_class: str | None = None
    methods: list[Literal["dia", "csi", "blur-gaussian", "blur-median", "disyre"]] = ["dia"]
    seeds: list[int] = [0]
    budget: Literal["paper", "small", "tiny"] | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    ddpm: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Param] = Field(default_factory=dict)
    sampler: Literal["tpe", "grid", "random"] = "tpe"
    optuna_seed: int = 0
    metric: Literal["auroc_last", "auroc_best_test"] = "auroc_last"
    mode: Literal["max", "min"] = "max"
    trials_per_dataset: int = Field(8, ge=1)
    resources: Resources = Resources()
    ddpm_resources: Resources | None = None
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_retries: int = Field(1, ge=0)
    dissolve_mode: Literal["online", "bank"] = "online"
    bank: BankOptions = BankOptions()
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaOptions = AshaOptions()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '-', '_' and '.' only (it names a directory)")
        return v

    @field_validator("datasets", "seeds", "methods")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        if len(set(map(str, v))) != len(v):
            raise ValueError("has duplicates")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SweepFile":
        from dia_ray.data.registry import FOLDER, known_names

        for ds in self.datasets:
            if ds not in known_names():
                raise ValueError(f"dataset '{ds}' is not in the registry; known: {', '.join(known_names())}")
            if ds == FOLDER and not self.normal_class:
                raise ValueError("dataset 'folder' needs normal_class")
        if "method" in self.space and len(self.methods) > 1:
            raise ValueError("give the methods either as `methods` or as a `method` dimension of `space`")
        t_range = self.space.get("dissolve.t_range")
        if t_range is not None:
            bad = next((c for c in t_range.choices or [] if not _is_step_pair(c)), None)
            if t_range.choices is None or bad is not None:
                raise ValueError("space.dissolve.t_range: give choices, each a pair [t_min, t_max] of integer steps, "
                                 f"e.g. {{choices: [[30, 130], [130, 230]]}}" + (f"; got {bad!r}" if bad is not None
                                                                                 else ""))
        if self.sampler == "grid":
            sizes = {}
            for key, p in self.search_space().items():
                try:
                    sizes[key] = p.grid_size()
                except ValueError:
                    raise ValueError(f"space.{key}: a grid needs choices or a step") from None
            if math.prod(sizes.values()) > MAX_GRID:
                dims = " x ".join(f"{k} {n:,}" for k, n in sizes.items())
                raise ValueError(f"the grid has {math.prod(sizes.values()):,} points ({dims}), more than the "
                                 f"{MAX_GRID:,} trials per dataset a sweep runs; use fewer choices or larger steps, "
                                 "or sampler tpe/random with trials_per_dataset")
        if self.dissolve_mode == "bank":
            for key in ("dissolve.t_range", "dissolve.t_min", "dissolve.t_max", "dissolve.resolution"):
                if key in self.space and self.space[key].choices is None:
                    raise ValueError(f"space.{key}: dissolve_mode bank needs choices (one bank per value)")
        from dia_ray.config import DDPMConfig, budget_overrides, default_budget

        try:  # the fixed part first (its errors are not a dimension's), then every value of every dimension
            for ds in self.datasets:
                parse(DDPMConfig, deep_update(budget_overrides(self.budget or default_budget(ds), "ddpm"), self.ddpm),
                      "ddpm")
            self.train_config(self.datasets[0], {}, self.seeds[0], what="base")
            for key, p in self.search_space().items():
                for value in p.choices if p.choices is not None else [p.example()]:
                    self.train_config(self.datasets[0], {key: value}, self.seeds[0], what=f"space.{key}={value!r}")
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self

    def search_space(self) -> dict[str, Param]:
        """The searched dimensions: ``space``, plus ``method`` when several methods are given (or when nothing else
        is searched: one configuration per method, each run once per seed)."""
        space = dict(self.space)
        if len(self.methods) > 1 or not space:
            space = {"method": Param(choices=list(self.methods)), **space}
        return space

    def grid(self) -> list[dict[str, Any]]:
        keys = list(self.search_space())
        values = [self.search_space()[k].grid_values() for k in keys]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]

    def trials(self) -> int:
        """Configurations per dataset (each runs once per seed)."""
        if self.is_grid:
            return math.prod(p.grid_size() for p in self.search_space().values())
        return self.trials_per_dataset

    @property
    def is_grid(self) -> bool:
        """Run exactly the grid: ``sampler: grid``, or nothing but the methods to choose from."""
        return self.sampler == "grid" or not self.space

    def runs(self) -> int:
        """Training runs (Tune trials) per dataset: configurations x seeds."""
        return self.trials() * len(self.seeds)

    def ddpm_placement(self) -> Resources:
        """The DDPMs' resources: ``ddpm_resources``, else ``resources`` with whole GPUs (a DDPM fills an A100)."""
        if self.ddpm_resources is not None:
            return self.ddpm_resources
        r = self.resources
        return r.model_copy(update={"gpus_per_worker": 1.0 if r.uses_gpu else 0.0})

    def train_config(self, dataset: str, params: dict[str, Any], seed: int, what: str | None = None) -> TrainConfig:
        """The TrainConfig of one (dataset, sampled params, seed); ``what`` names it in errors."""
        from dia_ray.config import budget_overrides, default_budget

        params = dict(params)
        method = params.pop("method", self.methods[0])
        over: dict[str, Any] = {}
        for key, value in params.items():
            if key == "dissolve.t_range":
                lo, hi = value
                over = deep_update(over, {"dissolve": {"t_min": int(lo), "t_max": int(hi)}})
                continue
            node: dict[str, Any] = {}
            cur = node
            parts = key.split(".")
            for part in parts[:-1]:
                cur[part] = {}
                cur = cur[part]
            cur[parts[-1]] = value
            over = deep_update(over, node)
        if self.dissolve_mode == "bank":
            over = deep_update(over, {"dissolve": {"mode": "bank"}})
        base = budget_overrides(self.budget or default_budget(dataset), "train")
        data = deep_update(deep_update(deep_update(base, self.base), over),
                           {"dataset": dataset, "method": method, "seed": seed,
                            **({"normal_class": self.normal_class} if self.normal_class else {})})
        return parse(TrainConfig, data, what or f"sweep '{self.name}'")


def _is_step_pair(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def encode_choice(value: Any) -> Any:
    """Optuna categorical values must be scalars: lists/dicts travel as JSON strings."""
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


def decode_params(config: dict[str, Any], space: dict[str, Param]) -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        p = space.get(key)
        if p is not None and p.choices is not None and any(isinstance(c, (list, dict, tuple)) for c in p.choices):
            value = json.loads(value)
        out[key] = value
    return out


def load_sweep(path: str | Path, data_root: str | None = None) -> SweepFile:
    """Read and validate a sweep file; every problem is one :class:`ConfigError` line naming the file and key."""
    path = existing_file(path, "sweep file", ConfigError)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a YAML mapping (name, datasets, space, ...)")
    if data_root:
        raw["data_root"] = str(data_root)
    return parse(SweepFile, raw, str(path))
