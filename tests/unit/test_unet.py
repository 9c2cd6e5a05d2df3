"""The reference's DDPM network (ALGORITHM.md §2.1, lucidrains Unet(dim=64, dim_mults=(1,2,4,8)) of v0.27.12):
parameter count from the layout, the level structure and spatial sizes, each block's formula against an independent
computation, the sinusoid, and the diffusers save/load round trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dia_ray.algo.unet import (
    Attention,
    ChannelLayerNorm,
    LinearAttention,
    LucidUnet,
    ResnetBlock,
    WeightStandardizedConv2d,
)

REFERENCE_PARAMS = 36_251_779  # Unet(dim=64, dim_mults=(1, 2, 4, 8)), channels 3: the "36.25 M"


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layout_count(chans=(64, 128, 256, 512), heads=4, dim_head=32, groups_affine=True) -> int:
    """Parameters of §2.1's layout written out term by term (conv k×k a→b with bias = k²ab + b)."""
    conv = lambda k, a, b: k * k * a * b + b  # noqa: E731
    gn = lambda c: 2 * c if groups_affine else 0  # noqa: E731
    t = chans[0] * 4  # time_dim

    def res(a, b):
        return (t * 2 * b + 2 * b) + conv(3, a, b) + gn(b) + conv(3, b, b) + gn(b) + (a * b + b if a != b else 0)

    hid = heads * dim_head
    lin_attn = lambda c: c + c * 3 * hid + (hid * c + c) + c  # noqa: E731  pre-norm g, qkv, out conv, out LN g
    full_attn = lambda c: c + c * 3 * hid + (hid * c + c)  # noqa: E731
    dims = [chans[0], *chans]
    pairs = list(zip(dims[:-1], dims[1:]))
    total = conv(7, 3, chans[0]) + (chans[0] * t + t) + (t * t + t)
    for i, (a, b) in enumerate(pairs):
        last = i == len(pairs) - 1
        total += 2 * res(a, a) + lin_attn(a) + (conv(3, a, b) if last else conv(4, a, b))
    total += 2 * res(chans[-1], chans[-1]) + full_attn(chans[-1])
    for a, b in reversed(pairs):
        total += 2 * res(b + a, b) + lin_attn(b) + conv(3, b, a)
    return total + res(2 * chans[0], chans[0]) + conv(1, chans[0], 3)


def test_reference_size_parameter_count():
    unet = LucidUnet()
    assert _params(unet) == REFERENCE_PARAMS == _layout_count()
    assert abs(_params(unet) / 36.25e6 - 1) < 0.10


def test_small_configuration_follows_the_same_layout():
    unet = LucidUnet(block_out_channels=(16, 32), attention_heads=2, attention_head_dim=8)
    assert _params(unet) == _layout_count((16, 32), heads=2, dim_head=8)


def test_levels_resblocks_attention_and_spatial_sizes_at_32_px():
    """Down: 2 ResBlocks + linear attention per level, 4×4/2 downsampling except the last (3×3, no downsampling);
    mid ResBlock, full attention, ResBlock at 4×4; up mirrors with 2 ResBlocks per level taking the skips."""
    unet = LucidUnet()
    sizes: dict[str, tuple[int, ...]] = {}
    for name, module in unet.named_modules():
        if isinstance(module, (ResnetBlock, LinearAttention, Attention)):
            module.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        out = unet(torch.rand(1, 3, 32, 32), torch.tensor([50])).sample
    assert out.shape == (1, 3, 32, 32)
    down = [((64, 32), (64, 32)), ((64, 16), (64, 16)), ((128, 8), (128, 8)), ((256, 4), (256, 4))]
    for i, expected in enumerate(down):
        for j in (0, 1):
            c, s = expected[j]
            assert sizes[f"downs.{i}.{j}"] == (c, s, s)
        assert sizes[f"downs.{i}.2.fn.fn"] == (expected[0][0], expected[0][1], expected[0][1])
    assert [type(level[3]) for level in unet.downs] == [nn.Conv2d] * 4
    assert [level[3].kernel_size for level in unet.downs] == [(4, 4)] * 3 + [(3, 3)]
    assert sizes["mid_block1"] == sizes["mid_attn.fn.fn"] == sizes["mid_block2"] == (512, 4, 4)
    up = [(512, 4), (256, 8), (128, 16), (64, 32)]
    for i, (c, s) in enumerate(up):
        assert sizes[f"ups.{i}.0"] == sizes[f"ups.{i}.1"] == sizes[f"ups.{i}.2.fn.fn"] == (c, s, s)
    assert [unet.ups[i][0].block1.proj.in_channels for i in range(4)] == [768, 384, 192, 128]  # concat with the skip
    assert sizes["final_res_block"] == (64, 32, 32) and unet.final_res_block.block1.proj.in_channels == 128


def test_attention_max_size_removes_linear_attention_above_that_size_only():
    unet = LucidUnet(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=8, attention_max_size=16)
    assert isinstance(unet.downs[0][1], nn.Identity) and not isinstance(unet.downs[1][1], nn.Identity)
    assert isinstance(unet.ups[1][1], nn.Identity) and not isinstance(unet.ups[0][1], nn.Identity)


def test_weight_standardised_conv_normalises_each_filter():
    torch.manual_seed(0)
    conv = WeightStandardizedConv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    w = conv.weight.detach().double()
    flat = w.reshape(5, -1)
    std_w = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-5)
    expected = F.conv2d(x.double(), std_w.reshape_as(w), conv.bias.detach().double(), padding=1)
    torch.testing.assert_close(conv(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_channel_layer_norm_is_layer_norm_over_channels_with_gain_only():
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.g.copy_(torch.linspace(0.5, 2.0, 6).view(1, 6, 1, 1))
    x = torch.randn(2, 6, 3, 3)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-5).permute(0, 3, 1, 2) * norm.g
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)


def _qkv(module: nn.Module, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, heads, n, d) query/key/value from the module's 1×1 qkv conv, computed with a matmul."""
    b, c, h, w = x.shape
    weight = module.to_qkv.weight.detach().reshape(-1, c)
    qkv = torch.einsum("oc,bcn->bon", weight, x.reshape(b, c, h * w))
    return tuple(t.reshape(b, heads, -1, h * w).transpose(-1, -2) for t in qkv.chunk(3, dim=1))


def test_linear_attention_equals_its_formula():
    """softmax(q) over each head's channels, softmax(k) over positions, q/√d, v/n; per head out = q·(kᵀv) (n×d),
    then the out conv and the gain-only LayerNorm."""
    torch.manual_seed(1)
    heads, dim_head, c, h, w = 2, 4, 6, 3, 5
    attn = LinearAttention(c, heads, dim_head)
    x = torch.randn(2, c, h, w)
    q, k, v = _qkv(attn, x, heads)  # (B, heads, n, d)
    q = q.softmax(dim=-1) * dim_head**-0.5
    k = k.softmax(dim=-2)
    v = v / (h * w)
    out = q @ (k.transpose(-1, -2) @ v)  # (B, heads, n, d)
    out = out.transpose(-1, -2).reshape(2, heads * dim_head, h, w)
    expected = attn.to_out[1](attn.to_out[0](out))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_full_attention_is_cosine_similarity_over_normalised_channel_rows():
    """q and k: each channel L2-normalised across the positions (the v0.27 code normalises the last axis of its
    (B, heads, d, n) layout), logits = 10 · qᵀk, softmax over keys, weighted sum of v, 1×1 out conv."""
    torch.manual_seed(2)
    heads, dim_head, c, h, w = 2, 4, 6, 3, 3
    attn = Attention(c, heads, dim_head)
    x = torch.randn(1, c, h, w)
    q, k, v = _qkv(attn, x, heads)  # (1, heads, n, d)
    q = q / q.norm(dim=-2, keepdim=True)  # over positions n
    k = k / k.norm(dim=-2, keepdim=True)
    weights = (10.0 * q @ k.transpose(-1, -2)).softmax(dim=-1)
    out = (weights @ v).transpose(-1, -2).reshape(1, heads * dim_head, h, w)
    torch.testing.assert_close(attn(x), attn.to_out(out), rtol=1e-5, atol=1e-6)


def test_resnet_block_applies_film_after_the_first_norm_and_adds_the_1x1_shortcut():
    torch.manual_seed(3)
    block = ResnetBlock(4, 8, time_dim=16, groups=2)
    x, emb = torch.randn(2, 4, 5, 5), torch.randn(2, 16)
    ss = F.linear(F.silu(emb), block.mlp[1].weight, block.mlp[1].bias)
    scale, shift = ss[:, :8, None, None], ss[:, 8:, None, None]
    h = F.silu(block.block1.norm(block.block1.proj(x)) * (1 + scale) + shift)
    h = F.silu(block.block2.norm(block.block2.proj(h)))
    expected = h + F.conv2d(x, block.res_conv.weight, block.res_conv.bias)
    torch.testing.assert_close(block(x, emb), expected, rtol=1e-5, atol=1e-6)


def test_time_embedding_is_the_lucidrains_sinusoid_sin_first_then_gelu_mlp():
    """§2.1: half = 32, freq_i = exp(−ln(10000)·i/(half − 1)), embedding = [sin(t·freq), cos(t·freq)]; then
    Linear(64→256) → GELU → Linear(256→256)."""
    unet = LucidUnet(block_out_channels=(64, 64), layers_per_block=1, attention_head_dim=8)
    t = torch.tensor([0, 1, 30, 129, 999])
    half = 32
    sinus = torch.tensor([[math.sin(tv * math.exp(-math.log(10000) * i / (half - 1))) for i in range(half)]
                          + [math.cos(tv * math.exp(-math.log(10000) * i / (half - 1))) for i in range(half)]
                          for tv in t.tolist()])
    assert torch.allclose(unet.time_mlp[0](t), sinus, atol=1e-4)
    first, second = unet.time_mlp[1], unet.time_mlp[3]
    assert (first.in_features, first.out_features, second.out_features) == (64, 256, 256)
    expected = second(F.gelu(first(sinus)))
    torch.testing.assert_close(unet.time_mlp(t), expected, rtol=1e-4, atol=1e-4)


def test_scalar_timestep_is_broadcast_to_the_batch():
    unet = LucidUnet(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=8).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, 40).sample, unet(x, torch.full((3,), 40)).sample)


@pytest.mark.parametrize("resolution", [32, 64])
def test_save_pretrained_round_trip(tmp_path, resolution):
    unet = LucidUnet(sample_size=resolution, block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=8,
                     attention_max_size=16)
    unet.save_pretrained(tmp_path / "unet")
    loaded = LucidUnet.from_pretrained(tmp_path / "unet")
    keys = ("sample_size", "block_out_channels", "layers_per_block", "attention_head_dim", "attention_max_size")
    assert {k: loaded.config[k] for k in keys} == {k: unet.config[k] for k in keys} | {"block_out_channels": [16, 32]}
    for (ka, a), (kb, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
