"""The reference implementation's *procedure*, written from the spec (docs/ALGORITHM.md §3, §4.3–4.8, §5, §10), as
the baseline every speed ratio is measured against. Not a port of its code: the same work, done the way the
reference does it, with this project's math functions where the math is the same.

Training iteration (Algorithm 1, §4.8, as the reference's ``simclr_DIA.py`` runs it, fp32, NCHW):
- flips as an affine grid-sample with a per-sample ±1 x-scale (§3.3: the reference's HorizontalFlipLayer);
- branch 3: a Python loop over the 4 shifts, each with its own flip, its own host-drawn t, its own pad 28→32 and
  **its own UNet call of B images**, through ``p_sample`` — which also computes the posterior mean/variance and draws
  the noise of x_{t−1}, then discards them (§10.1, §10.2);
- the heuristic blurs run in the same per-shift module, and blur all three branches (the reference's Blur module
  ignores the diffusion flag, §3.5);
- SimCLR augmentation batched with per-sample parameters (§4.3; ALGORITHM.md §10: "augmentation < 2 %, it is already
  batched"), the crop parameters and the jitter-order coin drawn on the host with numpy (§10.6);
- one backbone forward of all views, NT-Xent-neg + shift CE, LARS step, LR set per iteration, ``.item()`` logging;
- the auxiliary linear-probe head: Linear(512, 2) on the detached features of V1_0 and V2_0, CE, its own Adam step
  (§4.1, §4.8 step 9, §10.7).

CSI evaluation (§5, §10.8–10.10): test loader batch 100; for each batch and each of the S samples the global RNGs
are reseeded with s, 4 shifted views per image (a fresh flip per shift), one forward; features moved to the CPU and
saved with ``torch.save`` (the reference caches them on disk); the score loops over test images in Python with one
``.item()`` per image and shift. CSI's extra 'baseline'/'clean_norm'/'similar' scores are *not* computed (they
would make the baseline slower).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dia_ray.algo.augment import adjust_contrast, adjust_hsv, affine_crop, random_grayscale
from dia_ray.algo.dissolve import gaussian_blur, median_blur
from dia_ray.algo.lars import LARS, fractional_epoch, lr_at
from dia_ray.algo.loops import N_SHIFTS, build_model
from dia_ray.algo.losses import amplified_nt_xent, normalize, shift_loss
from dia_ray.algo.resolution import from_ddpm, to_ddpm, to_float01
from dia_ray.algo.scoring import auroc
from dia_ray.algo.shifts import apply_shift, shift_labels
from dia_ray.config import TrainConfig

N_CLASSES = 2  # the linear-probe head's classes (one-class training: every image has the normal label)


def affine_hflip(x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """The reference's flip layer: per-sample x-scale of ±1 (p = 0.5) applied by grid-sample (exact at pixel
    centres, §3.3)."""
    sign = torch.where(torch.rand(x.shape[0], generator=rng) < 0.5, -1.0, 1.0)
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = sign
    theta[:, 1, 1] = 1.0
    return affine_crop(x, theta)


def host_augment(x: torch.Tensor, rng: np.random.Generator, crop_scale: tuple[float, float]) -> torch.Tensor:
    """A = colour jitter (p 0.8, order coin per batch) → greyscale (p 0.2) → inception crop, §4.3, with the
    reference's host-side draws: the order coin and the crop parameters from numpy, the factors with torch."""
    n, _, h, w = x.shape
    sel = torch.rand(n) < 0.8
    f_c, f_h, f_s, f_b = (torch.empty(n).uniform_(lo, hi) for lo, hi in ((0.6, 1.4), (-0.1, 0.1), (0.6, 1.4),
                                                                         (0.6, 1.4)))
    if rng.integers(2):
        y = adjust_hsv(adjust_contrast(x, f_c), f_h, f_s, f_b)
    else:
        y = adjust_contrast(adjust_hsv(x, f_h, f_s, f_b), f_c)
    x = torch.where(sel.view(-1, 1, 1, 1), y, x)
    x = random_grayscale(x, None)
    area = rng.uniform(*crop_scale, 10 * n) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), 10 * n))
    cw, ch = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    cw, ch = cw[ok][:n], ch[ok][:n]
    cw = np.concatenate([cw, np.full(n - len(cw), float(w))])
    ch = np.concatenate([ch, np.full(n - len(ch), float(h))])
    bx = rng.integers((cw - w).astype(np.int64), (w - cw + 1).astype(np.int64)) / w
    by = rng.integers((ch - h).astype(np.int64), (h - ch + 1).astype(np.int64)) / h
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.from_numpy(cw / w)
    theta[:, 0, 2] = torch.from_numpy(bx)
    theta[:, 1, 1] = torch.from_numpy(ch / h)
    theta[:, 1, 2] = torch.from_numpy(by)
    return affine_crop(x, theta)


class ReferenceDissolve:
    """The reference's dissolving shift module for one group: pad to r, ``p_sample(y, t)`` of a UNet taking a
    scalar-t batch, keep x0, crop back. ``unet(y, t)`` returns ε̂ (a lucidrains ``Unet`` or a diffusers model)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, t_range: tuple[int, int], resolution: int = 32):
        self.unet = unet.eval().requires_grad_(False)
        a = alphas_cumprod.double()
        a_prev = torch.cat([a.new_ones(1), a[:-1]])
        beta = 1 - a / a_prev
        self.a = a.float()
        self.coef_x0 = (beta * a_prev.sqrt() / (1 - a)).float()
        self.coef_xt = ((1 - a_prev) * (1 - beta).sqrt() / (1 - a)).float()
        self.log_var = (beta * (1 - a_prev) / (1 - a)).clamp_min(1e-20).log().float()
        self.t_range = t_range
        self.resolution = resolution
        self.calls = 0

    def eps(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.unet(y, t)
        return out.sample if hasattr(out, "sample") else out

    @torch.no_grad()
    def __call__(self, w: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        size = w.shape[-1]
        lo, hi = self.t_range
        t = int(lo + (hi - lo) * rng.random())
        y = to_ddpm(w, self.resolution)
        tt = torch.full((y.shape[0],), t, dtype=torch.long)
        self.calls += 1
        a = self.a[t]
        x0 = (y / a.sqrt() - ((1 - a) / a).sqrt() * self.eps(y, tt)).clamp(-1, 1)
        mean = self.coef_x0[t] * x0 + self.coef_xt[t] * y  # p_sample's x_{t-1}, computed and thrown away
        _ = mean + (0.5 * self.log_var[t]).exp() * torch.randn_like(y)
        return from_ddpm(x0, size)


class ReferenceStep:
    """One training iteration of DIA (``dissolve`` a :class:`ReferenceDissolve`), CSI (``blur`` and ``dissolve``
    None) or a heuristic-blur variant (``blur`` "gaussian"/"median"), the reference's way (module docstring)."""

    def __init__(self, cfg: TrainConfig, dissolve: ReferenceDissolve | None = None, blur: str | None = None,
                 seed: int = 0):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = build_model(cfg)
        o = cfg.optim
        self.optimizer = LARS(self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                              trust_coef=o.trust_coef, eps=o.eps)
        self.linear = nn.Linear(512, N_CLASSES)
        self.linear_opt = torch.optim.Adam(self.linear.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-6)
        self.dissolve = dissolve
        self.blur = blur
        self.rng = np.random.default_rng(seed)
        self.step_count = 0
        self.logged: dict[str, float] = {}

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        return (gaussian_blur if self.blur == "gaussian" else median_blur)(x, self.cfg.dissolve.kernel_size)

    def _shifted(self, x: torch.Tensor) -> torch.Tensor:
        """The per-shift module on one branch: [S_k(T(x))]_k, T = blur for the blur variants (all branches)."""
        return torch.cat([apply_shift(self._blur(x) if self.blur else x, k, self.cfg.shift)
                          for k in range(N_SHIFTS)])

    def __call__(self, images_u8: torch.Tensor, iteration: int = 0, loader_len: int = 1) -> float:
        cfg = self.cfg
        self.model.train()
        x = to_float01(images_u8)
        b = x.shape[0]
        branches = [self._shifted(affine_hflip(x, None)), self._shifted(affine_hflip(x, None))]
        if self.dissolve is not None or self.blur:
            groups = []
            for k in range(N_SHIFTS):
                w = affine_hflip(x, None)
                d = self.dissolve(w, self.rng) if self.dissolve is not None else self._blur(w)
                groups.append(apply_shift(d, k, cfg.shift))
            branches.append(torch.cat(groups))
        views = host_augment(torch.cat(branches), self.rng, tuple(cfg.crop_scale))
        labels = shift_labels(b, N_SHIFTS, len(branches))
        features, z, logits = self.model(views)
        l_sim = amplified_nt_xent(normalize(z), N_SHIFTS * b, len(branches), cfg.temperature, cfg.loss_mode)
        l_shift = shift_loss(logits, labels)
        loss = l_sim + l_shift
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(fractional_epoch(0, iteration, loader_len), cfg.optim)
        n = N_SHIFTS * b
        probe = self.linear(torch.cat([features[:b], features[n : n + b]]).detach())
        probe_loss = F.cross_entropy(probe, torch.zeros(2 * b, dtype=torch.long))
        self.linear_opt.zero_grad()
        probe_loss.backward()
        self.linear_opt.step()
        self.step_count += 1
        self.logged = {"loss": loss.item(), "loss_sim": l_sim.item(), "loss_shift": l_shift.item(),
                       "probe": probe_loss.item()}  # the reference logs every part with .item() each iteration
        return self.logged["loss"]


def _reseed(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


@torch.no_grad()
def _features(model: nn.Module, images_u8: torch.Tensor, samples: int, crop_scale: tuple[float, float],
              shift: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z̄ (K, N, d), l̄ (K, N, K)): per batch, per sample s: reseed, 4 flipped+shifted views, augment, forward."""
    zs, ls = [], []
    for start in range(0, len(images_u8), batch_size):
        x = to_float01(images_u8[start : start + batch_size])
        b = x.shape[0]
        z_b, l_b = [], []
        for s in range(samples):
            _reseed(s)
            views = torch.cat([apply_shift(affine_hflip(x, None), k, shift) for k in range(N_SHIFTS)])
            views = host_augment(views, np.random.default_rng(s), crop_scale)
            _, z, logits = model(views)
            z_b.append(z.cpu().view(N_SHIFTS, b, -1))
            l_b.append(logits.cpu().view(N_SHIFTS, b, -1))
        zs.append(torch.stack(z_b).mean(0))
        ls.append(torch.stack(l_b).mean(0))
    return torch.cat(zs, dim=1), torch.cat(ls, dim=1)


def reference_csi_evaluation(model: nn.Module, train_u8: torch.Tensor, test_u8: torch.Tensor,
                             test_labels: torch.Tensor, cfg: TrainConfig, batch_size: int = 100) -> float:
    """AUROC of the CSI score, computed the reference's way (module docstring). Global RNG state is restored."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    was_training = model.training
    model.eval()
    try:
        common = (cfg.eval.samples, tuple(cfg.eval.crop_scale), cfg.shift, batch_size)
        z_tr, l_tr = _features(model, train_u8, *common)
        z_te, l_te = _features(model, test_u8, *common)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"simclr": z_tr, "shift": l_tr}, Path(tmp) / "train_feats.pth")
            torch.save({"simclr": z_te, "shift": l_te}, Path(tmp) / "test_feats.pth")
        norms = z_tr.norm(dim=2)
        axis = z_tr / norms.unsqueeze(-1)
        w_sim = [1.0 / norms[k].mean().item() for k in range(N_SHIFTS)]
        w_shi = [1.0 / l_tr[k, :, k].mean().item() for k in range(N_SHIFTS)]
        scores = []
        for i in range(z_te.shape[1]):
            score = 0.0
            for k in range(N_SHIFTS):
                score += (z_te[k, i] * axis[k]).sum(dim=1).max().item() * w_sim[k]
                score += l_te[k, i, k].item() * w_shi[k]
            scores.append(score / N_SHIFTS)
        return auroc(torch.tensor(scores), test_labels)
    finally:
        model.train(was_training)
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
