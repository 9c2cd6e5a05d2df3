"""ResNet-18 backbone and CSI heads (ALGORITHM.md §4.1)."""

from __future__ import annotations

import math

import pytest
import torch

from dia_ray.algo.resnet import ResNet18

TORCHVISION_RESNET18_WITHOUT_FC = 11_176_512  # torchvision resnet18: 11,689,512 total − fc 512·1000 + 1000


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "variant, size",
    [("imagenet", 28), ("imagenet", 32), ("imagenet", 64), ("imagenet", 224), ("cifar", 28), ("cifar", 32),
     ("cifar", 64)],
)
def test_forward_shapes(variant, size):
    model = ResNet18(variant, simclr_dim=128, n_shifts=4).eval()
    with torch.no_grad():
        features, projection, logits = model(torch.rand(2, 3, size, size))
    assert features.shape == (2, 512)
    assert projection.shape == (2, 128)
    assert logits.shape == (2, 4)


def test_imagenet_backbone_has_torchvision_parameter_count():
    assert _count(ResNet18("imagenet").backbone) == TORCHVISION_RESNET18_WITHOUT_FC


def test_cifar_backbone_differs_only_by_the_stem_conv():
    assert _count(ResNet18("cifar").backbone) == TORCHVISION_RESNET18_WITHOUT_FC - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64


def test_heads_sizes():
    model = ResNet18("imagenet", simclr_dim=64, n_shifts=4)
    assert _count(model.projection) == (512 * 512 + 512) + (512 * 64 + 64)
    assert _count(model.shift_head) == 512 * 4 + 4


def test_imagenet_init_is_kaiming_fan_out_and_unit_batchnorm():
    torch.manual_seed(0)
    backbone = ResNet18("imagenet").backbone
    conv = backbone.layer4[1].conv2  # 512 -> 512, 3×3: fan_out = 512·9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.03)
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_cifar_init_is_pytorch_default():
    torch.manual_seed(0)
    conv = ResNet18("cifar").backbone.layer4[1].conv2
    bound = 1 / math.sqrt(512 * 9)  # kaiming_uniform(a=√5) on fan_in: U(−1/√fan_in, 1/√fan_in)
    assert conv.weight.abs().max().item() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize("variant", ["imagenet", "cifar"])
def test_input_is_normalised_inside_the_network(variant):
    model = ResNet18(variant).eval()
    seen = []
    model.backbone.stem[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # dissolved views may be negative: they become < −1
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(seen[0], (x - 0.5) / 0.5)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="imagenet, cifar"):
        ResNet18("resnet50")  # type: ignore[arg-type]
