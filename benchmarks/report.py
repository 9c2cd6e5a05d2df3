"""Issue 13's targets checked against a results dict, and the markdown table printed by ``python -m benchmarks`` (and
pasted into README.md's Performance section)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    part: str
    path: tuple[str, ...]  # where the value sits in the results
    at_least: float | None = None
    at_most: float | None = None  # of the absolute value
    why_missed: str = ""  # what limits it (the measured numbers are added to the reason)

    def value(self, results: dict[str, Any]) -> float | None:
        node: Any = results
        for key in self.path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, (int, float)) else None

    def met(self, value: float) -> bool:
        if self.at_least is not None:
            return value >= self.at_least
        return abs(value) <= self.at_most  # type: ignore[operator]

    @property
    def bound(self) -> str:
        return f">= {self.at_least:g}" if self.at_least is not None else f"|x| <= {self.at_most:g}"


_STEP = "training_step"
TARGETS = (
    Target("dia_online_fp32_vs_reference", _STEP, (_STEP, "dia", "online", "ratio_to_baseline"), 1.1,
           why_missed="fp32 online still runs the dissolving UNet on all 4B images every step; its fp32 savings are "
                      "one batched call instead of four, exact flips, no discarded posterior sample, no probe head "
                      "and channels-last convolutions"),
    Target("dia_bank_fp32_vs_reference", _STEP, (_STEP, "dia", "bank", "ratio_to_baseline"), 1.4,
           why_missed="without the UNet the fp32 step is the ResNet-18 forward/backward of 384 views, which both "
                      "procedures run at the machine's fp32 rate"),
    Target("dia_online_bf16_vs_reference", _STEP, (_STEP, "dia", "online_bf16", "ratio_to_baseline"), 2.5,
           why_missed="the dissolving UNet gains less from bf16 than the ResNet step"),
    Target("dia_bank_bf16_vs_reference", _STEP, (_STEP, "dia", "bank_bf16", "ratio_to_baseline"), 3.5,
           why_missed="the bank step is the bf16 ResNet step alone; BatchNorm, augmentation and the optimiser do not "
                      "speed up with bf16"),
    Target("csi_eval_fp32_vs_reference", "evaluation", ("evaluation", "ours", "speedup_over_baseline"), 2.0,
           why_missed="both procedures run the same 40 ResNet forwards per image and those dominate: the "
                      "reference's per-image Python scoring loop and host-side draws cost little, and channels-last "
                      "does not speed up the eval-mode forward; halving the time needs cheaper arithmetic (bf16)"),
    Target("csi_eval_bf16_vs_reference", "evaluation", ("evaluation", "ours_bf16", "speedup_over_baseline"), 2.0,
           why_missed="bf16 halves the network forwards; the augmentation (fp32) and the scoring do not shrink"),
    Target("ddpm_training_fp32_vs_lucidrains", "ddpm", ("ddpm_training", "ours", "ratio_to_lucidrains"), 1.0,
           why_missed="the two UNets differ in layout (diffusers blocks vs lucidrains'), see unet_params_m"),
    Target("ray_train_step_vs_plain_loop", "ray", ("ray", "train", "ratio_ray_over_plain"), 0.9,
           why_missed="the Train worker runs the same loop with the same threads; where it spends more CPU seconds "
                      "than the plain loop for the same step, its 2 threads competed with Ray's own processes (GCS, "
                      "raylet, dashboard, the Train controller) for the 2 cores — most in the first rounds after "
                      "Ray started"),
    Target("ray_data_bank_build_vs_plain_loop", "ray", ("ray", "bank_build", "ratio_ray_over_plain"), 0.9,
           why_missed="the pool's time (wall; with --clock cpu the CPU of all of Ray's processes) includes starting "
                      "its actors (process, torch/diffusers imports, DDPM load) and Ray's own services, which a "
                      "600-row bank does not amortise"),
    Target("dia_step_fraction_of_fp32_peak", _STEP, (_STEP, "dia", "online", "fraction_of_fp32_peak"), 0.70,
           why_missed="convolutions of 28 px maps with 64-512 channels, BatchNorm and the augmentation do not run "
                      "at the large-matmul rate"),
    Target("auroc_bf16_minus_fp32", "auroc", ("auroc", "difference_bf16_minus_fp32", "mean"), at_most=0.01,
           why_missed="bf16 rounding changes the training trajectory; at a small budget the AUROC of one seed "
                      "moves by more than that between nearby trajectories (see the per-seed values)"),
)


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: value, bound, met (None when its part was not run) and, when missed, why."""
    out = []
    for t in TARGETS:
        value = t.value(results)
        entry: dict[str, Any] = {"name": t.name, "bound": t.bound, "value": value}
        if value is None or not math.isfinite(value):
            entry.update(met=None, reason=f"not measured (part '{t.part}' not run)")
        else:
            entry["met"] = t.met(value)
            if not entry["met"]:
                entry["reason"] = f"measured {value:g}, target {t.bound}: {t.why_missed}{_detail(t, results)}"
        out.append(entry)
    return out


def _rounds(side: dict[str, Any], key: str) -> str:
    return ", ".join(f"{x:.1f}" for x in side.get(key, []))


def _ray_detail(t: Target, results: dict[str, Any]) -> str:
    """The per-round seconds of both sides of a Ray overhead comparison (wall and CPU)."""
    part = results.get("ray", {}).get("train" if t.name == "ray_train_step_vs_plain_loop" else "bank_build", {})
    names = [k for k in ("plain_loop", "ray_train_worker", "ray_data_pool") if k in part]
    if len(names) != 2:
        return ""
    plain, ray = (part[k] for k in names)
    text = (f" (per round, plain loop vs {names[1]}: wall {_rounds(plain, 'rounds_wall_seconds')} s vs "
            f"{_rounds(ray, 'rounds_wall_seconds')} s; CPU {_rounds(plain, 'rounds_cpu_seconds')} s vs "
            f"{_rounds(ray, 'rounds_cpu_seconds')} s")
    if "build_seconds_excluding_start" in part:
        b = part["build_seconds_excluding_start"]
        text += (f"; the build alone, actors started: {b['plain_loop']:.1f} s vs {b['ray_data_pool']:.1f} s = "
                 f"{b['plain_loop'] / b['ray_data_pool']:.2f}x")
    if "worker_start_to_ready_seconds" in part:
        text += f"; the worker took {part['worker_start_to_ready_seconds']:.0f} s from fit() to ready"
    return text + ")"


def _detail(t: Target, results: dict[str, Any]) -> str:
    """The measured split of a DIA step into ResNet step (= the bank step) and dissolving UNet (online − bank); for
    the Ray overheads, both sides' rounds."""
    if t.part == "ray":
        return _ray_detail(t, results)
    dia = results.get(_STEP, {}).get("dia", {})
    if t.part != _STEP or not {"online", "bank", "online_bf16", "bank_bf16", "baseline"} <= set(dia):
        return ""
    s = {k: dia[k]["seconds_per_step"] for k in ("baseline", "online", "bank", "online_bf16", "bank_bf16")}
    return (f" (seconds per step: baseline {s['baseline']:.2f}; ResNet step fp32 {s['bank']:.2f} → bf16 "
            f"{s['bank_bf16']:.2f} = {s['bank'] / s['bank_bf16']:.2f}x; dissolving UNet fp32 "
            f"{s['online'] - s['bank']:.2f} → bf16 {s['online_bf16'] - s['bank_bf16']:.2f} = "
            f"{(s['online'] - s['bank']) / max(s['online_bf16'] - s['bank_bf16'], 1e-9):.2f}x)")


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(results: dict[str, Any]) -> str:
    """The results as one markdown table (speeds, ratios, targets) plus the peak line."""
    met = {t["name"]: t for t in results.get("targets", [])}

    def verdict(name: str) -> str:
        t = met.get(name)
        if not t or t["met"] is None:
            return ""
        return f"{t['bound']} {'met' if t['met'] else '**missed**'}"

    lines = [_row("part", "variant", "speed", "ratio", "peak RSS MB", "target"), _row(*["---"] * 6)]
    step = results.get("training_step", {})
    names = {"dia": {"online": "dia_online_fp32_vs_reference", "bank": "dia_bank_fp32_vs_reference",
                     "online_bf16": "dia_online_bf16_vs_reference", "bank_bf16": "dia_bank_bf16_vs_reference"}}
    for method in ("dia", "csi", "blur"):
        for variant, r in step.get(method, {}).items():
            lines.append(_row(f"{method} training step", variant,
                              f"{r['images_per_s']:.2f} img/s ({r['seconds_per_step']:.2f} s/step, "
                              f"{r['fraction_of_fp32_peak']:.0%} of fp32 peak)",
                              f"{r.get('ratio_to_baseline', 1.0):.2f}x", r["peak_rss_mb"],
                              verdict(names.get(method, {}).get(variant, ""))))
    ev = results.get("evaluation", {})
    for variant in ("baseline", "ours", "ours_bf16"):
        if variant in ev:
            r = ev[variant]
            lines.append(_row("CSI evaluation", variant, f"{r['seconds_per_1000_images']:.0f} s / 1,000 images",
                              f"{r.get('speedup_over_baseline', 1.0):.2f}x", r["peak_rss_mb"],
                              verdict({"ours": "csi_eval_fp32_vs_reference",
                                       "ours_bf16": "csi_eval_bf16_vs_reference"}.get(variant, ""))))
    dd = results.get("ddpm_training", {})
    for variant in ("lucidrains", "ours", "ours_bf16"):
        if variant in dd:
            r = dd[variant]
            lines.append(_row("DDPM training", variant, f"{r['images_per_s']:.2f} img/s",
                              f"{r.get('ratio_to_lucidrains', 1.0):.2f}x", r["peak_rss_mb"],
                              verdict("ddpm_training_fp32_vs_lucidrains" if variant == "ours" else "")))
    ray = results.get("ray", {})
    for part, unit, target in (("train", "image", "ray_train_step_vs_plain_loop"),
                               ("bank_build", "row", "ray_data_bank_build_vs_plain_loop")):
        if part in ray:
            r = ray[part]
            for variant in ("plain_loop", "ray_train_worker" if part == "train" else "ray_data_pool"):
                ratio = f"{r['ratio_ray_over_plain']:.2f}x" if variant != "plain_loop" else "1.00x"
                lines.append(_row(f"Ray {part.replace('_', ' ')}", variant,
                                  f"{r[variant][f'{unit}s_per_s']:.2f} {unit}s/s", ratio, r[variant]["peak_rss_mb"],
                                  verdict(target) if variant != "plain_loop" else ""))
    dis = results.get("disyre", {})
    for variant in ("dia_online", "disyre_train", "disyre_score"):
        if variant in dis:
            r = dis[variant]
            ratio = f"{r['ratio_to_dia_online']:.2f}x of DIA" if "ratio_to_dia_online" in r else "1.00x"
            lines.append(_row("DISYRE vs DIA", variant, f"{r['images_per_s']:.2f} img/s", ratio, r["peak_rss_mb"], ""))
    au = results.get("auroc", {})
    if au:
        lines.append(_row("AUROC (DIA, synthetic)", "fp32 / bf16",
                          f"{au['fp32']['mean']:.4f} / {au['bf16']['mean']:.4f} (mean of {len(au['seeds'])} seeds)",
                          f"Δ {au['difference_bf16_minus_fp32']['mean']:+.4f}", "", verdict("auroc_bf16_minus_fp32")))
    peak = results.get("peak", {})
    dia_online = step.get("dia", {}).get("online")
    if peak and dia_online:
        lines.append("")
        lines.append(f"fp32 matmul peak {peak['fp32_gflops']:.0f} GFLOP/s, bf16 {peak['bf16_gflops']:.0f} GFLOP/s "
                     f"(best of the run); the DIA online fp32 step achieves {dia_online['achieved_gflops']:.0f} "
                     f"GFLOP/s = {dia_online['fraction_of_fp32_peak']:.0%} of the fp32 peak "
                     f"({verdict('dia_step_fraction_of_fp32_peak')}).")
    return "\n".join(lines)
