"""The reference's DDPM network: lucidrains' ``Unet(dim=64, dim_mults=(1,2,4,8))`` of denoising-diffusion-pytorch
v0.27.12, re-implemented from ALGORITHM.md §2.1 as a diffusers model (``ModelMixin, ConfigMixin``), so
``save_pretrained``/``from_pretrained`` and ``unet(x, t).sample`` work as with diffusers' own UNets.

Layout for ``block_out_channels`` c = (c_0, …, c_L−1) and ``layers_per_block`` n (reference: c = 64·(1,2,4,8), n = 2):
  init 7×7 conv 3→c_0 (its output r0 kept for the end);
  down level i, pair (a, b) = (c_{i−1} or c_0, c_i): n ResBlock(a→a) (each pushes a skip) → linear attention(a)
    (pushes a skip) → 4×4 stride-2 conv a→b, or a 3×3 conv a→b at the last level (no downsampling);
  mid at c_L−1: ResBlock → full (cosine-similarity) attention → ResBlock;
  up levels mirrored: n × [concat(pop) → ResBlock(a+b→b)] → linear attention(b) → nearest ×2 + 3×3 conv b→a, or a
    3×3 conv b→a at the last level; concat(r0) → ResBlock(2c_0→c_0) → 1×1 conv c_0→3.
With n = 2 the reference pushes the skip after its first ResBlock and after "second ResBlock + attention"; here every
ResBlock but the last pushes, and the last pushes after the attention — the same thing.
Module names follow lucidrains' state-dict keys (``init_conv, time_mlp, downs, mid_block1, mid_attn, mid_block2, ups,
final_res_block, final_conv``). ``attention_max_size`` can switch the linear attention off at large feature maps
(a cheaper network for small budgets); None = at every level, as the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(t·f_i), cos(t·f_i)] with f_i = exp(−ln(10000)·i/(half − 1)), i < half = dim/2 (sin first). t: (B,)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat((args.sin(), args.cos()), dim=-1)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(t, self.dim)


class WeightStandardizedConv2d(nn.Conv2d):
    """Each output filter standardised before the conv: (w − mean)/sqrt(var + eps), biased variance over
    (in, kh, kw); eps 1e-5 in float32, 1e-3 otherwise; the conv keeps its bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return F.conv2d(x, (w - mean) * (var + eps).rsqrt(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class ChannelLayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels with a learned gain ``g`` and no bias (eps 1e-5 in float32, 1e-3 else)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = x.var(dim=1, unbiased=False, keepdim=True)
        return (x - x.mean(dim=1, keepdim=True)) * (var + eps).rsqrt() * self.g


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class Block(nn.Module):
    """Weight-standardised 3×3 conv → GroupNorm → optional FiLM x·(1 + scale) + shift → SiLU."""

    def __init__(self, dim: int, dim_out: int, groups: int) -> None:
        super().__init__()
        self.proj = WeightStandardizedConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """time → SiLU → Linear(time_dim, 2·dim_out) = (scale, shift) for the first Block; + 1×1 conv (or identity)."""

    def __init__(self, dim: int, dim_out: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv: nn.Module = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, (scale, shift)))
        return h + self.res_conv(x)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads·d, H, W) → (B, heads, d, H·W)."""
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


class LinearAttention(nn.Module):
    """Softmax of q over each head's channels, of k over positions; q·d^−½; v/(H·W); context = k vᵀ; out = contextᵀ q;
    1×1 conv back to ``dim`` and a channel LayerNorm (gain only)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Cosine-similarity attention: q and k L2-normalised along their LAST axis of the (B, heads, d, H·W) layout —
    i.e. each channel over the positions, as the v0.27 code's ``F.normalize(t, dim=-1)`` does — logits × 10, softmax
    over keys, 1×1 out conv."""

    def __init__(self, dim: int, heads: int, dim_head: int, scale: float = 10.0) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (torch.einsum("bhdi,bhdj->bhij", q, k) * self.scale).softmax(dim=-1)
        out = torch.einsum("bhij,bhdj->bhdi", attn, v)  # (B, heads, d, H·W)
        return self.to_out(out.reshape(b, -1, h, w))


class Upsample(nn.Sequential):
    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


class LucidUnet(ModelMixin, ConfigMixin):
    """ε-prediction UNet of the reference (module docstring). forward(sample (B, 3, r, r), timestep (B,) or scalar)
    → ``UNet2DOutput(sample=ε̂)``."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 128, 256, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 8,
        attention_heads: int = 4,
        attention_head_dim: int = 32,
        attention_max_size: int | None = None,
    ) -> None:
        super().__init__()
        chans = list(block_out_channels)
        dims = [chans[0], *chans]
        pairs = list(zip(dims[:-1], dims[1:]))
        time_dim = chans[0] * 4
        groups, heads, dim_head = norm_num_groups, attention_heads, attention_head_dim

        def res(a: int, b: int) -> ResnetBlock:
            return ResnetBlock(a, b, time_dim, groups)

        def lin_attn(c: int, size: int) -> nn.Module:
            if attention_max_size is not None and size > attention_max_size:
                return nn.Identity()
            return Residual(PreNorm(c, LinearAttention(c, heads, dim_head)))

        self.init_conv = nn.Conv2d(in_channels, chans[0], 7, padding=3)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(chans[0]), nn.Linear(chans[0], time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        sizes = []
        size = sample_size
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            sizes.append(size)
            self.downs.append(nn.ModuleList([
                *(res(a, a) for _ in range(layers_per_block)),
                lin_attn(a, size),
                nn.Conv2d(a, b, 3, padding=1) if last else nn.Conv2d(a, b, 4, stride=2, padding=1),
            ]))
            size = size if last else size // 2
        mid = chans[-1]
        self.mid_block1 = res(mid, mid)
        self.mid_attn = Residual(PreNorm(mid, Attention(mid, heads, dim_head)))
        self.mid_block2 = res(mid, mid)
        for i, (a, b) in enumerate(reversed(pairs)):
            last = i == len(pairs) - 1
            self.ups.append(nn.ModuleList([
                *(res(b + a, b) for _ in range(layers_per_block)),
                lin_attn(b, sizes[-1 - i]),
                nn.Conv2d(b, a, 3, padding=1) if last else Upsample(b, a),
            ]))
        self.final_res_block = res(chans[0] * 2, chans[0])
        self.final_conv = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, return_dict: bool = True
                ) -> UNet2DOutput | tuple[torch.Tensor]:
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        n = self.config.layers_per_block
        x = self.init_conv(sample)
        r0 = x
        emb = self.time_mlp(t)
        skips = []
        for level in self.downs:
            *blocks, attn, down = level
            for j, block in enumerate(blocks):
                x = block(x, emb)
                if j < n - 1:
                    skips.append(x)
            x = attn(x)
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, emb)), emb)
        for level in self.ups:
            *blocks, attn, up = level
            for block in blocks:
                x = block(torch.cat((x, skips.pop()), dim=1), emb)
            x = up(attn(x))
        x = self.final_conv(self.final_res_block(torch.cat((x, r0), dim=1), emb))
        return UNet2DOutput(sample=x) if return_dict else (x,)
