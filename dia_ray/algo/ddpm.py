"""Stage A: the DDPM that dissolving uses (ALGORITHM.md §2), on diffusers' UNet2DModel + DDPMScheduler + EMAModel.

A plain training loop (:func:`train_ddpm`) that the Ray Train wrapper calls unchanged; the model is saved in diffusers'
``save_pretrained`` layout so users can ``UNet2DModel.from_pretrained(path / "unet")``.
"""

from __future__ import annotations

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
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from dia_ray.algo.precision import Precision, autocast
from dia_ray.algo.resolution import to_ddpm, to_float01
from dia_ray.config import DDPMConfig

log = logging.getLogger(__name__)

DDPM_META = "dia_ray_ddpm.json"


def build_unet(cfg: DDPMConfig) -> UNet2DModel:
    """The §2.1 [IMPL] recipe: attention at levels whose map is <= ``attention_max_size`` px, plain blocks above."""
    u = cfg.unet
    sizes = [cfg.resolution // 2**i for i in range(len(u.block_out_channels))]
    down = tuple("AttnDownBlock2D" if s <= u.attention_max_size else "DownBlock2D" for s in sizes)
    up = tuple(b.replace("Down", "Up") for b in reversed(down))
    return UNet2DModel(
        sample_size=cfg.resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=u.layers_per_block,
        block_out_channels=tuple(u.block_out_channels),
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=u.norm_num_groups,
        act_fn="silu",
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=u.attention_head_dim,
        add_attention=True,
        downsample_type="conv",
        upsample_type="conv",
        dropout=0.0,
    )


def build_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """Cosine schedule (s = 0.008) = diffusers' ``squaredcos_cap_v2``; eps-prediction; x0 clipped to [-1, 1]."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )


def make_ema(unet: UNet2DModel, cfg: DDPMConfig) -> EMAModel:
    """ema-pytorch semantics (§2.3): plain copy until ``ema_update_after``, then decay
    min(0.995, 1 - (1 + n)^(-2/3)), updated every ``ema_update_every`` optimiser steps (see :func:`ema_update`)."""
    return EMAModel(
        unet.parameters(),
        decay=cfg.ema_decay,
        update_after_step=cfg.ema_update_after,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=2 / 3,
        model_cls=UNet2DModel,
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

    unet: UNet2DModel
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


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """One RNG stream per optimiser step, identical on every data-parallel rank: each rank draws the randomness of
    the *global* batch and keeps its own slice, so N workers compute exactly what 1 worker does on the whole batch."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + step)
    return g


def global_batch_indices(n_images: int, global_batch: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch for ``step``: a fresh permutation every epoch (sampling without replacement)."""
    per_epoch = max(1, n_images // global_batch) if n_images >= global_batch else 1
    epoch, pos = divmod(step, per_epoch)
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

    images_u8: (N, H, W, 3) uint8, the normal training images. The global batch (``cfg.global_batch``) is split in
    ``grad_accum`` micro-batches and across ``world_size`` ranks; loss of each micro-batch is divided by grad_accum
    (§2.3). ``on_step`` is called after every optimiser step (checkpointing, metrics) with the state and metrics.
    """
    device = torch.device(device)
    scheduler = build_scheduler(cfg.num_train_timesteps)
    unet = state.unet
    unet.train()
    gb = cfg.global_batch
    if gb % (world_size * cfg.grad_accum):
        raise ValueError(f"global batch {gb} must divide by workers x grad_accum = {world_size * cfg.grad_accum}")
    micro = gb // cfg.grad_accum
    last = min(cfg.steps, until_step or cfg.steps)
    t0, seen = time.perf_counter(), 0
    while state.step < last:
        g = step_generator(cfg.seed, state.step)
        idx = global_batch_indices(len(images_u8), gb, state.step, cfg.seed)
        x = prepare_ddpm_batch(images_u8[idx], cfg.resolution, g, cfg.hflip)
        noise = torch.randn(x.shape, generator=g)
        tsteps = torch.randint(0, cfg.num_train_timesteps, (gb,), generator=g)
        state.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for m in range(cfg.grad_accum):
            sl = slice(m * micro, (m + 1) * micro)
            shard = _rank_slice(micro, rank, world_size)
            xm, nm, tm = (a[sl][shard].to(device) for a in (x, noise, tsteps))
            loss = ddpm_loss(unet, scheduler, xm, noise=nm, timesteps=tm, precision=cfg.precision) / cfg.grad_accum
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.clip_grad_norm)
        state.optimizer.step()
        state.step += 1
        ema_update(state.ema, unet.module if hasattr(unet, "module") else unet, state.step, cfg)
        state.losses.append(total)
        seen += gb
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
              ) -> tuple[UNet2DModel, DDPMScheduler, dict[str, Any]]:
    """(unet in eval mode, scheduler, metadata). Raises ``FileNotFoundError``/``ValueError`` on a broken folder."""
    path = Path(path)
    meta_file = path / DDPM_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a dia-ray DDPM folder (no {DDPM_META})")
    meta = json.loads(meta_file.read_text())
    unet = UNet2DModel.from_pretrained(path / ("unet_ema" if use_ema else "unet"))
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    unet.eval().requires_grad_(False)
    return unet.to(device), scheduler, meta

