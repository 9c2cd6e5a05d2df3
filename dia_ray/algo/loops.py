"""Stage B training and evaluation loops for ``dia``, ``csi``, ``blur-gaussian`` and ``blur-median`` (ALGORITHM.md
§4.4–4.8, Algorithm 1). Plain functions, device-agnostic; the Ray Train wrapper calls :func:`fit` unchanged on every
worker with its rank and world size (data-parallel: each rank holds a slice of the global batch, projections are
all-gathered so the loss is the single-process loss on the global batch, §4.5 note iv).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dia_ray.algo.augment import random_hflip, simclr_augment
from dia_ray.algo.dissolve import BlurDissolver, Dissolver
from dia_ray.algo.lars import LARS, fractional_epoch, lr_at
from dia_ray.algo.losses import amplified_nt_xent, normalize, shift_loss
from dia_ray.algo.precision import autocast, channels_last, full_precision
from dia_ray.algo.resnet import ResNet18
from dia_ray.algo.resolution import to_float01
from dia_ray.algo.scoring import auroc, csi_score, csi_weights, extract_features
from dia_ray.algo.shifts import apply_shift, shift_labels
from dia_ray.config import TrainConfig

log = logging.getLogger(__name__)

N_SHIFTS = 4
REFERENCE_RESEED = 2**40  # seed of the reference_rng streams, far from the seeds runs use


@dataclass
class DIAData:
    """What the loops need, as tensors: uint8 (M, H, W, 3) normal train images, uint8 (N, H, W, 3) test images,
    (N,) labels with 1 = normal."""

    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor

    @classmethod
    def from_arrays(cls, train: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> "DIAData":
        return cls(torch.from_numpy(np.ascontiguousarray(train)), torch.from_numpy(np.ascontiguousarray(test)),
                   torch.from_numpy(np.asarray(test_labels, dtype=np.int64)))


@dataclass
class DIAState:
    model: ResNet18
    optimizer: LARS
    generator: torch.Generator
    epoch: int = 0  # completed epochs
    step: int = 0  # completed iterations
    history: list[dict[str, Any]] = field(default_factory=list)
    best_auroc: float = float("nan")
    best_epoch: int = 0
    last_auroc: float = float("nan")
    last_scores: list[float] = field(default_factory=list)
    images_seen: int = 0
    train_seconds: float = 0.0  # time in training iterations (images/s)
    wall_seconds: float = 0.0  # training + evaluation, summed over resumed segments

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best_auroc": self.best_auroc,
            "best_epoch": self.best_epoch,
            "last_auroc": self.last_auroc,
            "last_scores": self.last_scores,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.generator.set_state(sd["generator"])
        for key in ("epoch", "step", "history", "best_auroc", "best_epoch", "last_auroc", "last_scores",
                    "images_seen", "train_seconds", "wall_seconds"):
            setattr(self, key, sd[key])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def build_model(cfg: TrainConfig) -> ResNet18:
    variant = "imagenet" if cfg.backbone == "resnet18_imagenet" else "cifar"
    return ResNet18(variant=variant, simclr_dim=cfg.simclr_dim, n_shifts=N_SHIFTS)


def new_dia_state(cfg: TrainConfig, device: torch.device | str = "cpu", rank: int = 0) -> DIAState:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    o = cfg.optim
    opt = LARS(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
               trust_coef=o.trust_coef, eps=o.eps)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 1_000_003 + 7919 * rank + 1)
    return DIAState(model=model, optimizer=opt, generator=gen)


def reseed_like_reference(state: DIAState, cfg: TrainConfig, rank: int = 0) -> None:
    """``reference_rng``: after an evaluation the reference's global RNGs are left as its last ``set_random_seed(s)``
    (s = S − 1, the same at every evaluation and in every run) made them. All training randomness here comes from
    ``state.generator`` and the epoch sampler (:func:`sampler_epoch_seed`), so resetting those is the equivalent."""
    state.generator.manual_seed(REFERENCE_RESEED + cfg.eval.samples - 1 + 7919 * rank)


def sampler_epoch_seed(epoch: int, cfg: TrainConfig) -> tuple[int, int]:
    """(epoch, seed) keys of the shuffle of 0-based ``epoch``. ``reference_rng``: an epoch that follows an evaluation
    (after epoch e with e % eval.every == 0) counts from that evaluation under a fixed seed, so the epochs after
    every evaluation replay the same shuffles; otherwise every epoch of every seed gets its own."""
    since_eval = epoch % cfg.eval.every
    if cfg.reference_rng and epoch - since_eval > 0:
        return since_eval, REFERENCE_RESEED
    return epoch, cfg.seed


def loader_length(n_images: int, batch: int) -> int:
    return max(1, math.ceil(n_images / batch))


def epoch_batches(n_images: int, batch: int, epoch: int, seed: int, max_iters: int,
                  rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """This rank's image indices for each iteration of ``epoch``: a shuffled pass (identical permutation on every
    rank), cut after ``max_iters`` batches (the reference's 201). Single process: the last partial batch is used
    (drop_last=False); data-parallel: a global batch is cut to a multiple of the world size, each rank takes a
    contiguous slice."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n_images, generator=g)
    for i in range(min(loader_length(n_images, batch), max_iters)):
        gidx = perm[i * batch : (i + 1) * batch]
        per = len(gidx) // world
        if per == 0:
            return
        yield gidx[rank * per : (rank + 1) * per]


def build_views(x: torch.Tensor, idx: torch.Tensor, cfg: TrainConfig, dissolver: Dissolver | None,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Algorithm 1, steps 2–5. x: (B, 3, H, W) in [0, 1] → (views (branches·K·B, 3, H, W), shift labels, branches).

    Branches 1/2: one flip each, shared by their K shifts. Branch 3: dissolver output group k (its own flip and t),
    then S_k — dissolving always sees upright images. Then one independent SimCLR augmentation per view."""
    b = x.shape[0]
    u, v = random_hflip(x, generator), random_hflip(x, generator)
    if isinstance(dissolver, BlurDissolver) and cfg.dissolve.blur_all_branches:
        u, v = dissolver.blur(u), dissolver.blur(v)  # the reference's Blur module ignores the diffusion flag
    branches = [torch.cat([apply_shift(w, k, cfg.shift) for k in range(N_SHIFTS)]) for w in (u, v)]
    if dissolver is not None:
        d = dissolver(x, idx, N_SHIFTS, generator)
        branches.append(torch.cat([apply_shift(d[k * b : (k + 1) * b], k, cfg.shift) for k in range(N_SHIFTS)]))
    views = simclr_augment(torch.cat(branches), generator, crop_scale=tuple(cfg.crop_scale))
    labels = shift_labels(b, N_SHIFTS, len(branches)).to(x.device)
    return views, labels, len(branches)


def gather_branch_major(z: torch.Tensor, n_branches: int) -> torch.Tensor:
    """All-gather projections with gradients: global layout branch-major, then rank, then k, then image (§4.5 iv).
    Identity outside a multi-process group. Every rank then computes the same global loss; the functional
    all_gather sums the gradients of all ranks' losses, and DDP averages them, which gives the gradient of the
    single-process loss."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return z
    if torch.distributed.get_world_size() == 1:
        return z
    import torch.distributed.nn.functional as dist_fn

    chunks = z.chunk(n_branches)
    return torch.cat([torch.cat(dist_fn.all_gather(c.contiguous())) for c in chunks])


def contrastive_loss(model: torch.nn.Module, views: torch.Tensor, labels: torch.Tensor, n_branches: int,
                     cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_sim + L_shift over one forward of all views (BatchNorm sees the whole concatenated batch). The forward
    runs in ``cfg.precision``; both losses are reduced in fp32 (outside the autocast context)."""
    with autocast(cfg.precision, views.device):
        _, z, logits = model(channels_last(views))
    z, logits = full_precision(z), full_precision(logits)
    zg = gather_branch_major(normalize(z), n_branches)
    l_sim = amplified_nt_xent(zg, zg.shape[0] // n_branches, n_branches, cfg.temperature, cfg.loss_mode)
    l_shift = shift_loss(logits, labels)
    loss = l_sim + l_shift
    return loss, {"loss_sim": float(l_sim.detach()), "loss_shift": float(l_shift.detach())}


IterHook = Callable[[DIAState, int, int], None]  # (state, images in the iteration (global), iterations per epoch)
BatchHook = Callable[[int, int], None]  # (images just featurised, images in this evaluation); (0, total) first


def train_epoch(state: DIAState, data: DIAData, cfg: TrainConfig, dissolver: Dissolver | None, *,
                device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                on_iter: IterHook | None = None) -> dict[str, float]:
    """One epoch (≤ ``max_iters_per_epoch`` iterations); LR set per iteration from the fractional epoch.
    ``on_iter`` (progress) runs after every iteration."""
    model = state.model
    model.train()
    n, b = len(data.train), min(cfg.batch_size, len(data.train))
    length = loader_length(n, b)
    sums = {"loss": 0.0, "loss_sim": 0.0, "loss_shift": 0.0}
    iters, t0 = 0, time.perf_counter()
    epoch_key, seed_key = sampler_epoch_seed(state.epoch, cfg)
    for it, idx in enumerate(epoch_batches(n, b, epoch_key, seed_key, cfg.max_iters_per_epoch, rank, world)):
        x = to_float01(data.train[idx]).to(device)
        views, labels, n_branches = build_views(x, idx, cfg, dissolver, state.generator)
        loss, parts = contrastive_loss(model, views, labels, n_branches, cfg)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        # the reference steps its scheduler after the optimiser with the fractional epoch: update n runs at
        # lr(e + (n-1)/L), the first update at the optimiser's initial lr (0.1)
        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(fractional_epoch(state.epoch, it, length), cfg.optim)
        state.step += 1
        state.images_seen += len(idx) * world
        iters += 1
        sums["loss"] += float(loss.detach())
        for key, value in parts.items():
            sums[key] += value
        if on_iter is not None:
            on_iter(state, len(idx) * world, min(length, cfg.max_iters_per_epoch))
    state.train_seconds += time.perf_counter() - t0
    state.epoch += 1
    out = {key: value / max(iters, 1) for key, value in sums.items()}
    out.update(epoch=state.epoch, iterations=iters, lr=lr_at(float(state.epoch), cfg.optim))
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DIAData, cfg: TrainConfig, device: torch.device | str = "cpu",
             seed: int = 0, on_batch: BatchHook | None = None) -> tuple[float, torch.Tensor]:
    """(AUROC, CSI scores of the test images). Rotation (or the training shift family), no dissolving.
    ``on_batch`` (progress) runs once with 0 images, then after every feature-extraction batch."""
    net = unwrap(model)
    train = data.train
    if cfg.eval.max_train_images and len(train) > cfg.eval.max_train_images:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: cfg.eval.max_train_images]
        train = train[pick.sort().values]
    total = (len(train) + len(data.test)) * cfg.eval.samples
    if on_batch is not None:
        on_batch(0, total)
    common = dict(shift=cfg.shift, n_shifts=N_SHIFTS, samples=cfg.eval.samples,
                  crop_scale=tuple(cfg.eval.crop_scale), batch_size=cfg.eval.batch_size, device=device, seed=seed,
                  precision=cfg.precision,
                  on_batch=None if on_batch is None else lambda n: on_batch(n, total))
    weights = csi_weights(extract_features(net, train, **common))
    scores = csi_score(extract_features(net, data.test, **common), weights).cpu()
    return auroc(scores, data.test_labels), scores


EpochHook = Callable[[DIAState, dict[str, Any]], None]


def fit(cfg: TrainConfig, data: DIAData, dissolver: Dissolver | None, *, device: torch.device | str = "cpu",
        state: DIAState | None = None, rank: int = 0, world: int = 1, on_epoch: EpochHook | None = None,
        on_iter: IterHook | None = None, on_eval: BatchHook | None = None) -> DIAState:
    """Train from ``state.epoch`` to ``cfg.epochs``; evaluate on rank 0 every ``cfg.eval.every`` epochs and after
    the last, tracking the last-epoch AUROC (honest) and the best-on-test AUROC (the paper's model selection).
    ``on_epoch(state, metrics)`` runs on every rank after every epoch (checkpointing / reporting); ``on_iter`` and
    ``on_eval`` report progress (see :func:`train_epoch`, :func:`evaluate`)."""
    state = state or new_dia_state(cfg, device, rank)
    while state.epoch < cfg.epochs:
        t0 = time.perf_counter()
        metrics: dict[str, Any] = train_epoch(state, data, cfg, dissolver, device=device, rank=rank, world=world,
                                              on_iter=on_iter)
        due = state.epoch % cfg.eval.every == 0 or state.epoch == cfg.epochs
        if cfg.reference_rng and due:
            reseed_like_reference(state, cfg, rank)  # every rank, so all replay together
        if rank == 0 and due:
            score, scores = evaluate(state.model, data, cfg, device, on_batch=on_eval)
            state.last_auroc, state.last_scores = score, scores.tolist()
            if not (state.best_auroc >= score):  # also replaces the initial NaN
                state.best_auroc, state.best_epoch = score, state.epoch
            metrics["auroc"] = score
            state.history.append({k: v for k, v in metrics.items()})
            log.info("epoch %d: loss %.4f auroc %.4f", state.epoch, metrics["loss"], score)
        else:
            state.history.append(dict(metrics))
        state.wall_seconds += time.perf_counter() - t0
        if on_epoch is not None:
            on_epoch(state, metrics)
    return state
