"""Training and evaluation of DISYRE with the same protocol as :func:`dia_ray.algo.loops.fit`, so the Ray Train
worker runs either (DISYRE.md §3–5).

One "epoch" is ``disyre.steps_per_epoch`` optimiser steps of a global batch of ``disyre.batch_size`` images
(data-parallel: each rank corrupts and restores its contiguous slice, DDP averages the gradients, which is the
gradient of the single-process mean loss). Each step: patch (pad 28 → 32 / random crop), augment, corrupt with the
rank's foreign-patch pool, t = t(severity), loss = MSE(R_θ(x_c, t), x) in fp32; AdamW with linear warm-up + cosine
(diffusers' schedule), gradient-norm clipping. Evaluation (rank 0): anomaly maps of the test images, the three image
reductions, AUROC of the *negated* anomaly score (records store "higher = more normal", label 1 = normal).

The random stream is reseeded from (seed, rank, epoch) at each epoch and the patch pool starts empty, so a run
resumed from an epoch checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dia_ray.algo.disyre.augment import augment
from dia_ray.algo.disyre.corruption import CorruptionParams, PatchPool, corrupt
from dia_ray.algo.disyre.inference import anomaly_maps, image_scores, map_method
from dia_ray.algo.disyre.model import box_size, build_restorer, patch_size, restore, training_patches
from dia_ray.algo.disyre.schedule import inference_timesteps, severity_to_t
from dia_ray.algo.loops import DIAData, unwrap
from dia_ray.algo.resolution import to_float01
from dia_ray.algo.scoring import auroc
from dia_ray.config import DisyreConfig, TrainConfig

log = logging.getLogger(__name__)

REDUCTIONS = ("mean", "max", "topk")


@dataclass(frozen=True)
class DisyreSetup:
    """What the data fixes: channels, patch P, box A and the corruption parameters."""

    image_size: int
    channels: int
    patch: int
    params: CorruptionParams
    timesteps: list[int]

    @classmethod
    def resolve(cls, cfg: DisyreConfig, train: torch.Tensor) -> "DisyreSetup":
        """train: uint8 (M, H, W, 3); channels "auto" = 1 when every image is grey (R = G = B)."""
        size = int(train.shape[1])
        channels = cfg.channels if cfg.channels != "auto" else \
            (1 if bool((train[..., :1] == train).all()) else 3)
        p = patch_size(size, cfg)
        return cls(size, channels, p, CorruptionParams.make(cfg.variant, box_size(p, cfg), cfg.bias_constant),
                   inference_timesteps(cfg.schedule_steps, cfg.inference_steps))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) → float (B, C, H, W) in [0, 1] (grey: channel 0)."""
        return to_float01(x)[:, : self.channels]


@dataclass
class DisyreState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    setup: DisyreSetup
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_auroc: float = float("nan")
    best_epoch: int = 0
    last_auroc: float = float("nan")
    last_scores: list[float] = field(default_factory=list)  # −(anomaly score): higher = more normal
    images_seen: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    images_scored: int = 0
    score_seconds: float = 0.0
    maps: dict[str, np.ndarray] | None = None  # the final evaluation's figure samples (not checkpointed state)

    _KEYS = ("epoch", "step", "history", "best_auroc", "best_epoch", "last_auroc", "last_scores", "images_seen",
             "train_seconds", "wall_seconds", "images_scored", "score_seconds")

    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                **{k: getattr(self, k) for k in self._KEYS}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        for key in self._KEYS:
            setattr(self, key, sd[key])


def new_disyre_state(cfg: TrainConfig, data: DIAData, device: torch.device | str = "cpu") -> DisyreState:
    d = cfg.disyre
    setup = DisyreSetup.resolve(d, data.train)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_restorer(d.unet, setup.channels, setup.patch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=d.lr, betas=d.adam_betas, weight_decay=d.weight_decay,
                            eps=d.adam_eps)
    return DisyreState(model=model, optimizer=opt, setup=setup)


def lr_at(step: int, total: int, cfg: DisyreConfig) -> float:
    """diffusers' cosine-with-warm-up at 0-based update ``step``: lr·step/warmup, then lr·½(1 + cos(π·progress))."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / max(1, cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * max(0.0, 0.5 * (1.0 + np.cos(np.pi * progress)))


def step_indices(n: int, batch: int, step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's image indices at global ``step``: the global batches walk through a stream of shuffled passes
    over the n images (pass p uses a permutation seeded by (seed, p), identical on every rank); the global batch
    is cut to a multiple of the world size and each rank takes its contiguous slice."""
    pos = torch.arange(step * batch, (step + 1) * batch)
    passes = pos // n
    out = torch.empty_like(pos)
    for p in passes.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + p))
        sel = passes == p
        out[sel] = perm[pos[sel] % n]
    per = batch // world
    return out[rank * per:(rank + 1) * per]


def epoch_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + epoch * 104_729 + 1)


def corrupted_batch(x01: torch.Tensor, setup: DisyreSetup, cfg: DisyreConfig, pool: PatchPool,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x01: (B, C, H, W) → (target x, corrupted x_c (B, C, P, P), t (B,)) on the CPU."""
    x = training_patches(x01, setup.patch, generator)
    if cfg.augment:
        x = augment(x, generator)
    x_c, a, _ = corrupt(x, pool, setup.params, generator)
    return x, x_c, severity_to_t(a, cfg.schedule_steps)


def train_epoch(state: DisyreState, data: DIAData, cfg: TrainConfig, *, device: torch.device | str = "cpu",
                rank: int = 0, world: int = 1, on_iter: Callable[[Any, int, int], None] | None = None
                ) -> dict[str, float]:
    d, setup = cfg.disyre, state.setup
    if d.batch_size < world:
        raise ValueError(f"disyre.batch_size {d.batch_size} is smaller than the {world} workers")
    state.model.train()
    generator = epoch_generator(cfg.seed, rank, state.epoch)
    pool = PatchPool(d.pool_size, setup.params.box)
    total = cfg.epochs * d.steps_per_epoch
    loss_sum, t0 = 0.0, time.perf_counter()
    for _ in range(d.steps_per_epoch):
        idx = step_indices(len(data.train), d.batch_size, state.step, cfg.seed, rank, world)
        x, x_c, t = corrupted_batch(setup.images(data.train[idx]), setup, d, pool, generator)
        x, x_c, t = x.to(device), x_c.to(device), t.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=d.autocast_bf16):
            pred = restore(state.model, x_c, t)
        loss = F.mse_loss(pred.float(), x)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), d.clip_grad_norm)
        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(state.step, total, d)
        state.optimizer.step()
        state.step += 1
        state.images_seen += len(idx) * world
        loss_sum += float(loss.detach())
        if on_iter is not None:
            on_iter(state, len(idx) * world, d.steps_per_epoch)
    state.train_seconds += time.perf_counter() - t0
    state.epoch += 1
    return {"loss": loss_sum / d.steps_per_epoch, "epoch": state.epoch, "iterations": d.steps_per_epoch,
            "lr": lr_at(state.step, total, d)}


def map_sample_indices(labels: torch.Tensor, k: int) -> list[int]:
    """The first k normal (label 1) and the first k anomalous (label 0) test images, in test order."""
    normal = torch.nonzero(labels == 1).flatten()[:k]
    anomalous = torch.nonzero(labels == 0).flatten()[:k]
    return sorted(torch.cat([normal, anomalous]).tolist())


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DIAData, cfg: TrainConfig, setup: DisyreSetup,
             device: torch.device | str = "cpu", keep: list[int] | None = None,
             on_batch: Callable[[int, int], None] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray] | None]:
    """Anomaly scores of every test image per reduction ((N,), higher = more anomalous) and, for the test indices
    in ``keep``, the maps artifact: inputs (K, H, W, C), restored (K, N, H, W, C), maps (K, H, W), labels, scores,
    index, timesteps (see :mod:`dia_ray.results.maps`)."""
    net = unwrap(model)
    net.eval()
    d = cfg.disyre
    method = map_method(d.inference, setup.timesteps, d.schedule_steps)
    keep_set = set(keep or [])
    scores: dict[str, list[torch.Tensor]] = {r: [] for r in REDUCTIONS}
    kept: dict[str, list] = {"inputs": [], "restored": [], "maps": [], "index": []}
    bs = cfg.eval.batch_size
    if on_batch is not None:
        on_batch(0, len(data.test))
    for start in range(0, len(data.test), bs):
        x = setup.images(data.test[start:start + bs]).to(device)
        maps, restored = anomaly_maps(net, x, setup.patch, method, bs)
        for r, v in image_scores(maps).items():
            scores[r].append(v.cpu())
        for j in (i - start for i in range(start, start + len(x)) if i in keep_set):
            kept["inputs"].append(x[j].permute(1, 2, 0).cpu())
            kept["restored"].append(restored[j].permute(0, 2, 3, 1).cpu())
            kept["maps"].append(maps[j].cpu())
            kept["index"].append(start + j)
        if on_batch is not None:
            on_batch(len(x), len(data.test))
    out = {r: torch.cat(v) for r, v in scores.items()}
    if not keep_set:
        return out, None
    index = torch.tensor(kept["index"])
    artifact = {
        "inputs": torch.stack(kept["inputs"]).numpy(), "restored": torch.stack(kept["restored"]).numpy(),
        "maps": torch.stack(kept["maps"]).numpy(), "index": index.numpy(),
        "labels": data.test_labels[index].numpy(), "scores": out[d.score][index].numpy(),
        "timesteps": np.asarray(setup.timesteps),
    }
    return out, artifact


EpochHook = Callable[[DisyreState, dict[str, Any]], None]


def fit_disyre(cfg: TrainConfig, data: DIAData, *, device: torch.device | str = "cpu",
               state: DisyreState | None = None, rank: int = 0, world: int = 1,
               on_epoch: EpochHook | None = None, on_iter: Callable[[Any, int, int], None] | None = None,
               on_eval: Callable[[int, int], None] | None = None) -> DisyreState:
    """Train from ``state.epoch`` to ``cfg.epochs``; evaluate on rank 0 every ``cfg.eval.every`` epochs and after
    the last (AUROC of the primary reduction ``disyre.score``, the others logged beside it); the last evaluation
    also keeps the maps artifact in ``state.maps``. ``on_epoch(state, metrics)`` runs on every rank after every
    epoch (checkpointing / reporting); ``on_iter`` / ``on_eval`` report progress (see :func:`dia_ray.progress.fit_hooks`)."""
    state = state or new_disyre_state(cfg, data, device)
    while state.epoch < cfg.epochs:
        t0 = time.perf_counter()
        metrics: dict[str, Any] = train_epoch(state, data, cfg, device=device, rank=rank, world=world,
                                               on_iter=on_iter)
        last = state.epoch == cfg.epochs
        if rank == 0 and (state.epoch % cfg.eval.every == 0 or last):
            t1 = time.perf_counter()
            keep = map_sample_indices(data.test_labels, cfg.disyre.map_samples) if last else None
            scores, state.maps = evaluate(state.model, data, cfg, state.setup, device, keep, on_batch=on_eval)
            state.score_seconds += time.perf_counter() - t1
            state.images_scored += len(data.test)
            for r in REDUCTIONS:
                metrics[f"auroc_{r}"] = auroc(-scores[r], data.test_labels)
            score = metrics[f"auroc_{cfg.disyre.score}"]
            state.last_auroc, state.last_scores = score, (-scores[cfg.disyre.score]).tolist()
            if not (state.best_auroc >= score):  # also replaces the initial NaN
                state.best_auroc, state.best_epoch = score, state.epoch
            metrics["auroc"] = score
            log.info("epoch %d: loss %.5f auroc %.4f (mean %.4f, max %.4f, top-k %.4f)", state.epoch,
                     metrics["loss"], score, metrics["auroc_mean"], metrics["auroc_max"], metrics["auroc_topk"])
        state.history.append(dict(metrics))
        state.wall_seconds += time.perf_counter() - t0
        if on_epoch is not None:
            on_epoch(state, metrics)
    return state


def final_summary(cfg: TrainConfig, state: DisyreState) -> dict[str, Any]:
    """What a finished run adds to its final evaluation for the result record: scoring speed (images/s, all N
    restorations included) and the record's params (sizes as resolved for the data)."""
    d, setup = cfg.disyre, state.setup
    return {"score_images_per_s": state.images_scored / state.score_seconds if state.score_seconds else 0.0,
            "params": {"variant": d.variant, "inference": d.inference, "inference_steps": d.inference_steps,
                       "score": d.score, "patch_size": setup.patch, "box_size": setup.params.box,
                       "channels": setup.channels, "steps": cfg.epochs * d.steps_per_epoch,
                       "batch_size": d.batch_size, "epochs": cfg.epochs}}
