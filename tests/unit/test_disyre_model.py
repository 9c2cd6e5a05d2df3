"""DISYRE restoration network and patch geometry (DISYRE.md §3, §7; checklist 9), and the algo purity rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dia_ray.algo.disyre.model import (box_size, build_restorer, crop_centre, pad_to, patch_size, restore,
                                       training_patches)
from dia_ray.config import DisyreConfig, DisyreUNetConfig
from pydantic import ValidationError


def _has_attention(block: torch.nn.Module) -> bool:
    return bool(getattr(block, "attentions", None))


def test_paper_unet_widths_blocks_and_attention_placement():
    net = build_restorer(DisyreUNetConfig(), channels=1, patch=128)
    assert tuple(net.config.block_out_channels) == (32, 64, 96, 128, 256, 256)
    assert [len(b.resnets) for b in net.down_blocks] == [2] * 6
    assert [len(b.resnets) for b in net.up_blocks] == [3] * 6  # diffusers' up blocks: layers_per_block + 1
    assert [_has_attention(b) for b in net.down_blocks] == [False, False, False, False, True, False]
    assert [_has_attention(b) for b in net.up_blocks] == [False, True, False, False, False, False]
    assert len(net.mid_block.attentions) == 1
    assert net.config.in_channels == net.config.out_channels == 1
    # diffusers defaults the code relies on: sinusoidal width 32 → MLP 128, flip_sin_to_cos, shift 0, GroupNorm 32
    assert net.config.flip_sin_to_cos is True and net.config.freq_shift == 0
    assert net.time_embedding.linear_1.in_features == 32 and net.time_embedding.linear_2.out_features == 128
    assert net.conv_norm_out.num_groups == 32 and net.conv_norm_out.eps == 1e-5
    assert net.config.attention_head_dim == 8


@pytest.mark.parametrize(("channels", "side"), [(1, 32), (3, 64)])
def test_restorer_predicts_an_image_of_the_input_shape_for_integer_t(channels, side):
    cfg = DisyreUNetConfig(block_out_channels=(16, 32), attention_levels=(1,), layers_per_block=1, norm_num_groups=8)
    net = build_restorer(cfg, channels, side)
    x = torch.rand(2, channels, side, side)
    out = restore(net, x, torch.tensor([0, 99]))
    assert out.shape == x.shape and out.dtype == torch.float32


def test_unet_config_rejects_bad_widths_and_attention_levels():
    with pytest.raises(ValidationError, match="divisible by norm_num_groups"):
        DisyreUNetConfig(block_out_channels=(16, 40), attention_levels=(1,))
    with pytest.raises(ValidationError, match="attention_levels"):
        DisyreUNetConfig(attention_levels=(6,))


@pytest.mark.parametrize(("size", "patch", "box"), [(28, 32, 16), (32, 32, 16), (64, 64, 32), (128, 128, 64),
                                                    (224, 128, 64)])
def test_patch_and_box_sizes_follow_the_adaptation_table(size, patch, box):
    cfg = DisyreConfig()
    assert patch_size(size, cfg) == patch
    assert box_size(patch, cfg) == box


def test_explicit_patch_and_box_sizes_are_checked_against_the_unet():
    assert box_size(32, DisyreConfig(box_fraction=0.25)) == 8
    assert box_size(32, DisyreConfig(box_fraction=0.01)) == 2  # never below 2 px
    with pytest.raises(ValidationError, match="patch_size 48 is not divisible by 32"):
        DisyreConfig(patch_size=48)
    with pytest.raises(ValidationError, match="128 px patch of large images 128 is not divisible by 256"):
        DisyreConfig(unet=DisyreUNetConfig(block_out_channels=(32,) * 9, attention_levels=()))
    two_levels = DisyreUNetConfig(block_out_channels=(32, 64), attention_levels=())
    assert patch_size(48, DisyreConfig(patch_size=48, unet=two_levels)) == 48
    assert patch_size(100, DisyreConfig()) == 128  # padded up to suit the UNet
    assert patch_size(100, DisyreConfig(unet=two_levels)) == 100
    assert patch_size(28, DisyreConfig(unet=two_levels)) == 32  # MedMNIST: always the spec's 32


def test_padding_is_centred_zeros_and_crop_centre_inverts_it():
    x = torch.rand(2, 1, 28, 28) + 0.1
    p = pad_to(x, 32)
    assert p.shape == (2, 1, 32, 32)
    assert p[..., :2, :].abs().max() == 0 and p[..., -2:, :].abs().max() == 0 and p[..., :, :2].abs().max() == 0
    assert torch.equal(crop_centre(p, 28), x)


def test_training_patches_pad_small_images_and_crop_large_ones_inside_the_image():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(training_patches(torch.ones(2, 1, 28, 28), 32, g), pad_to(torch.ones(2, 1, 28, 28), 32))
    big = torch.arange(224.0).view(1, 1, 1, 224).expand(3, 1, 224, 224)
    crops = training_patches(big, 128, g)
    assert crops.shape == (3, 1, 128, 128)
    for c in crops:  # a contiguous window of the column index: the crop lies inside the image
        row = c[0, 0]
        assert torch.equal(row, row[0] + torch.arange(128.0)) and row[0] + 127 <= 223


def test_importing_the_disyre_package_does_not_import_ray():
    code = ("import json, sys, importlib\n"
            "for m in ('schedule', 'ops', 'shapes', 'corruption', 'augment', 'model', 'inference', 'loops'):\n"
            "    importlib.import_module('dia_ray.algo.disyre.' + m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
