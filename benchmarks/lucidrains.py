"""lucidrains' ``denoising_diffusion_pytorch`` — the reference's own DDPM library (v0.27.12, ALGORITHM.md §2) —
imported from the benchmark environment (``bash benchmarks/setup.sh`` installs it; it is never copied here).

The package imports ``from torchvision import transforms as T, utils`` at module level, for its folder ``Dataset`` and
its ``Trainer``'s sample grids only; the ``Unet`` and ``GaussianDiffusion`` used here never touch them. The
torchvision wheel from the package index does not load beside the CPU torch (``operator torchvision::nms does not
exist``), so when no working torchvision is importable, :func:`import_lucidrains` puts two empty placeholder modules
under those names for the duration of the import and removes them afterwards (so other libraries' checks for
torchvision still see none). Touching ``T.<anything>`` or ``utils.<anything>`` afterwards raises ``AttributeError``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import torch

REFERENCE_VERSION = "0.27.12"
PLACEHOLDERS = ("torchvision", "torchvision.transforms", "torchvision.utils")


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken wheel raises RuntimeError at import, a missing one ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_lucidrains() -> types.ModuleType:
    """``denoising_diffusion_pytorch`` (raises ``ImportError`` with the install command when absent)."""
    if "denoising_diffusion_pytorch" in sys.modules:
        return sys.modules["denoising_diffusion_pytorch"]
    if importlib.util.find_spec("denoising_diffusion_pytorch") is None:
        raise ImportError("denoising-diffusion-pytorch is not installed: run `bash benchmarks/setup.sh` (the "
                          "benchmark's extra, installed without its torchvision dependency)")
    import accelerate  # noqa: F401  - imported before the placeholders so its own torchvision probe sees none
    import ema_pytorch  # noqa: F401

    placed = [] if _torchvision_works() else list(PLACEHOLDERS)
    for name in placed:
        sys.modules[name] = types.ModuleType(name)
    if placed:
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
        sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]  # type: ignore[attr-defined]
    try:
        return importlib.import_module("denoising_diffusion_pytorch")
    finally:
        for name in placed:
            sys.modules.pop(name, None)


def version() -> str:
    from importlib.metadata import version as v

    return v("denoising-diffusion-pytorch")


def reference_unet(dim: int = 64, dim_mults: tuple[int, ...] = (1, 2, 4, 8)) -> torch.nn.Module:
    """The reference's ``Unet(dim=64, dim_mults=(1, 2, 4, 8))`` (36.25 M parameters at 3 channels)."""
    return import_lucidrains().Unet(dim=dim, dim_mults=dim_mults)


class LucidrainsDDPMStep:
    """One optimiser step of the reference's DDPM training (its ``Trainer.train`` loop without the data loader and
    the periodic sampling): ``GaussianDiffusion(Unet, L1, pred_noise, cosine)`` loss / grad_accum per micro-batch,
    backward, clip-norm 1.0, Adam(8e-5, (0.9, 0.99)) step, EMA(0.995, every 10) update — fp32 (amp=False)."""

    def __init__(self, unet: dict[str, Any] | None = None, image_size: int = 32, grad_accum: int = 1, seed: int = 0):
        ddp = import_lucidrains()
        from ema_pytorch import EMA

        torch.manual_seed(seed)
        self.diffusion = ddp.GaussianDiffusion(reference_unet(**(unet or {})), image_size=image_size, timesteps=1000,
                                               loss_type="l1", objective="pred_noise", beta_schedule="cosine")
        self.opt = torch.optim.Adam(self.diffusion.parameters(), lr=8e-5, betas=(0.9, 0.99))
        self.ema = EMA(self.diffusion, beta=0.995, update_every=10)
        self.grad_accum = grad_accum
        self.steps = 0

    def parameters(self) -> int:
        return sum(p.numel() for p in self.diffusion.model.parameters())

    def __call__(self, batch01: torch.Tensor) -> float:
        """batch01: (B, 3, r, r) in [0, 1] (the wrapper scales to [-1, 1] and draws t and the noise itself)."""
        total = 0.0
        for micro in batch01.chunk(self.grad_accum):
            loss = self.diffusion(micro) / self.grad_accum
            total += loss.item()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.steps += 1
        self.ema.update()
        return total


def describe() -> dict[str, Any]:
    return {"package": "denoising-diffusion-pytorch", "version": version(), "reference_version": REFERENCE_VERSION,
            "torchvision": "real" if _torchvision_works() else "placeholder modules during import (module docstring)"}
