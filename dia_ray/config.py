"""Typed configs for every stage (pydantic v2). Defaults are the paper's / reference code's (ALGORITHM.md §0, §11);
tests, the demo and smoke sweeps pass small explicit budgets. Unknown keys are errors (``extra="forbid"``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dia_ray.errors import ConfigError

# Arithmetic of a training step / evaluation (dia_ray.algo.precision): fp32 is the paper's and the default; bf16 runs
# the forward passes under autocast with fp32 master weights and fp32 loss reductions (issue 13).
Precision = Literal["fp32", "bf16"]

# Paper batch size per DDPM resolution (ALGORITHM.md §2.3).
DDPM_BATCH_BY_RESOLUTION = {32: 256, 64: 128, 128: 32}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UNetConfig(_Strict):
    """The reference's lucidrains ``Unet(dim=64, dim_mults=(1,2,4,8))`` (ALGORITHM.md §2.1), re-implemented in
    :mod:`dia_ray.algo.unet`; the defaults give its 36.25 M parameters."""

    block_out_channels: tuple[int, ...] = (64, 128, 256, 512)  # dim · dim_mults
    layers_per_block: int = Field(2, ge=1)  # ResBlocks per level, on the way down and on the way up
    norm_num_groups: int = 8
    attention_heads: int = Field(4, ge=1)
    attention_head_dim: int = Field(32, ge=1)
    attention_max_size: int | None = None  # linear attention only at levels whose map is <= this; None = all (ref.)

    @model_validator(mode="after")
    def _groups_divide(self) -> "UNetConfig":
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if not self.block_out_channels or bad:
            raise ValueError(f"block_out_channels must be non-empty multiples of norm_num_groups="
                             f"{self.norm_num_groups}, got {self.block_out_channels}")
        return self


class DDPMConfig(_Strict):
    """Stage A. ``batch_size`` None = the paper's per-resolution batch (256/128/32 at 32/64/128) as the *global*
    micro-batch: every optimiser step accumulates ``grad_accum`` micro-batches of that size (the reference's trainer,
    §2.3: 2 × 256 = 512 images per step at 32 px), each split across the workers (global / workers per worker)."""

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
    # The reference's SARS-COV-2 quirk: its DDPM reads the whole dataset folder, so the normal images of the TEST
    # split are trained on too (folder datasets only; off = the train split's normal images, the paper's protocol).
    whole_folder: bool = False
    precision: Precision = "fp32"  # the paper trains the DDPM in fp32 ("AMP prevents convergence", §2.3)

    @property
    def global_batch(self) -> int:
        """Images per micro-batch, summed over the workers."""
        return self.batch_size or DDPM_BATCH_BY_RESOLUTION[self.resolution]

    @property
    def images_per_step(self) -> int:
        """Images per optimiser step: ``grad_accum`` micro-batches of ``global_batch``."""
        return self.global_batch * self.grad_accum


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
    kernel_size: Literal[3, 7, 11] = 7  # the Gaussian's taps: OpenCV's (fixed tables up to 7, §3.5)
    blur_all_branches: bool = False  # True reproduces the reference code's bug (all three branches blurred)
    blur_resize_to_resolution: bool = False  # heuristics down/up-sample to `resolution` (paper Table 5)
    bank_versions: int = Field(8, ge=1)  # K dissolved versions per image in a bank

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


class DisyreUNetConfig(_Strict):
    """The restoration network R_θ(x, t) (DISYRE.md §3): diffusers ``UNet2DModel`` with these widths, plain
    down/up blocks except self-attention at ``attention_levels`` (down-block indices; the up path mirrors them) and
    in the mid block. The defaults are the authors' code: attention at down level 5 and up level 2."""

    block_out_channels: tuple[int, ...] = (32, 64, 96, 128, 256, 256)
    attention_levels: tuple[int, ...] = (4,)
    layers_per_block: int = Field(2, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _shape(self) -> "DisyreUNetConfig":
        if any(not 0 <= i < len(self.block_out_channels) for i in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} must index block_out_channels "
                             f"(0..{len(self.block_out_channels) - 1})")
        if any(w % self.norm_num_groups for w in self.block_out_channels):
            raise ValueError(f"every width in {self.block_out_channels} must be divisible by norm_num_groups "
                             f"{self.norm_num_groups} (GroupNorm)")
        return self


class DisyreConfig(_Strict):
    """Method ``disyre`` (DISYRE.md): synthetic-anomaly "cold diffusion" restoration. Defaults are the authors' v2
    code (DAG corruption, T = 100, 100k steps of 96 images = ``TrainConfig.epochs`` 200 x ``steps_per_epoch``
    500, AdamW 1e-4 with 500 warm-up steps + cosine, N = 4 ensembled restorations); image score = top-k mean of the
    map (ours; the code logs mean, max and top-100 mean).

    A disyre run reads from :class:`TrainConfig` only ``dataset``, ``normal_class``, ``image_size``, ``epochs``,
    ``seed``, ``max_train_images``, ``max_test_images``, ``eval.every`` and ``eval.batch_size``; the DIA-only fields
    (``batch_size``, ``max_iters_per_epoch``, ``backbone``, ``shift``, ``optim``, ``dissolve``, ``temperature``,
    ``loss_mode``, ``crop_scale``, ``simclr_dim``, ``eval.samples/crop_scale/max_train_images``) are ignored and
    left out of its config hash. The code validated every 10k steps: ``eval.every: 20`` at the paper budget."""

    variant: Literal["fpi", "dag"] = "dag"  # fpi = v1 (foreign patch only), dag = v2 (+ min-max match, bias)
    schedule_steps: int = Field(100, ge=2)  # T of the γ schedule
    inference_steps: int = Field(4, ge=1)  # N restorations at t_k = round(T - k T/N) - 1 (trailing)
    inference: Literal["mean-single-step", "multi-step"] = "mean-single-step"
    # image score = this reduction of the map; ours: top-k mean, k = 100 at 128² scaled with the area (DISYRE.md
    # §5.5 logs mean, max and top-100 mean; a mean over all pixels dilutes 1-2 px anomalies, see README)
    score: Literal["mean", "max", "topk"] = "topk"
    patch_size: int | None = Field(None, ge=2)  # P; None = 32 for 28 px (zero-pad 2), the side (padded to suit the
    # UNet) up to 128, else 128 (crops for training, sliding windows for scoring)
    box_fraction: float = Field(0.5, gt=0, le=1)  # anomaly box A = round(fraction P) >= 2: the code's 64 at P = 128
    bias_constant: float | None = None  # bias selection constant; None = 1000 (A / 64)^2 (the code: 1000 at A = 64)
    channels: Literal["auto", 1, 3] = "auto"  # auto = 1 when every train image is grey (R = G = B), else 3
    batch_size: int = Field(96, ge=1)  # global batch per step (8 volumes x 12 slices in the code)
    steps_per_epoch: int = Field(500, ge=1)  # one "epoch" = this many steps (checkpoint / evaluation unit)
    lr: float = 1e-4
    adam_betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    adam_eps: float = 1e-8
    warmup_steps: int = Field(500, ge=0)
    clip_grad_norm: float = 1.0
    augment: bool = True  # the code's spatial / mirror / intensity augmentation of the clean image (§4)
    pool_size: int = Field(512, ge=1)  # foreign-patch FIFO cache per worker
    autocast_bf16: bool = False  # the code trains in bf16 mixed precision (GPU); fp32 here by default (CPU)
    map_samples: int = Field(4, ge=0)  # first k normal + k anomalous test images kept as a maps artifact
    unet: DisyreUNetConfig = DisyreUNetConfig()

    @model_validator(mode="after")
    def _steps(self) -> "DisyreConfig":
        if self.schedule_steps % self.inference_steps:
            raise ValueError(f"inference_steps {self.inference_steps} must divide schedule_steps "
                             f"{self.schedule_steps} (the trailing timestep grid)")
        factor = 2 ** (len(self.unet.block_out_channels) - 1)  # the UNet halves the side at every level but the last
        for name, side in (("patch_size", self.patch_size), ("the 128 px patch of large images", 128)):
            if side is not None and side % factor:
                raise ValueError(f"{name} {side} is not divisible by {factor}, which a UNet with "
                                 f"{len(self.unet.block_out_channels)} levels needs")
        return self


# Fields of TrainConfig a disyre run does not read (excluded from its config hash).
DIA_ONLY_FIELDS = frozenset({"backbone", "shift", "batch_size", "max_iters_per_epoch", "temperature", "loss_mode",
                             "crop_scale", "simclr_dim", "optim", "dissolve"})
DIA_ONLY_EVAL_FIELDS = frozenset({"samples", "crop_scale", "max_train_images"})

Method = Literal["dia", "csi", "blur-gaussian", "blur-median", "disyre"]


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
    disyre: DisyreConfig = DisyreConfig()  # method "disyre" only
    seed: int = 0
    max_train_images: int | None = Field(None, ge=1)  # subsample the normal training set (None = all)
    max_test_images: int | None = Field(None, ge=2)  # stratified subsample of the test set (None = all)
    # The reference reseeds python/numpy/torch at every evaluation (set_random_seed(s) per eval sample), so every epoch
    # after an evaluation replays the same shuffles, flips, t draws and augmentations. True reproduces that (the
    # replayed stream does not depend on ``seed``, as in the reference); False draws fresh randomness every epoch.
    reference_rng: bool = False
    precision: Precision = "fp32"  # the whole step (ResNet, dissolving UNet) and the evaluation

    @model_validator(mode="before")
    @classmethod
    def _removed_autocast_flag(cls, data: Any) -> Any:
        """``dissolve.autocast_bf16`` (bf16 for the dissolving UNet only) became ``precision``; configs that stored
        its default still load, a config that switched it on is told what replaced it."""
        dissolve = data.get("dissolve") if isinstance(data, dict) else None
        if isinstance(dissolve, dict) and "autocast_bf16" in dissolve:
            if dissolve["autocast_bf16"]:
                raise ValueError("dissolve.autocast_bf16 was replaced by precision: bf16 (the whole step in bf16, "
                                 "the dissolving UNet included)")
            data = {**data, "dissolve": {k: v for k, v in dissolve.items() if k != "autocast_bf16"}}
        return data

    _check_crop = field_validator("crop_scale")(_crop_scale)

    @model_validator(mode="after")
    def _method_matches_dissolve(self) -> "TrainConfig":
        kind = {"dia": "diffusion", "csi": "none", "blur-gaussian": "gaussian", "blur-median": "median",
                "disyre": "none"}[self.method]
        if self.dissolve.kind != kind:
            object.__setattr__(self, "dissolve", self.dissolve.model_copy(update={"kind": kind}))
        return self

    def config_hash(self) -> str:
        """Hash of everything the method reads but the seed: the key that groups seeds of one configuration. DIA-family
        hashes leave out ``disyre``, disyre hashes the DIA-only fields (so neither changes with the other's knobs)."""
        dump = self.model_dump(mode="json", exclude={"seed"})
        if self.method == "disyre":
            dump = {k: v for k, v in dump.items() if k not in DIA_ONLY_FIELDS}
            dump["eval"] = {k: v for k, v in dump["eval"].items() if k not in DIA_ONLY_EVAL_FIELDS}
        else:
            dump.pop("disyre")
        return stable_hash(dump)


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
                  "eval": {"samples": 2, "every": 3, "max_train_images": 256},
                  # disyre: 6 x 5 steps of 16 images with a 16-32 UNet; lr 1e-3 with a 3-step warm-up for the short
                  # horizon (the code's 1e-4 / 500 warm-up steps are for 100k steps); N = 2 restorations (t = 99, 49)
                  # score as well as 4 here (synthetic, 5 seeds: equal AUROC within 0.002) at twice the speed
                  "disyre": {"batch_size": 16, "steps_per_epoch": 5, "lr": 1e-3, "warmup_steps": 3,
                             "inference_steps": 2,
                             "unet": {"block_out_channels": (16, 32), "attention_levels": (1,), "layers_per_block": 1,
                                      "norm_num_groups": 8}}},
        "ddpm": {"steps": 200, "batch_size": 16, "grad_accum": 1, "checkpoint_every": 100,
                 "unet": {"block_out_channels": (32, 64), "layers_per_block": 1, "attention_heads": 2,
                          "attention_head_dim": 16, "attention_max_size": 16}},
    },
    "tiny": {
        "train": {"epochs": 2, "max_iters_per_epoch": 2, "batch_size": 8,
                  "eval": {"samples": 1, "every": 1, "max_train_images": 32}, "max_test_images": 40,
                  "disyre": {"batch_size": 4, "steps_per_epoch": 2, "inference_steps": 2, "warmup_steps": 1,
                             "map_samples": 2,
                             "unet": {"block_out_channels": (8, 16), "attention_levels": (1,), "layers_per_block": 1,
                                      "norm_num_groups": 8}}},
        "ddpm": {"steps": 4, "batch_size": 8, "grad_accum": 1, "checkpoint_every": 2,
                 "unet": {"block_out_channels": (16, 32), "layers_per_block": 1, "attention_heads": 2,
                          "attention_head_dim": 8, "attention_max_size": 16}},
    },
}


def default_budget(dataset: str) -> str:
    from dia_ray.data.registry import REGISTRY

    spec = REGISTRY.get(dataset)
    return "small" if spec is not None and spec.synthetic else "paper"


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (the dotted keys of ``--set`` and of sweep spaces)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def budget_overrides(name: str, part: str) -> dict[str, Any]:
    if name not in BUDGETS:
        raise ConfigError(f"budget '{name}' unknown; known: {', '.join(BUDGETS)}")
    return BUDGETS[name][part]
