"""ResNet-18 backbone with CSI's heads (ALGORITHM.md §4.1), written out so no torchvision is needed.

Two variants: ``imagenet`` (torchvision layout: 7×7/2 stem + max-pool, kaiming fan_out init; the reference's
``resnet18_imagenet``, used for every dataset by the README command) and ``cifar`` (3×3/1 stem, no max-pool, PyTorch
default init; the reference's ``resnet18``). Both normalise inside the network, x ↦ (x − 0.5)/0.5, so they consume
[0, 1]-scale images (dissolved negatives in [−1, 0) become < −1, §4.1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Variant = Literal["imagenet", "cifar"]

FEATURE_DIM = 512
_WIDTHS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)
_BLOCKS = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity shortcut, or 1×1 conv + BN when the shape changes.
    x: (B, in_planes, H, W) -> (B, planes, ⌈H/stride⌉, ⌈W/stride⌉)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.downsample(x))


class ResNet18Backbone(nn.Module):
    """f(·): normalisation, stem, 4 stages, global average pool. x: (B, 3, H, W) in [0, 1]-scale -> (B, 512).

    The adaptive pool makes any input size ≥ the stem's downsampling work (28, 32, 64, 224 px); for the cifar variant
    at 32 or 28 px it equals the reference's avg_pool2d(4)."""

    def __init__(self, variant: Variant = "imagenet") -> None:
        super().__init__()
        if variant == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif variant == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
            )
        else:
            raise ValueError(f"ResNet-18 variant '{variant}' unknown; known: imagenet, cifar")
        stages = []
        in_planes = 64
        for planes, stride, blocks in zip(_WIDTHS, _STRIDES, _BLOCKS):
            stages.append(
                nn.Sequential(*(BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                                for i in range(blocks)))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        if variant == "imagenet":
            # torchvision's init (the reference's resnet_imagenet.py); no zero-init of the last BN of a block.
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.5
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.pool(x).flatten(1)


class ResNet18(nn.Module):
    """Backbone f plus CSI's heads: projection g = Linear(512, 512) → ReLU → Linear(512, simclr_dim) and shift head
    h = Linear(512, n_shifts), PyTorch default Linear init (§4.1). The reference's linear-probe heads are dropped."""

    def __init__(self, variant: Variant = "imagenet", simclr_dim: int = 128, n_shifts: int = 4) -> None:
        super().__init__()
        self.backbone = ResNet18Backbone(variant)
        self.projection = nn.Sequential(
            nn.Linear(FEATURE_DIM, FEATURE_DIM), nn.ReLU(inplace=True), nn.Linear(FEATURE_DIM, simclr_dim)
        )
        self.shift_head = nn.Linear(FEATURE_DIM, n_shifts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) -> features f (B, 512), projection z = g(f) (B, simclr_dim, un-normalised),
        shift logits h(f) (B, n_shifts)."""
        features = self.backbone(x)
        return features, self.projection(features), self.shift_head(features)
