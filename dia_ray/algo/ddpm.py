"""Stage A: the DDPM that dissolving uses (ALGORITHM.md §2): the reference's lucidrains UNet (:mod:`dia_ray.algo.unet`,
a diffusers model) + diffusers' DDPMScheduler + EMAModel.

A plain training loop (:func:`train_ddpm`) that the Ray Train wrapper calls unchanged; the model is saved in diffusers'
``save_pretrained`` layout so users can ``LucidUnet.from_pretrained(path / "unet")``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from torch.utils.flop_counter import FlopCounterMode

from dia_ray.algo.precision import Precision, autocast
from dia_ray.algo.resolution import to_ddpm, to_float01
from dia_ray.algo.unet import LucidUnet
from dia_ray.config import DDPMConfig, UNetConfig

log = logging.getLogger(__name__)

DDPM_META = "dia_ray_ddpm.json"


def build_unet(cfg: DDPMConfig) -> LucidUnet:
    """The reference's UNet (§2.1) at ``cfg.resolution``; ``cfg.unet`` defaults give its 36.25 M parameters."""
    u = cfg.unet
    return LucidUnet(
        sample_size=cfg.resolution,
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        norm_num_groups=u.norm_num_groups,
        attention_heads=u.attention_heads,
        attention_head_dim=u.attention_head_dim,
        attention_max_size=u.attention_max_size,
    )


@dataclass(frozen=True)
class DDPMCost:
    """Compute of one DDPM configuration: ``params``; ``forward_flops`` and ``train_flops`` (forward + backward) per
    image at ``cfg.resolution``, in FLOPs (a multiply-add = 2); ``train_flops_per_step`` = train_flops ×
    ``cfg.images_per_step`` (all workers together)."""

    params: int
    forward_flops: int
    train_flops: int
    train_flops_per_step: int


def ddpm_cost(cfg: DDPMConfig) -> DDPMCost:
    """Count (not time) the DDPM's cost with torch's FlopCounterMode on one image, on the meta device (no memory, no
    arithmetic): convolutions, matmuls/einsums and linear layers, i.e. everything but element-wise work."""
    params, forward, backward = _unet_cost(cfg.resolution, cfg.unet)
    train = forward + backward
    return DDPMCost(params=params, forward_flops=forward, train_flops=train,
                    train_flops_per_step=train * cfg.images_per_step)


@functools.lru_cache(maxsize=16)
def _unet_cost(resolution: int, unet_cfg: UNetConfig) -> tuple[int, int, int]:
    with torch.device("meta"):
        unet = build_unet(DDPMConfig(resolution=resolution, unet=unet_cfg))
        x = torch.zeros(1, 3, resolution, resolution)
        t = torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as forward:
        out = unet(x, t).sample
    with FlopCounterMode(display=False) as backward:
        out.sum().backward()
    return sum(p.numel() for p in unet.parameters()), forward.get_total_flops(), backward.get_total_flops()


def build_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """Cosine schedule (s = 0.008) = diffusers' ``squaredcos_cap_v2``; eps-prediction; x0 clipped to [-1, 1]."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )


def make_ema(unet: LucidUnet, cfg: DDPMConfig) -> EMAModel:
    """ema-pytorch semantics (§2.3): plain copy until ``ema_update_after``, then decay
    min(0.995, 1 - (1 + n)^(-2/3)), updated every ``ema_update_every`` optimiser steps (see :func:`ema_update`)."""
    return EMAModel(
        unet.parameters(),
        decay=cfg.ema_decay,
        update_after_step=cfg.ema_update_after,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=2 / 3,
        model_cls=type(unet),
        model_config=unet.config,
    )


def ema_update(ema: EMAModel, unet: torch.nn.Module, step: int, cfg: DDPMConfig) -> None:
    """Call after optimiser step ``step`` (1-based): every ``ema_update_every`` steps, decay from the step count."""
    if step % cfg.ema_update_every:
        return
    ema.optimization_step = step - 1  # EMAModel.step increments it, then derives the decay from it
    ema.step(unet.parameters())


def ddpm_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    x01: torch.Tensor,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """L1 between predicted and true noise (§2.2). x01: (B, 3, r, r) in [0, 1] (scaled to [-1, 1] here). The UNet
    runs in ``precision``; the L1 is reduced in fp32."""
    x0 = x01 * 2.0 - 1.0
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                                  device=x0.device)
    xt = scheduler.add_noise(x0, noise, timesteps)
    with autocast(precision, x0.device):
        pred = unet(xt, timesteps).sample
    return F.l1_loss(pred.float(), noise)


@dataclass
class DDPMState:
    """Everything a resumed run needs: model, EMA, optimiser, step and the data RNG."""

    unet: LucidUnet
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    step: int = 0
    losses: list[float] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        unet = self.unet.module if hasattr(self.unet, "module") else self.unet
        return {
            "unet": unet.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "losses": list(self.losses[-1000:]),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        unet = self.unet.module if hasattr(self.unet, "module") else self.unet
        unet.load_state_dict(sd["unet"])
        self.ema.load_state_dict(sd["ema"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.step = int(sd["step"])
        self.losses = list(sd.get("losses", []))


def new_state(cfg: DDPMConfig, device: torch.device | str = "cpu") -> DDPMState:
    torch.manual_seed(cfg.seed)  # the UNet's init
    unet = build_unet(cfg).to(device)
    ema = make_ema(unet, cfg)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    return DDPMState(unet=unet, ema=ema, optimizer=opt)


def step_generator(seed: int, micro: int, device: torch.device | str = "cpu") -> torch.Generator:
    """One RNG stream per micro-batch, identical on every data-parallel rank: each rank draws the randomness of the
    *global* micro-batch and keeps its own slice, so N workers compute exactly what 1 worker does."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + micro)
    return g


def global_batch_indices(n_images: int, global_batch: int, micro: int, seed: int) -> torch.Tensor:
    """Indices of micro-batch ``micro`` (counted over the run): full batches, a fresh permutation every pass over the
    images (sampling without replacement; the remainder of a pass is skipped). A set smaller than the batch is
    repeated to fill it — the reference's loader would give a short batch instead."""
    per_epoch = max(1, n_images // global_batch) if n_images >= global_batch else 1
    epoch, pos = divmod(micro, per_epoch)
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    perm = torch.randperm(n_images, generator=g)
    if n_images < global_batch:  # tiny datasets: repeat the permutation
        perm = perm.repeat(math.ceil(global_batch / n_images))
        return perm[:global_batch]
    return perm[pos * global_batch : (pos + 1) * global_batch]


def prepare_ddpm_batch(images_u8: torch.Tensor, resolution: int, flip_gen: torch.Generator | None,
                       hflip: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, r, r) in [0, 1]: random horizontal flip (the only augmentation), pad/resize."""
    x = to_float01(images_u8)
    if hflip:
        flip = torch.rand(x.shape[0], generator=flip_gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return to_ddpm(x, resolution)


def train_ddpm(
    images_u8: torch.Tensor,
    cfg: DDPMConfig,
    state: DDPMState,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    until_step: int | None = None,
    on_step: Callable[[DDPMState, dict[str, float]], None] | None = None,
) -> DDPMState:
    """Train from ``state.step`` to ``cfg.steps`` (or ``until_step``) on the normal training images.

    images_u8: (N, H, W, 3) uint8, what the DDPM trains on (:func:`dia_ray.data.ddpm_images`). Each optimiser step
    accumulates ``grad_accum`` micro-batches of ``cfg.global_batch`` images (the reference's trainer fetches a full
    batch per accumulation step, §2.3), each micro-batch split across the ``world_size`` ranks and its loss divided
    by grad_accum. Micro-batch u = step·grad_accum + m draws its images, flips, noise and t from its own stream
    (:func:`step_generator`), so N ranks compute what one process does. ``on_step`` is called after every optimiser
    step (checkpointing, metrics) with the state and metrics.
    """
    device = torch.device(device)
    scheduler = build_scheduler(cfg.num_train_timesteps)
    unet = state.unet
    unet.train()
    gb = cfg.global_batch
    if gb % world_size:
        raise ValueError(f"DDPM batch {gb} must divide by the number of workers {world_size}")
    shard = _rank_slice(gb, rank, world_size)
    last = min(cfg.steps, until_step or cfg.steps)
    t0, seen = time.perf_counter(), 0
    while state.step < last:
        state.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for m in range(cfg.grad_accum):
            micro = state.step * cfg.grad_accum + m
            g = step_generator(cfg.seed, micro)
            idx = global_batch_indices(len(images_u8), gb, micro, cfg.seed)
            x = prepare_ddpm_batch(images_u8[idx], cfg.resolution, g, cfg.hflip)
            noise = torch.randn(x.shape, generator=g)
            tsteps = torch.randint(0, cfg.num_train_timesteps, (gb,), generator=g)
            xm, nm, tm = (a[shard].to(device) for a in (x, noise, tsteps))
            loss = ddpm_loss(unet, scheduler, xm, noise=nm, timesteps=tm, precision=cfg.precision) / cfg.grad_accum
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.clip_grad_norm)
        state.optimizer.step()
        state.step += 1
        ema_update(state.ema, unet.module if hasattr(unet, "module") else unet, state.step, cfg)
        state.losses.append(total)
        seen += cfg.images_per_step
        if on_step is not None:
            dt = time.perf_counter() - t0
            on_step(state, {"step": state.step, "loss": total, "images_per_s": seen / dt if dt > 0 else 0.0})
    return state


def _rank_slice(n: int, rank: int, world: int) -> slice:
    per = n // world
    return slice(rank * per, (rank + 1) * per)


def save_ddpm(path: str | Path, state: DDPMState, cfg: DDPMConfig, extra: dict[str, Any] | None = None) -> Path:
    """diffusers layout: ``unet/`` (raw weights, what the reference dissolves with), ``unet_ema/``, ``scheduler/``,
    plus ``dia_ray_ddpm.json`` (config, step, extra). Load with :func:`load_ddpm` or ``from_pretrained``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unet = state.unet.module if hasattr(state.unet, "module") else state.unet
    unet.save_pretrained(path / "unet")
    state.ema.save_pretrained(path / "unet_ema")
    build_scheduler(cfg.num_train_timesteps).save_pretrained(path / "scheduler")
    meta = {"config": cfg.model_dump(mode="json"), "step": state.step, **(extra or {})}
    (path / DDPM_META).write_text(json.dumps(meta, indent=2))
    return path


def load_ddpm(path: str | Path, *, use_ema: bool = False, device: torch.device | str = "cpu"
              ) -> tuple[LucidUnet, DDPMScheduler, dict[str, Any]]:
    """(unet in eval mode, scheduler, metadata). Raises ``FileNotFoundError``/``ValueError`` on a broken folder."""
    path = Path(path)
    meta_file = path / DDPM_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a dia-ray DDPM folder (no {DDPM_META})")
    meta = json.loads(meta_file.read_text())
    unet = LucidUnet.from_pretrained(path / ("unet_ema" if use_ema else "unet"))
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    unet.eval().requires_grad_(False)
    return unet.to(device), scheduler, meta

