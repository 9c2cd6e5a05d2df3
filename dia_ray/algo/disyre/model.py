"""The restoration network R_θ(x, t) (DISYRE.md §3) and the geometry between our images and its patches (§7).

R_θ is a diffusers ``UNet2DModel`` predicting the clean image (x0), conditioned on the integer severity index
t ∈ {0..T−1} (not rescaled). Everything not set here is the diffusers default, as in the authors' code.

Patches: 28 px MedMNIST images are zero-padded to 32 (the ring is background and scores 0); sides up to 128 are
used whole; larger images are trained on random 128 px crops and scored with sliding windows.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from dia_ray.config import DisyreConfig, DisyreUNetConfig

MEDMNIST_SIZE, MEDMNIST_PATCH, MAX_PATCH = 28, 32, 128


def build_restorer(cfg: DisyreUNetConfig, channels: int, patch: int) -> UNet2DModel:
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D"
                 for i in range(len(cfg.block_out_channels)))
    up = tuple(b.replace("Down", "Up") for b in reversed(down))
    return UNet2DModel(
        sample_size=patch,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def restore(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """R_θ(x, t): x (B, C, P, P) in [0, 1], t (B,) int64 → (B, C, P, P) predicted clean image, fp32."""
    return model(x, t, return_dict=False)[0].float()


def patch_size(image_size: int, cfg: DisyreConfig) -> int:
    """P: the config's, else 32 for 28 px MedMNIST (zero-pad 2), the side padded up to a multiple of the UNet's
    2^(levels − 1) for sides up to 128, else 128 (random crops for training, sliding windows for scoring). The
    config validates that explicit patches and 128 suit the UNet."""
    if cfg.patch_size:
        return cfg.patch_size
    if image_size == MEDMNIST_SIZE:
        return MEDMNIST_PATCH
    factor = 2 ** (len(cfg.unet.block_out_channels) - 1)
    return -(-image_size // factor) * factor if image_size <= MAX_PATCH else MAX_PATCH


def box_size(patch: int, cfg: DisyreConfig) -> int:
    """A = round(box_fraction · P), at least 2 px (default P / 2: the code's 64 for 128 patches)."""
    return max(2, round(cfg.box_fraction * patch))


def pad_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """Zero-pad (B, C, S, S) centred to (B, C, side, side) (side ≥ S)."""
    extra = side - x.shape[-1]
    lo = extra // 2
    return torch.nn.functional.pad(x, (lo, extra - lo, lo, extra - lo))


def crop_centre(x: torch.Tensor, side: int) -> torch.Tensor:
    """The inverse of :func:`pad_to`: the centred (…, side, side) part."""
    lo = (x.shape[-1] - side) // 2
    return x[..., lo:lo + side, lo:lo + side]


def training_patches(x: torch.Tensor, patch: int, generator: torch.Generator) -> torch.Tensor:
    """x: (B, C, S, S) → (B, C, P, P): padded when S ≤ P, else one random P crop per image (the code's crop centre
    ≥ P/2 from the border: the crop lies inside the image)."""
    side = x.shape[-1]
    if side <= patch:
        return pad_to(x, patch)
    starts = torch.randint(0, side - patch + 1, (x.shape[0], 2), generator=generator).tolist()
    return torch.stack([img[:, y:y + patch, z:z + patch] for img, (y, z) in zip(x, starts)])
