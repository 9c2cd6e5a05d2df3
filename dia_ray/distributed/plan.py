"""How a sweep packs onto a cluster, and what it costs — no Ray needed (``dia-ray sweep --dry-run``).

Every number for GPUs here is an ESTIMATE (no GPU was available to measure on): A100 throughputs come from FLOP
counts at ~40 TFLOP/s effective; CPU throughputs were measured by ``dia-ray demo`` on this project's 2-core machine.
The plan packs runs the way the sweep does: each seed of each configuration is one run (one Tune trial) asking for
``workers x (cpus_per_worker, gpus_per_worker)``; fractional GPUs let several small-image runs share a GPU; DIA runs
of a dataset wait for its DDPM (and bank), CSI and blur runs start at once; all datasets share the cluster.
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass

from dia_ray.errors import ConfigError
from dia_ray.sweepfile import SweepFile

# Training throughput at 28 px (images/s), one run alone on the device. CPU: measured by `dia-ray demo` on this
# project's 2-core machine kind (one torch thread per run, ResNet-18 imagenet stem, batch 32; the reference code's
# step does 1.75 img/s there, ALGORITHM.md §10). A100: ESTIMATES (12 ResNet-18 views per image at ~40 TFLOP/s
# effective). Cost grows ~linearly with pixels on a CPU and ~with their square root on an A100 (small images leave
# it underused).
THROUGHPUT_ESTIMATE = {
    ("cpu", "dia"): 20.0, ("cpu", "csi"): 28.0, ("cpu", "blur"): 19.0, ("cpu", "disyre"): 60.0,
    ("a100", "dia"): 1500.0, ("a100", "csi"): 2300.0, ("a100", "blur"): 1800.0, ("a100", "disyre"): 4000.0,
}
# A run on <= 64 px images keeps about this fraction of an A100 busy (estimate): four of them sharing one GPU each
# go at 1 / (4 x 0.4) = 0.63 of their solo speed, i.e. the GPU does 2.5x the work it does with one run.
SMALL_RUN_GPU_UTILISATION = 0.4
# DDPM training, A100 (estimate): effective FLOP/s on the UNet's training step (counted by dia_ray.algo.ddpm.ddpm_cost:
# 5.67 TFLOP per paper step at 32 px, 512 images), i.e. ~1 A100-hour per 25k-step DDPM at 32 px.
DDPM_A100_FLOPS = 40e12
BANK_A100_IMAGES_PER_S = 4000.0  # one UNet forward per image and version (estimate)
# (normal train images, test images) per dataset (ALGORITHM.md §6).
DATASET_SIZES = {"pneumoniamnist": (1214, 624), "breastmnist": (399, 156), "covid": (861, 745),
                 "kvasir": (4900, 2400), "retina": (26315, 968), "aptos": (1264, 1099)}
# GPU kinds a --cluster shape may name: vCPUs per GPU of the usual cloud node, speed relative to an A100.
GPU_KINDS = {"A100": (12, 1.0), "H100": (24, 2.0), "A10G": (24, 0.35), "L4": (12, 0.3), "V100": (8, 0.5)}


@dataclass(frozen=True)
class ClusterShape:
    nodes: int
    gpus_per_node: int
    kind: str
    cpus_per_node: int

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def speed(self) -> float:
        return GPU_KINDS[self.kind][1]

    def __str__(self) -> str:
        return f"{self.nodes}x{self.gpus_per_node}x{self.kind}"


def parse_cluster(text: str) -> ClusterShape:
    """``NODESxGPUSxKIND`` (e.g. ``4x8xA100``)."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*([A-Za-z0-9]+)\s*", text or "")
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ConfigError(f"--cluster '{text}': write NODESxGPUSxKIND, e.g. 4x8xA100 (kinds: {', '.join(GPU_KINDS)})")
    kind = m[3].upper()
    if kind not in GPU_KINDS:
        raise ConfigError(f"--cluster '{text}': GPU kind '{m[3]}' unknown; known: {', '.join(GPU_KINDS)}")
    gpus = int(m[2])
    return ClusterShape(int(m[1]), gpus, kind, GPU_KINDS[kind][0] * gpus)


@dataclass(frozen=True)
class DatasetPlan:
    dataset: str
    image_size: int
    runs: int  # training runs = configurations x seeds
    dia_runs: int  # of which wait for a DDPM
    gpu_share: float  # GPUs per run (workers x gpus_per_worker)
    runs_per_gpu: int
    run_hours: float  # one run's wall-clock on its share (estimate)
    ddpm_hours: float  # wall-clock of this dataset's DDPMs + banks before its DIA runs (0: none)
    gpu_hours: float  # A100-equivalent hours of its runs and DDPMs


@dataclass(frozen=True)
class Plan:
    shape: ClusterShape
    datasets: list[DatasetPlan]
    wall_hours: float
    peak_gpus: float
    peak_nodes: int
    peak_runs: int
    gpu_hours: float
    max_concurrent: int  # per dataset, the default the sweep would use on this cluster


def _kind(method: str) -> str:
    return "blur" if method.startswith("blur") else method


def _run_images(sweep: SweepFile, dataset: str, method: str) -> float:
    """Images a run processes: training epochs plus evaluations (an evaluation featurises train + test images
    S x 4 times, forward only ≈ S/9 training images each)."""
    cfg = sweep.train_config(dataset, {"method": method}, sweep.seeds[0])
    n_train, n_test = DATASET_SIZES.get(dataset, (600, 200))
    if method == "disyre":  # restoration steps of its own batch; scoring = N restorations per test image
        dc = cfg.disyre
        return (cfg.epochs * dc.steps_per_epoch * dc.batch_size
                + math.ceil(cfg.epochs / cfg.eval.every) * n_test * dc.inference_steps / 3)
    per_epoch = min(math.ceil(n_train / cfg.batch_size), cfg.max_iters_per_epoch) * cfg.batch_size
    n_eval = min(n_train, cfg.eval.max_train_images or n_train) + n_test
    evals = math.ceil(cfg.epochs / cfg.eval.every)
    return cfg.epochs * per_epoch + evals * n_eval * cfg.eval.samples / 9


def method_counts(sweep: SweepFile) -> dict[str, int]:
    """Runs per method for one dataset (grid: exact; TPE/random: the method dimension assumed uniform)."""
    space = sweep.search_space()
    methods = space["method"].choices if "method" in space else sweep.methods
    if sweep.is_grid:
        counts = {m: 0 for m in methods}
        for point in sweep.grid():
            counts[point.get("method", methods[0])] += len(sweep.seeds)
        return counts
    return {m: sweep.runs() / len(methods) for m in methods}


def run_seconds_cpu(sweep: SweepFile, dataset: str, method: str, image_size: int) -> float:
    pixels = max(1.0, (image_size / 28) ** 2)
    return _run_images(sweep, dataset, method) / THROUGHPUT_ESTIMATE[("cpu", _kind(method))] * pixels


def ddpm_seconds_a100(sweep: SweepFile, dataset: str) -> float:
    """DDPM training (+ bank building in bank mode) of one dataset on one A100, for every resolution swept."""
    from dia_ray.algo.ddpm import ddpm_cost
    from dia_ray.distributed.pipeline import ddpm_config
    from dia_ray.distributed.sweep import resolutions

    total = 0.0
    for r in resolutions(sweep, dataset):
        cfg = ddpm_config(dataset, sweep.budget, resolution=r, **sweep.ddpm)
        total += ddpm_cost(cfg).train_flops_per_step * cfg.steps / DDPM_A100_FLOPS
        if sweep.dissolve_mode == "bank":
            total += DATASET_SIZES.get(dataset, (600, 200))[0] * sweep.bank.versions / BANK_A100_IMAGES_PER_S
    return total


def _simulate(jobs: list[tuple[float, float, float]], gpus: int) -> tuple[float, float, int]:
    """Greedy list scheduling of ``(release time, duration, gpu share)`` jobs on ``gpus`` GPUs (shares ≤ 1 packed
    on one GPU; a share > 1 takes whole GPUs), longest first among those released. Returns (makespan, peak GPUs in
    use, peak concurrent jobs)."""
    free = [1.0] * gpus
    running: list[tuple[float, list[tuple[int, float]]]] = []  # (end time, [(gpu, amount)])
    pending = sorted(jobs, key=lambda j: (j[0], -j[1]))
    t, end, peak_gpu, peak_jobs = 0.0, 0.0, 0.0, 0
    while pending or running:
        started = True
        while started:
            started = False
            for i, (release, dur, share) in enumerate(pending):
                if release > t:
                    continue
                alloc = _fit(free, share)
                if alloc is None:
                    continue
                for g, amount in alloc:
                    free[g] -= amount
                heapq.heappush(running, (t + dur, alloc))
                end = max(end, t + dur)
                pending.pop(i)
                started = True
                break
        used = sum(1.0 - f for f in free)
        peak_gpu, peak_jobs = max(peak_gpu, used), max(peak_jobs, len(running))
        next_release = min((j[0] for j in pending if j[0] > t), default=math.inf)
        if running and running[0][0] <= next_release:
            t, alloc = heapq.heappop(running)
            for g, amount in alloc:
                free[g] += amount
        elif next_release < math.inf:
            t = next_release
        elif pending:  # a job larger than the cluster: never fits
            raise ConfigError(f"a run needs {pending[0][2]:g} GPUs but the cluster shape has {gpus}")
    return end, peak_gpu, peak_jobs


def _fit(free: list[float], share: float) -> list[tuple[int, float]] | None:
    if share <= 1.0:
        for g, f in enumerate(free):  # first fit: pack small runs together
            if f + 1e-9 >= share:
                return [(g, share)]
        return None
    whole = [g for g, f in enumerate(free) if f >= 1.0 - 1e-9]
    need = math.ceil(share)
    return [(g, 1.0) for g in whole[:need]] if len(whole) >= need else None


def packing_plan(sweep: SweepFile, shape: ClusterShape) -> Plan:
    from dia_ray.data.registry import get_spec

    res = sweep.resources
    if not res.uses_gpu:
        raise ConfigError(f"sweep '{sweep.name}' asks for no GPUs (resources.gpus_per_worker: 0): it is a CPU sweep; "
                          "give gpus_per_worker (e.g. auto, 0.25 or 1) to plan it on a GPU cluster")
    plans, jobs = [], []
    counts = method_counts(sweep)
    for ds in sweep.datasets:
        size = get_spec(ds, normal_class=sweep.normal_class).image_size
        share = res.workers * res.gpu_share(size)
        per_gpu = max(1, int(1 / share + 1e-9)) if share <= 1 else 0
        util = SMALL_RUN_GPU_UTILISATION if size <= 64 else 1.0
        slowdown = max(1.0, per_gpu * util) if share <= 1 else 1.0
        pixels = max(1.0, (size / 28) ** 2) ** 0.5
        ddpm_s = ddpm_seconds_a100(sweep, ds) / shape.speed if counts.get("dia") else 0.0
        hours, gpu_h, dia_runs = 0.0, ddpm_s / 3600 * sweep.ddpm_placement().workers, 0
        for method, n in counts.items():
            solo = _run_images(sweep, ds, method) / THROUGHPUT_ESTIMATE[("a100", _kind(method))] * pixels
            seconds = solo * slowdown / shape.speed / max(1, res.workers) ** 0.9
            hours = max(hours, seconds / 3600)
            gpu_h += n * seconds * share / 3600
            release = ddpm_s if method == "dia" else 0.0
            dia_runs += int(n) if method == "dia" else 0
            jobs += [(release, seconds, share)] * int(round(n))
        if ddpm_s:
            jobs.append((0.0, ddpm_s, float(sweep.ddpm_placement().workers)))
        plans.append(DatasetPlan(ds, size, sweep.runs(), dia_runs, share, per_gpu, hours, ddpm_s / 3600,
                                 gpu_h * shape.speed))
    wall, peak_gpu, peak_runs = _simulate(jobs, shape.gpus)
    return Plan(shape, plans, wall / 3600, peak_gpu, math.ceil(peak_gpu / shape.gpus_per_node - 1e-9), peak_runs,
                sum(p.gpu_hours for p in plans),
                auto_max_concurrent(sweep, {"GPU": shape.gpus, "CPU": shape.nodes * shape.cpus_per_node},
                                    [p.image_size for p in plans]))


def auto_max_concurrent(sweep: SweepFile, capacity: dict[str, float], image_sizes: list[int]) -> int:
    """Per-dataset concurrency when the sweep file gives none: the runs the cluster holds at once (by CPUs, and
    GPUs when used, at the smallest share among the datasets), shared by the studies, at least 1."""
    if sweep.max_concurrent_trials:
        return sweep.max_concurrent_trials
    r = sweep.resources
    fits = capacity.get("CPU", 0.0) / (r.workers * r.cpus_per_worker)
    if r.uses_gpu:
        share = min(r.workers * r.gpu_share(s) for s in image_sizes)
        fits = min(fits, capacity.get("GPU", 0.0) / share)
    return max(1, math.ceil(math.floor(fits + 1e-9) / max(1, len(sweep.datasets))))


def describe(sweep: SweepFile, shape: ClusterShape | None) -> str:
    """The dry run: the space, the runs, the packing plan on ``shape`` (GPU sweeps) and the cost on a 2-core CPU."""
    from dia_ray.data.registry import get_spec

    lines = [f"sweep '{sweep.name}': {len(sweep.datasets)} dataset(s), sampler {sweep.sampler}, {sweep.trials()} "
             f"configuration(s) x {len(sweep.seeds)} seed(s) = {sweep.runs()} runs per dataset, "
             f"{sweep.runs() * len(sweep.datasets)} in all; scheduler {sweep.scheduler}"]
    for key, p in sweep.search_space().items():
        desc = f"choices {p.choices}" if p.choices is not None else (
            f"{'int' if p.is_int else 'float'} [{p.low}, {p.high}]" + (f" step {p.step}" if p.step else "")
            + (" log" if p.log else ""))
        lines.append(f"  space {key}: {desc}")
    r = sweep.resources
    lines.append(f"  per run: {r.workers} Train worker(s) x {r.cpus_per_worker:g} CPU"
                 + (f" + {r.gpus_per_worker} GPU" if r.uses_gpu else ""))
    if r.uses_gpu:
        shape = shape or parse_cluster("1x8xA100")
        plan = packing_plan(sweep, shape)
        lines.append(f"packing plan on {shape} ({shape.gpus} GPUs, {shape.nodes * shape.cpus_per_node} CPUs) — "
                     "ESTIMATES, not measurements:")
        lines.append(f"  {'dataset':<15} {'px':>4} {'runs':>5} {'GPU/run':>8} {'runs/GPU':>9} {'run h':>7} "
                     f"{'DDPM h':>7} {'GPU-h':>8}")
        for p in plan.datasets:
            lines.append(f"  {p.dataset:<15} {p.image_size:>4} {p.runs:>5} {p.gpu_share:>8g} {p.runs_per_gpu:>9} "
                         f"{p.run_hours:>7.2f} {p.ddpm_hours:>7.2f} {p.gpu_hours:>8.1f}")
        lines.append(f"  peak {plan.peak_gpus:.2f} GPUs on {plan.peak_nodes} node(s), {plan.peak_runs} concurrent "
                     f"runs; max_concurrent_trials per dataset: {plan.max_concurrent}"
                     + ("" if sweep.max_concurrent_trials else " (auto)"))
        lines.append(f"  wall-clock ≈ {plan.wall_hours:.1f} h, total ≈ {plan.gpu_hours:.1f} A100-hours "
                     "(estimate; DIA runs start when their dataset's DDPM is done, CSI/blur at once)")
    cpu_h = 0.0
    counts = method_counts(sweep)
    for ds in sweep.datasets:
        size = get_spec(ds, normal_class=sweep.normal_class).image_size
        cpu_h += sum(n * run_seconds_cpu(sweep, ds, m, size) for m, n in counts.items()) / 3600
    lines.append(f"on a 2-core CPU (this project's machine, measured throughput): ≈ {cpu_h:,.0f} hours of training "
                 "(DDPMs extra)")
    return "\n".join(lines)
