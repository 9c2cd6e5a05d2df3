"""Moving images between the learner's size and the DDPM resolution r (ALGORITHM.md §3.4).

- MedMNIST (28 px): zero-pad 2 → 32 (zeros in the raw [0,1] scale); back: centre-crop 28. r must be 32.
- Folder datasets (224 px, or any other size): bilinear resize to r without antialias; back: bilinear to the size.
- Equal sizes (CIFAR-like 32 px at r = 32): identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MEDMNIST_SIZE = 28


def uses_padding(image_size: int, resolution: int) -> bool:
    return image_size == MEDMNIST_SIZE and resolution == 32


def check_resolution(image_size: int, resolution: int) -> None:
    if image_size == MEDMNIST_SIZE and resolution != 32:
        raise ValueError(f"28 px (MedMNIST) images are dissolved at resolution 32 (pad 2), not {resolution}")


def to_ddpm(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """x: (B, C, S, S) → (B, C, r, r)."""
    size = x.shape[-1]
    if size == resolution:
        return x
    if uses_padding(size, resolution):
        return F.pad(x, (2, 2, 2, 2), value=0.0)
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)


def from_ddpm(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """x: (B, C, r, r) → (B, C, S, S), the inverse path of :func:`to_ddpm`."""
    r = x.shape[-1]
    if r == image_size:
        return x
    if uses_padding(image_size, r):
        return x[..., 2 : 2 + image_size, 2 : 2 + image_size]
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=False)


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) or (B, 3, H, W) → float32 (B, 3, H, W) in [0, 1] (ToTensor)."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()
