"""ResNet-18 backbone and CSI heads (ALGORITHM.md §4.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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


# ------------------------------------------------------------- forward against a functional re-statement (§4.1)

def _functional_resnet18(p: dict[str, torch.Tensor], x: torch.Tensor, variant: str, training: bool):
    """ResNet-18 + CSI heads written out with torch.nn.functional on the state-dict tensors: (x − 0.5)/0.5; stem
    (imagenet: 7×7/2 conv, BN, ReLU, 3×3/2 max-pool; cifar: 3×3/1 conv, BN, ReLU); 4 stages × 2 BasicBlocks,
    widths 64/128/256/512, strides 1/2/2/2, 1×1 conv + BN shortcut where the shape changes; global mean;
    projection Linear-ReLU-Linear and shift head Linear."""

    def bn(h, name):
        return F.batch_norm(h, p[name + ".running_mean"].clone(), p[name + ".running_var"].clone(),
                            p[name + ".weight"], p[name + ".bias"], training, 0.1, 1e-5)

    h = (x - 0.5) / 0.5
    if variant == "imagenet":
        h = F.max_pool2d(F.relu(bn(F.conv2d(h, p["backbone.stem.0.weight"], stride=2, padding=3), "backbone.stem.1")),
                         3, stride=2, padding=1)
    else:
        h = F.relu(bn(F.conv2d(h, p["backbone.stem.0.weight"], padding=1), "backbone.stem.1"))
    for stage, stride in zip((1, 2, 3, 4), (1, 2, 2, 2)):
        for block in (0, 1):
            pre = f"backbone.layer{stage}.{block}."
            s = stride if block == 0 else 1
            out = F.relu(bn(F.conv2d(h, p[pre + "conv1.weight"], stride=s, padding=1), pre + "bn1"))
            out = bn(F.conv2d(out, p[pre + "conv2.weight"], padding=1), pre + "bn2")
            has_shortcut = stage > 1 and block == 0
            assert (pre + "downsample.0.weight" in p) == has_shortcut
            short = h
            if has_shortcut:
                short = bn(F.conv2d(h, p[pre + "downsample.0.weight"], stride=s), pre + "downsample.1")
            h = F.relu(out + short)
    f = h.mean(dim=(2, 3))
    z = F.linear(F.relu(F.linear(f, p["projection.0.weight"], p["projection.0.bias"])),
                 p["projection.2.weight"], p["projection.2.bias"])
    return f, z, F.linear(f, p["shift_head.weight"], p["shift_head.bias"])


@pytest.mark.parametrize("variant, size", [("imagenet", 28), ("imagenet", 64), ("cifar", 32)])
@pytest.mark.parametrize("training", [True, False])
def test_forward_equals_functional_restatement_with_the_same_weights(variant, size, training):
    torch.manual_seed(7)
    model = ResNet18(variant, simclr_dim=128, n_shifts=4)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters, so eval mode is really tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    model.train(training)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 3, size, size) * 1.5 - 0.25  # dissolved views may leave [0, 1]
    with torch.no_grad():
        got = model(x)
    expected = _functional_resnet18(params, x, variant, training)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
