"""LARS around momentum SGD, and the learning-rate schedule of the reference (ALGORITHM.md §4.7).

The reference wraps ``SGD(lr, momentum 0.9, weight_decay 1e-6)`` in torchlars' LARS: the wrapper hides SGD's weight
decay, folds it into the gradient and rescales the gradient per parameter tensor by the local (trust) ratio, then lets
SGD step. :class:`LARS` does the same in one optimiser. The schedule is GradualWarmup(×10 over 10 epochs) followed by
cosine annealing, evaluated at fractional epochs and set every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from dia_ray.config import OptimConfig


class LARS(Optimizer):
    """torchlars(SGD) for every parameter tensor p with gradient g (BN weights and biases included, no exclusion):

        local = trust·‖p‖ / (‖g‖ + wd·‖p‖ + eps)   if ‖p‖ > 0 and ‖g‖ > 0, else 1
        d = (g + wd·p)·local
        buf = d on the first step, else momentum·buf + d;   p ← p − lr·buf

    ``p.grad`` is left untouched (torchlars overwrote it with d; only the update matters). The momentum buffer is
    kept under SGD's state key ``momentum_buffer``."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coef: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                            ("trust_coef", trust_coef), ("eps", eps)):
            if value < 0:
                raise ValueError(f"LARS {name} must be >= 0, got {value}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coef=trust_coef, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, trust, eps = group["weight_decay"], group["trust_coef"], group["eps"]
            p_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            # The trust ratio stays on the device (torchlars' CUDA kernel likewise avoids a host round trip).
            local = torch.where(
                (p_norm > 0) & (g_norm > 0), trust * p_norm / (g_norm + wd * p_norm + eps), torch.ones_like(p_norm)
            )
            update = torch._foreach_add(grads, params, alpha=wd)
            torch._foreach_mul_(update, list(local.unbind()))
            if group["momentum"] != 0:
                update = self._momentum(params, update, group["momentum"])
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss

    def _momentum(self, params: list[torch.Tensor], update: list[torch.Tensor], momentum: float) -> list[torch.Tensor]:
        """SGD's heavy-ball buffer (dampening 0, no Nesterov): buf = d on the first step, momentum·buf + d after."""
        old = [(self.state[p]["momentum_buffer"], d) for p, d in zip(params, update)
               if "momentum_buffer" in self.state[p]]
        if old:
            bufs, ds = map(list, zip(*old))
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, ds)
        for p, d in zip(params, update):
            self.state[p].setdefault("momentum_buffer", d)
        return [self.state[p]["momentum_buffer"] for p in params]


def lr_at(epoch: float, cfg: OptimConfig) -> float:
    """Learning rate at fractional epoch e (0-based, §4.7): GradualWarmup then closed-form cosine annealing.

    e ≤ warm-up:  lr·(1 + (mult − 1)·e/warm-up)                (0.1 → 1.0 over 10 epochs by default)
    e > warm-up:  lr·mult·(1 + cos(π(e − warm-up)/T_max))/2    (T_max = ``cosine_t_max``, 1000 even for 200 epochs)

    The reference sets this after each optimiser step for e = fractional_epoch(epoch, n, L), so iteration 0 of the
    run uses lr_at(0) = 0.1 and iteration n+1 uses lr_at(fractional_epoch(epoch, n, L))."""
    peak = cfg.lr * cfg.warmup_multiplier
    if cfg.warmup_epochs > 0 and epoch <= cfg.warmup_epochs:
        return cfg.lr * (1.0 + (cfg.warmup_multiplier - 1.0) * epoch / cfg.warmup_epochs)
    return peak * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.cosine_t_max)) / 2.0


def fractional_epoch(epoch_index: int, iteration: int, loader_len: int) -> float:
    """e = epoch_index + iteration / loader_len, with epoch_index 0-based and loader_len the FULL loader length even
    when the epoch is cut at 201 iterations (§4.7)."""
    if loader_len < 1:
        raise ValueError(f"loader_len must be >= 1, got {loader_len}")
    return epoch_index + iteration / loader_len
