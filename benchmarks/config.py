"""What ``python -m benchmarks`` measures and at which size: the reference configuration of issue 13 (the full run)
and a tiny one that exercises every code path in seconds (the unit test's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from benchmarks.measure import CLOCKS
from dia_ray.config import UNetConfig

PARTS = ("step", "eval", "ddpm", "ray", "auroc", "disyre")

# dia-ray's DDPM UNet at its defaults: the reference's lucidrains Unet(dim=64, dim_mults=(1,2,4,8)) re-implemented
# (dia_ray/algo/unet.py), 36.25 M parameters, 3.70 GFLOP per 32 px image forward.
REFERENCE_SIZE_UNET: dict[str, Any] = {}


@dataclass(frozen=True)
class BenchConfig:
    batch: int = 32  # images per DIA step (384 views)
    backbone: str = "resnet18"  # the CIFAR ResNet-18, the reference's low-resolution backbone (issue 13)
    unet: dict[str, Any] = field(default_factory=lambda: dict(REFERENCE_SIZE_UNET))  # dia-ray's DDPM UNet
    reference_unet: str = "lucidrains"  # the baseline's dissolving UNet: lucidrains' Unet, or "same" as dia-ray's
    lucidrains_unet: dict[str, Any] = field(default_factory=lambda: {"dim": 64, "dim_mults": (1, 2, 4, 8)})
    rounds: int = 3  # interleaved timed rounds per comparison (after one warm-up each)
    clock: str = "wall"  # what the ratios use: wall seconds, or CPU seconds (a shared machine; measure.py)
    threads: int | None = None  # torch threads of this process and of the Train worker (None: torch's default)
    iters: int = 1  # training iterations per timed round
    bank_versions: int = 4  # K of the in-memory bank of the step benchmark
    eval_images: int = 48  # images featurised per evaluation round (half train, half test)
    eval_samples: int = 10
    ddpm_batch: int = 32
    matmul_n: int = 2048
    ray_rounds: int = 3
    bank_build_versions: int = 1  # versions per image of the Ray-Data-vs-loop bank build (600 images)
    bank_build_rounds: int = 2
    auroc_seeds: int = 3
    auroc_train: dict[str, Any] = field(default_factory=lambda: {
        "epochs": 3, "max_iters_per_epoch": 10, "batch_size": 32,
        "eval": {"samples": 2, "every": 3, "max_train_images": 256}})
    auroc_ddpm_budget: str = "small"
    auroc_ddpm_steps: int = 30
    auroc_bank_versions: int = 4
    disyre_batch: int = 96  # DISYRE's global batch per step (its authors' 8 volumes x 12 slices), 32 px patches
    disyre_unet: dict[str, Any] = field(default_factory=dict)  # DisyreUNetConfig overrides (default: the authors')
    disyre_score_images: int = 48  # test images scored per round (N = 4 restorations each)
    parts: tuple[str, ...] = PARTS

    def __post_init__(self) -> None:
        UNetConfig(**self.unet)  # validates the overrides early (ConfigError-free: pydantic's message)
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown benchmark part(s) {sorted(unknown)}; known: {', '.join(PARTS)}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}")
        if self.reference_unet not in ("lucidrains", "same"):
            raise ValueError("reference_unet must be 'lucidrains' or 'same'")

    def replace(self, **changes: Any) -> "BenchConfig":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TINY = BenchConfig(
    batch=2, backbone="resnet18_imagenet",
    unet={"block_out_channels": (16, 32), "layers_per_block": 1, "attention_head_dim": 8},
    lucidrains_unet={"dim": 8, "dim_mults": (1, 2)}, rounds=1, bank_versions=2, eval_images=8, eval_samples=1,
    ddpm_batch=4, matmul_n=128,
    ray_rounds=1, bank_build_versions=1, bank_build_rounds=1, auroc_seeds=1,
    auroc_train={"epochs": 1, "max_iters_per_epoch": 1, "batch_size": 2,
                 "eval": {"samples": 1, "every": 1, "max_train_images": 16}, "max_test_images": 20},
    auroc_ddpm_budget="tiny", auroc_ddpm_steps=2, auroc_bank_versions=1,
    disyre_batch=2, disyre_unet={"block_out_channels": (32, 32), "attention_levels": (1,), "layers_per_block": 1},
    disyre_score_images=4,
)
