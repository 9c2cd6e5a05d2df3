"""How a training step or evaluation computes: its arithmetic precision, ``fp32`` (the faithful default) or ``bf16``,
and the memory layout of the images fed to the convolutional networks.

bf16 is autocast around the *forward* passes only (the ResNet's, the dissolving UNet's, the DDPM's training forward):
matmuls and convolutions run in bf16, autograd runs each backward op in its forward op's dtype, and the parameters
stay fp32 (autocast casts copies, never the weights), so the optimiser updates fp32 master weights. Callers cast the
network outputs back to fp32 (:func:`full_precision`) and leave the context before the losses, so every loss reduction — the
similarity matrix, NT-Xent's exp/sum/log, the cross-entropy, the L1 — is computed in fp32. bf16 has fp32's exponent
range, so no loss scaling is needed (unlike fp16).

On CPUs with AVX512-BF16/AMX a bf16 matmul is ≈ 3× an fp32 one (this project's machine: 411 vs 120 GFLOP/s); on
A100s bf16 runs on the tensor cores.

Layout: a batch in channels-last order makes every convolution of the network run channels-last (PyTorch follows the
input's layout), which oneDNN computes faster than NCHW on CPU (this project's machine, CIFAR ResNet-18 at 28 px,
forward + backward, one thread: 1.22× in fp32, 1.11× in bf16) and which cuDNN's tensor-core kernels want. Same arithmetic, same weights:
only the summation order of the convolutions can differ (≈ 1e-7 relative in fp32).
"""

from __future__ import annotations

import contextlib

import torch

from dia_ray.config import Precision


def autocast(precision: Precision, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The forward-pass context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision '{precision}' unknown; known: fp32, bf16")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)



def channels_last(x: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W) in channels-last memory order (same values and shape)."""
    return x.contiguous(memory_format=torch.channels_last)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """x as float32 when an autocast forward left it in a lower precision; float32/float64 tensors unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
