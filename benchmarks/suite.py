"""The measured parts of ``python -m benchmarks`` (each returns one JSON-ready dict):

(a) :func:`training_steps` — DIA / CSI / Gaussian-blur training iterations, the reference procedure vs dia-ray (online,
    bank; fp32 and bf16), images/s and ratios; (d) the FLOPs of each step over the run's fp32 matmul peak;
(b) :func:`evaluation` — CSI evaluation (S samples) seconds per 1,000 images, the reference procedure vs dia-ray;
(c) :func:`ddpm_training` — DDPM training images/s, dia-ray vs lucidrains' ``denoising_diffusion_pytorch``;
    :func:`auroc_bf16_vs_fp32` — AUROC of DIA with precision bf16 vs fp32 over seeds (the accuracy side of bf16);
:func:`disyre_speed` — DISYRE (the second method) training and scoring images/s beside DIA's online step;
(e) Ray overheads live in :mod:`benchmarks.ray_overhead`; (f) every variant carries its peak RSS.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.config import BenchConfig
from benchmarks.measure import Variant, count_flops, interleave, paired_ratio, summary
from benchmarks.reference import ReferenceDissolve, ReferenceStep, reference_csi_evaluation
from dia_ray.algo.ddpm import build_scheduler, build_unet, new_state, prepare_ddpm_batch, train_ddpm
from dia_ray.algo.dissolve import BankDissolver, BlurDissolver, DiffusionDissolver
from dia_ray.algo.loops import DIAData, evaluate, new_dia_state, train_epoch
from dia_ray.config import DDPMConfig, TrainConfig, UNetConfig

log = logging.getLogger("benchmarks")

METHODS = {"dia": "dia", "csi": "csi", "blur": "blur-gaussian"}


@dataclass
class Workload:
    """The synthetic dataset (28 px, 600 normal train images) as tensors, and the t range of its dissolving."""

    data: DIAData
    t_range: tuple[int, int]
    root: Path


def load_workload(root: Path) -> Workload:
    from dia_ray.data import load_dataset, prepare
    from dia_ray.data.registry import get_spec

    prepare("synthetic", root, seed=0)
    ds = load_dataset("synthetic", root)
    return Workload(DIAData.from_arrays(ds.train.images, ds.test.images, ds.test.labels),
                    tuple(get_spec("synthetic").t_range), root)


def params_m(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def ddpm_config(bc: BenchConfig, **over: Any) -> DDPMConfig:
    return DDPMConfig(unet=UNetConfig(**bc.unet), batch_size=bc.ddpm_batch, grad_accum=1, steps=10**9, **over)


def train_config(bc: BenchConfig, method: str, **over: Any) -> TrainConfig:
    return TrainConfig(dataset="synthetic", method=method, backbone=bc.backbone, batch_size=bc.batch,
                       max_iters_per_epoch=bc.iters, **over)


def _ours(name: str, cfg: TrainConfig, data: DIAData, dissolver: Any, units: float) -> Variant:
    state = new_dia_state(cfg)
    return Variant(name, lambda: train_epoch(state, data, cfg, dissolver), units)


def _reference(name: str, step: ReferenceStep, data: DIAData, bc: BenchConfig, units: float) -> Variant:
    gen = torch.Generator().manual_seed(1)

    def run() -> None:
        for i in range(bc.iters):
            idx = torch.randperm(len(data.train), generator=gen)[: bc.batch]
            step(data.train[idx], i, max(1, len(data.train) // bc.batch))

    return Variant(name, run, units)


def training_steps(bc: BenchConfig, work: Workload) -> dict[str, Any]:
    """(a) + (d): per method, the reference procedure then dia-ray's variants, interleaved; the FLOPs of one
    iteration of each (counted on its warm-up iteration) and the FLOP/s it achieves."""
    data, units = work.data, bc.iters * bc.batch
    unet = build_unet(ddpm_config(bc))
    alphas = build_scheduler().alphas_cumprod
    if bc.reference_unet == "lucidrains":
        from benchmarks.lucidrains import reference_unet

        ref_unet = reference_unet(**bc.lucidrains_unet)
    else:
        ref_unet = build_unet(ddpm_config(bc))
    versions = (torch.rand(len(data.train), bc.bank_versions, 3, 32, 32) * 2 - 1).half()
    out: dict[str, Any] = {"batch_images": bc.batch, "backbone": bc.backbone,
                           "unet_params_m": {"dia_ray": params_m(unet), "baseline": params_m(ref_unet)},
                           "baseline_unet": bc.reference_unet, "iterations_per_round": bc.iters,
                           "bank": f"in-memory, K={bc.bank_versions} random versions per image (content does not "
                                   "change the work)"}
    for method, name in METHODS.items():
        cfg = {p: train_config(bc, name, precision=p) for p in ("fp32", "bf16")}
        if method == "dia":
            ref = ReferenceStep(cfg["fp32"], ReferenceDissolve(ref_unet, alphas, work.t_range))
            online = {p: DiffusionDissolver(unet, alphas, work.t_range, 32, precision=p) for p in cfg}
            variants = [_reference("baseline", ref, data, bc, units),
                        _ours("online", cfg["fp32"], data, online["fp32"], units),
                        _ours("bank", cfg["fp32"], data, BankDissolver(versions), units),
                        _ours("online_bf16", cfg["bf16"], data, online["bf16"], units),
                        _ours("bank_bf16", cfg["bf16"], data, BankDissolver(versions), units)]
        else:
            blur = "gaussian" if method == "blur" else None
            ref = ReferenceStep(cfg["fp32"], blur=blur)
            dissolver = BlurDissolver("gaussian", cfg["fp32"].dissolve.kernel_size) if blur else None
            variants = [_reference("baseline", ref, data, bc, units),
                        _ours("ours", cfg["fp32"], data, dissolver, units),
                        _ours("ours_bf16", cfg["bf16"], data, dissolver, units)]
        flops: dict[str, float] = {}
        for v in variants:  # the warm-up iteration is the one whose FLOPs are counted
            v.warmup = (lambda v=v: flops.__setitem__(v.name, count_flops(v.run)[0] / bc.iters))
        log.info("training step %s: %s", method, ", ".join(v.name for v in variants))
        interleave(variants, bc.rounds, lambda m, method=method: log.info("%s %s", method, m), bc.clock)
        res: dict[str, Any] = {}
        for v in variants:
            s = summary(v, "image")
            step_s = statistics.median(v.seconds) / bc.iters
            s.update(seconds_per_step=round(step_s, 3), ratio_to_baseline=paired_ratio(variants[0], v),
                     gflop_per_step=round(flops[v.name] / 1e9, 1),
                     achieved_gflops=round(flops[v.name] / step_s / 1e9, 1))
            res[v.name] = s
        res["baseline"].pop("ratio_to_baseline")
        if method == "dia":
            res["baseline"]["unet_calls_per_step"] = ref.dissolve.calls / (bc.rounds + 1) / bc.iters
            res["online"]["unet_calls_per_step"] = online["fp32"].calls / (bc.rounds + 1) / bc.iters
        out[method] = res
    return out


def evaluation(bc: BenchConfig, work: Workload) -> dict[str, Any]:
    """(b): the CSI evaluation of one model on ``eval_images`` images (half train, half test), reference procedure
    (fp32) vs dia-ray (fp32, bf16); reported per 1,000 images (the cost is linear in the image count)."""
    half = bc.eval_images // 2
    d = work.data
    normal, anomalous = torch.nonzero(d.test_labels == 1).flatten(), torch.nonzero(d.test_labels == 0).flatten()
    pick = torch.cat([normal[: half - half // 2], anomalous[: half // 2]])
    sub = DIAData(d.train[:half], d.test[pick], d.test_labels[pick])
    cfg = {p: train_config(bc, "dia", precision=p, eval={"samples": bc.eval_samples, "max_train_images": None})
           for p in ("fp32", "bf16")}
    model = new_dia_state(cfg["fp32"]).model
    aurocs: dict[str, float] = {}

    def run(name: str, fn) -> Variant:
        return Variant(name, lambda: aurocs.__setitem__(name, fn()), 2 * half)

    variants = [run("baseline", lambda: reference_csi_evaluation(model, sub.train, sub.test, sub.test_labels,
                                                                 cfg["fp32"])),
                run("ours", lambda: evaluate(model, sub, cfg["fp32"])[0]),
                run("ours_bf16", lambda: evaluate(model, sub, cfg["bf16"])[0])]
    interleave(variants, bc.rounds, lambda m: log.info("evaluation %s", m), bc.clock)
    res: dict[str, Any] = {"images_per_round": 2 * half, "samples": bc.eval_samples, "shifts": 4,
                           "network_forwards_per_image": 4 * bc.eval_samples,
                           "baseline_batch": 100, "ours_batch": cfg["fp32"].eval.batch_size}
    for v in variants:
        s = summary(v, "image")
        s["seconds_per_1000_images"] = round(s["seconds_per_image"] * 1000, 1)
        s["speedup_over_baseline"] = paired_ratio(variants[0], v)
        s["auroc_untrained_model"] = round(aurocs[v.name], 4)
        res[v.name] = s
    res["baseline"].pop("speedup_over_baseline")
    return res


def ddpm_training(bc: BenchConfig, work: Workload) -> dict[str, Any]:
    """(c): optimiser steps of ``ddpm_batch`` images at 32 px: lucidrains' GaussianDiffusion(Unet) vs dia-ray's
    ``train_ddpm`` (fp32, bf16). Both sides prepare their batches (flip + pad) inside the timed step."""
    from benchmarks.lucidrains import LucidrainsDDPMStep, describe

    images = work.data.train
    theirs = LucidrainsDDPMStep(bc.lucidrains_unet, grad_accum=1)
    gen = torch.Generator().manual_seed(0)

    def lucid() -> None:
        idx = torch.randperm(len(images), generator=gen)[: bc.ddpm_batch]
        theirs(prepare_ddpm_batch(images[idx], 32, gen))

    def ours(cfg: DDPMConfig):
        state = new_state(cfg)
        return (lambda: train_ddpm(images, cfg, state, until_step=state.step + 1)), state

    run32, s32 = ours(ddpm_config(bc))
    run16, _ = ours(ddpm_config(bc, precision="bf16"))
    variants = [Variant("lucidrains", lucid, bc.ddpm_batch), Variant("ours", run32, bc.ddpm_batch),
                Variant("ours_bf16", run16, bc.ddpm_batch)]
    interleave(variants, bc.rounds, lambda m: log.info("ddpm %s", m), bc.clock)
    res: dict[str, Any] = {"batch_images": bc.ddpm_batch, "resolution": 32, "grad_accum": 1,
                           "unet_params_m": {"lucidrains": round(theirs.parameters() / 1e6, 2),
                                             "dia_ray": params_m(s32.unet)},
                           "dia_ray_unet": bc.unet, "lucidrains": describe()}
    for v in variants:
        s = summary(v, "image")
        s["ratio_to_lucidrains"] = paired_ratio(variants[0], v)
        res[v.name] = s
    res["lucidrains"].pop("ratio_to_lucidrains")
    return res


def auroc_bf16_vs_fp32(bc: BenchConfig, work: Workload) -> dict[str, Any]:
    """DIA (bank mode, a briefly trained small DDPM) on the synthetic data at a small explicit budget, the same
    seeds at fp32 and bf16: same initial weights and batches, only the arithmetic differs."""
    from dia_ray.algo.ddpm import save_ddpm
    from dia_ray.algo.loops import fit
    from dia_ray.distributed.bank import build_bank_local, load_bank_versions
    from dia_ray.distributed.pipeline import ddpm_config as budget_ddpm
    from dia_ray.distributed.pipeline import train_config as budget_train
    from dia_ray.distributed.train_ddpm import DataRef

    t0 = time.perf_counter()
    dcfg = budget_ddpm("synthetic", bc.auroc_ddpm_budget, steps=bc.auroc_ddpm_steps)
    state = train_ddpm(work.data.train, dcfg, new_state(dcfg))
    ddpm_path = save_ddpm(work.root.parent / "auroc-ddpm" / "model", state, dcfg)
    ref = DataRef("synthetic", str(work.root))
    bank = build_bank_local(ref, ddpm_path, work.root.parent / "auroc-storage", t_range=work.t_range,
                            versions=bc.auroc_bank_versions, batch_size=64, force=True)
    versions = load_bank_versions(bank.path, len(work.data.train))
    setup_s = time.perf_counter() - t0
    res: dict[str, list[float]] = {"fp32": [], "bf16": []}
    seconds: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
    for seed in range(bc.auroc_seeds):
        for p in res:
            cfg = budget_train("synthetic", "dia", "small",
                               {**bc.auroc_train, "seed": seed, "precision": p, "dissolve": {"mode": "bank"}})
            data = work.data
            if cfg.max_test_images:
                data = _stratified(data, cfg.max_test_images)
            t = time.perf_counter()
            st = fit(cfg, data, BankDissolver(versions))
            seconds[p] += time.perf_counter() - t
            res[p].append(st.last_auroc)
            log.info("auroc seed %d %s: %.4f", seed, p, st.last_auroc)
    diffs = [b - f for b, f in zip(res["bf16"], res["fp32"])]
    return {"method": "dia (bank)", "backbone": budget_train("synthetic", "dia", "small").backbone,
            "seeds": list(range(bc.auroc_seeds)), "budget": bc.auroc_train,
            "ddpm": {"budget": bc.auroc_ddpm_budget, "steps": bc.auroc_ddpm_steps},
            "bank_versions": bc.auroc_bank_versions,
            "fp32": _mean_std(res["fp32"]), "bf16": _mean_std(res["bf16"]),
            "difference_bf16_minus_fp32": _mean_std(diffs),
            "seconds": {"setup": round(setup_s, 1), **{p: round(s, 1) for p, s in seconds.items()}}}


def _stratified(d: DIAData, n: int) -> DIAData:
    keep = torch.cat([torch.nonzero(d.test_labels == c).flatten()[: n // 2] for c in (0, 1)]).sort().values
    return DIAData(d.train, d.test[keep], d.test_labels[keep])


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {"values": [round(v, 4) for v in values], "mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def disyre_speed(bc: BenchConfig, work: Workload) -> dict[str, Any]:
    """Issue 17: DISYRE's training step (``disyre_batch`` 32 px patches, corruption + restoration loss) and its
    scoring (N = 4 restorations per image, the anomaly map, the top-k score) in images/s, interleaved with dia-ray's
    DIA online fp32 step at the same run (``batch`` images, 3 x 4 views each, one dissolving UNet call)."""
    from dia_ray.algo.disyre.loops import evaluate as disyre_evaluate
    from dia_ray.algo.disyre.loops import new_disyre_state
    from dia_ray.algo.disyre.loops import train_epoch as disyre_train_epoch

    data = work.data
    cfg = TrainConfig(dataset="synthetic", method="disyre",
                      disyre={"batch_size": bc.disyre_batch, "steps_per_epoch": bc.iters, "unet": bc.disyre_unet},
                      eval={"batch_size": max(bc.disyre_score_images, 1)})
    state = new_disyre_state(cfg, data)
    scored = _stratified(data, bc.disyre_score_images)
    dia_cfg = train_config(bc, "dia")
    unet = build_unet(ddpm_config(bc))
    dissolver = DiffusionDissolver(unet, build_scheduler().alphas_cumprod, work.t_range, 32)
    variants = [_ours("dia_online", dia_cfg, data, dissolver, bc.iters * bc.batch),
                Variant("disyre_train", lambda: disyre_train_epoch(state, data, cfg), bc.iters * bc.disyre_batch),
                Variant("disyre_score", lambda: disyre_evaluate(state.model, scored, cfg, state.setup),
                        len(scored.test))]
    interleave(variants, bc.rounds, lambda m: log.info("disyre %s", m), bc.clock)
    res: dict[str, Any] = {"disyre_batch": bc.disyre_batch, "dia_batch": bc.batch, "patch": state.setup.patch,
                           "inference_steps": cfg.disyre.inference_steps,
                           "restorer_params_m": params_m(state.model), "dia_unet_params_m": params_m(unet)}
    for v in variants:
        s = summary(v, "image")
        if v.name != "dia_online":
            s["ratio_to_dia_online"] = round(s["images_per_s"] / max(res["dia_online"]["images_per_s"], 1e-12), 3)
        res[v.name] = s
    return res
