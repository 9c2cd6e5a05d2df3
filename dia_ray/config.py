"""Typed configs for every stage (pydantic v2). Defaults are the paper's / reference code's (ALGORITHM.md §0, §11);
tests, the demo and smoke sweeps pass small explicit budgets. Unknown keys are errors (``extra="forbid"``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dia_ray.errors import ConfigError

# Paper batch size per DDPM resolution (ALGORITHM.md §2.3).
DDPM_BATCH_BY_RESOLUTION = {32: 256, 64: 128, 128: 32}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UNetConfig(_Strict):
    """diffusers ``UNet2DModel`` closest to lucidrains' Unet(dim=64, dim_mults=(1,2,4,8)) (ALGORITHM.md §2.1)."""

    block_out_channels: tuple[int, ...] = (64, 128, 256, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    attention_max_size: int = 16  # attention blocks at levels whose feature map is <= this size


class DDPMConfig(_Strict):
    """Stage A. ``batch_size`` None = the paper's per-resolution batch (256/128/32 at 32/64/128) as the *global*
    batch; per-worker batch = global / workers."""

    resolution: Literal[32, 64, 128] = 32
    steps: int = Field(25_000, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float = Field(8e-5, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_accum: int = Field(2, ge=1)
    clip_grad_norm: float = 1.0
    ema_decay: float = 0.995
    ema_update_every: int = 10
    ema_update_after: int = 100
    num_train_timesteps: int = 1000
    hflip: bool = True
    unet: UNetConfig = UNetConfig()
    seed: int = 0
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)

    @property
    def global_batch(self) -> int:
        return self.batch_size or DDPM_BATCH_BY_RESOLUTION[self.resolution]


class DissolveConfig(_Strict):
    """Branch 3 of DIA (ALGORITHM.md §3). ``kind`` diffusion = the DDPM x0-prediction; gaussian/median = the
    heuristic blurs (App. B); none = CSI (no third branch)."""

    kind: Literal["diffusion", "gaussian", "median", "none"] = "diffusion"
    mode: Literal["online", "bank"] = "online"  # bank = precomputed (documented deviation), online = paper
    t_min: int | None = None  # None = the dataset's paper default (30, 130) / Kvasir (130, 230)
    t_max: int | None = None
    input_range: Literal["raw01", "pm1"] = "raw01"
    resolution: Literal[32, 64, 128] = 32
    use_ema: bool = False  # the reference dissolves with the online (non-EMA) weights
    kernel_size: Literal[3, 7, 11] = 7
    blur_all_branches: bool = False  # True reproduces the reference code's bug (all three branches blurred)
    blur_resize_to_resolution: bool = False  # heuristics down/up-sample to `resolution` (paper Table 5)
    bank_versions: int = Field(8, ge=1)  # K dissolved versions per image in a bank
    autocast_bf16: bool = False  # bf16 autocast for the dissolving UNet call (inference only)

    @model_validator(mode="after")
    def _range(self) -> "DissolveConfig":
        if (self.t_min is None) != (self.t_max is None):
            raise ValueError("t_min and t_max must be given together")
        if self.t_min is not None and not (0 <= self.t_min < self.t_max <= 1000):
            raise ValueError(f"need 0 <= t_min < t_max <= 1000, got ({self.t_min}, {self.t_max})")
        return self


class OptimConfig(_Strict):
    """LARS(SGD) with warm-up and cosine, the reference code's values (ALGORITHM.md §4.7), not the paper's 0.001."""

    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-6, ge=0)
    trust_coef: float = 0.001
    eps: float = 1e-8
    warmup_epochs: float = 10.0
    warmup_multiplier: float = 10.0
    cosine_t_max: float = 1000.0  # the cosine horizon stays 1000 epochs even when training stops earlier


def _crop_scale(value: tuple[float, float]) -> tuple[float, float]:
    if not 0 < value[0] <= value[1] <= 1:
        raise ValueError(f"crop_scale needs 0 < low <= high <= 1, got {list(value)}")
    return value


class EvalConfig(_Strict):
    samples: int = Field(10, ge=1)  # S random augmentations per image and shift (CSI `ood_samples`)
    crop_scale: tuple[float, float] = (0.54, 1.0)  # or (0.54, 0.54) for `--resize_fix`
    every: int = Field(1, ge=1)  # evaluate every N epochs (the paper: every epoch, model picked on test AUROC)
    batch_size: int = Field(128, ge=1)
    max_train_images: int | None = Field(None, ge=1)  # cap the train bank for the CSI weights/axis (None = all)

    _check_crop = field_validator("crop_scale")(_crop_scale)


Method = Literal["dia", "csi", "blur-gaussian", "blur-median"]


class TrainConfig(_Strict):
    """Stage B: one contrastive run of ``method`` on ``dataset`` (ALGORITHM.md §4)."""

    dataset: str
    method: Method = "dia"
    normal_class: str | None = None  # None = the paper's choice for the dataset
    image_size: int | None = Field(None, ge=8)  # None = the dataset's (28 MedMNIST, 224 folders)
    backbone: Literal["resnet18_imagenet", "resnet18"] = "resnet18_imagenet"
    shift: Literal["rotation", "cutperm"] = "rotation"
    batch_size: int = Field(32, ge=2)  # images per step (global); views = 3 * 4 * batch for DIA
    epochs: int = Field(200, ge=1)  # "best model within 200 epochs"; cosine horizon stays optim.cosine_t_max
    max_iters_per_epoch: int = Field(201, ge=1)
    temperature: float = Field(0.5, gt=0)
    loss_mode: Literal["shifted_removed", "naive"] = "shifted_removed"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    simclr_dim: int = Field(128, ge=1)
    optim: OptimConfig = OptimConfig()
    dissolve: DissolveConfig = DissolveConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 0
    max_train_images: int | None = Field(None, ge=1)  # subsample the normal training set (None = all)
    max_test_images: int | None = Field(None, ge=2)  # stratified subsample of the test set (None = all)

    _check_crop = field_validator("crop_scale")(_crop_scale)

    @model_validator(mode="after")
    def _method_matches_dissolve(self) -> "TrainConfig":
        kind = {"dia": "diffusion", "csi": "none", "blur-gaussian": "gaussian", "blur-median": "median"}[self.method]
        if self.dissolve.kind != kind:
            object.__setattr__(self, "dissolve", self.dissolve.model_copy(update={"kind": kind}))
        return self

    def config_hash(self) -> str:
        """Hash of everything but the seed: the key that groups seeds of one configuration."""
        return stable_hash(self.model_dump(mode="json", exclude={"seed"}))


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def parse(model: type[BaseModel], data: dict[str, Any], what: str = "config") -> Any:
    """Validate ``data`` into ``model``; turn the first pydantic error into one readable :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{what}: unknown key '{loc}'") from None
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{what}: {loc + ': ' if loc else ''}{msg}") from None


# Named budgets. `paper` is the default for the paper's datasets; the synthetic datasets (demo, tests) default to
# `small`, which finishes on 2 CPU cores in minutes. Values are overrides of TrainConfig / DDPMConfig.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"train": {}, "ddpm": {}},
    "small": {  # what `dia-ray demo` runs: DIA 0.70 vs CSI 0.62 on `synthetic`, ~1.5 min DDPM + ~1 min per run
        "train": {"epochs": 6, "max_iters_per_epoch": 10, "batch_size": 32,
                  "eval": {"samples": 2, "every": 3, "max_train_images": 256}},
        "ddpm": {"steps": 200, "batch_size": 16, "grad_accum": 1, "checkpoint_every": 100,
                 "unet": {"block_out_channels": (32, 64), "layers_per_block": 1, "attention_head_dim": 16}},
    },
    "tiny": {
        "train": {"epochs": 2, "max_iters_per_epoch": 2, "batch_size": 8,
                  "eval": {"samples": 1, "every": 1, "max_train_images": 32}, "max_test_images": 40},
        "ddpm": {"steps": 4, "batch_size": 8, "grad_accum": 1, "checkpoint_every": 2,
                 "unet": {"block_out_channels": (16, 32), "layers_per_block": 1, "attention_head_dim": 8}},
    },
}


def default_budget(dataset: str) -> str:
    from dia_ray.data.registry import REGISTRY

    spec = REGISTRY.get(dataset)
    return "small" if spec is not None and spec.synthetic else "paper"


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def budget_overrides(name: str, part: str) -> dict[str, Any]:
    if name not in BUDGETS:
        raise ConfigError(f"budget '{name}' unknown; known: {', '.join(BUDGETS)}")
    return BUDGETS[name][part]
