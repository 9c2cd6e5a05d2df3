"""The DDPM UNet before and after issue 14, side by side in one process. Prints ONE JSON object on stdout.

- ``paper``: the reference's lucidrains Unet (``LucidUnet``, 36.25 M parameters, the paper budget's network now) vs the
  diffusers ``UNet2DModel`` recipe dia-ray used before (65.0 M): one training forward + backward at 32 px, batch 32,
  and one no-grad dissolving call for a DIA step (4 groups × 32 images = 128).
- ``small``: the ``small`` budget's UNet (what the demo trains and dissolves with) now vs before: a training step at
  its DDPM batch (16) and one no-grad dissolving call for a DIA step (4 groups × 32 images = 128).

Rounds alternate between the two networks (``--rounds`` each, after one warm-up call); medians are reported with the
ratio new/old (< 1 = the new one is faster). FLOPs are counted with torch's FlopCounterMode (one image).

    .venv/bin/python benchmarks/unet_speed.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from dia_ray.algo.ddpm import build_unet
from dia_ray.config import BUDGETS, DDPMConfig

OLD_SMALL = {"block_out_channels": (32, 64), "layers_per_block": 1, "attention_head_dim": 16}
OLD_PAPER = {"block_out_channels": (64, 128, 256, 512), "layers_per_block": 2, "attention_head_dim": 32}


def old_unet(block_out_channels, layers_per_block, attention_head_dim, resolution=32) -> UNet2DModel:
    """The diffusers recipe of ALGORITHM.md §2.1's former [IMPL] note: attention blocks at levels ≤ 16 px."""
    sizes = [resolution // 2**i for i in range(len(block_out_channels))]
    down = tuple("AttnDownBlock2D" if s <= 16 else "DownBlock2D" for s in sizes)
    return UNet2DModel(
        sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=layers_per_block,
        block_out_channels=block_out_channels, down_block_types=down,
        up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)), norm_num_groups=8, act_fn="silu",
        resnet_time_scale_shift="scale_shift", time_embedding_type="positional", flip_sin_to_cos=False,
        freq_shift=1, attention_head_dim=attention_head_dim, add_attention=True, downsample_type="conv",
        upsample_type="conv", dropout=0.0)


def train_call(model: torch.nn.Module, batch: int) -> None:
    x, t = torch.randn(batch, 3, 32, 32), torch.randint(0, 1000, (batch,))
    model.zero_grad(set_to_none=True)
    model(x, t).sample.abs().mean().backward()


@torch.no_grad()
def infer_call(model: torch.nn.Module, batch: int) -> None:
    model(torch.randn(batch, 3, 32, 32), torch.randint(30, 130, (batch,)))


def flops(model: torch.nn.Module) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    return counter.get_total_flops()


def side_by_side(models: dict[str, torch.nn.Module], call, batch: int, rounds: int) -> dict[str, float]:
    for m in models.values():
        call(m, batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            call(m, batch)
            times[name].append(time.perf_counter() - t0)
    out = {f"{name}_s": round(statistics.median(v), 4) for name, v in times.items()}
    out["ratio_new_over_old"] = round(out["new_s"] / out["old_s"], 3)
    return out


def describe(model: torch.nn.Module) -> dict[str, float]:
    return {"params": sum(p.numel() for p in model.parameters()),
            "forward_gflops_per_image": round(flops(model) / 1e9, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paper = {"new": build_unet(DDPMConfig()), "old": old_unet(**OLD_PAPER)}
    small_cfg = DDPMConfig(**BUDGETS["small"]["ddpm"])
    small = {"new": build_unet(small_cfg), "old": old_unet(**OLD_SMALL)}
    result = {
        "paper": {"networks": {k: describe(m) for k, m in paper.items()},
                  "train_step_batch32": side_by_side(paper, train_call, 32, args.rounds),
                  "dissolve_call_128": side_by_side(paper, infer_call, 128, args.rounds)},
        "small": {"networks": {k: describe(m) for k, m in small.items()},
                  "train_step": side_by_side(small, train_call, small_cfg.global_batch, args.rounds),
                  "dissolve_call_128": side_by_side(small, infer_call, 128, args.rounds)},
        "threads": args.threads, "rounds": args.rounds, "loadavg": os.getloadavg(),
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
