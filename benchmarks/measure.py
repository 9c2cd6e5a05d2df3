"""Timing and memory tools shared by the benchmark parts: interleaved rounds, peak RSS, the matmul peak, FLOPs.

Two clocks are recorded for every timed run: wall seconds, and CPU seconds (this process's threads; for the Ray parts
also its descendant processes, sampled). Ratios use the configured one: ``wall`` on a quiet machine (what a user
waits for), ``cpu`` on a shared one, where wall time measures the neighbours' load (with one torch thread, CPU time
is the time the work takes on one free core).

Interleaving: every variant of a comparison runs once per round, the order reversed on odd rounds (A B C, C B A, ...)
so a load drift during a round hits all variants alike; a variant's time is the median of its rounds, and its ratio
to the baseline is the median of the per-round ratios (paired, so a slow round slows both sides).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def _status_kb(key: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


CLOCKS = ("wall", "cpu")


class PeakRSS:
    """Peak resident memory and CPU seconds of this process while the block runs (the kernel's high-water mark, reset
    on entry through /proc/self/clear_refs; where that is not allowed, the mark since process start). ``tree=True``
    also samples all descendant processes (Ray's raylet, workers and actors) every 0.2 s: the peak of the summed
    proportional set size, this process included, and the CPU seconds they all used (a process that exits between
    two samples loses at most its last 0.2 s)."""

    def __init__(self, tree: bool = False):
        self.tree = tree
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self.reset = False
        self._stop = threading.Event()
        self._tree_peak = 0.0
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._cpu0 = 0.0
        self.cpu_seconds = 0.0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRSS":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.start_mb = rss_mb()
        self._cpu0 = time.process_time()
        if self.tree:
            self._poll(first=True)
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _poll(self, first: bool = False) -> None:
        import psutil

        me = psutil.Process()
        total = 0.0
        for proc in [me, *me.children(recursive=True)]:
            try:
                cpu = proc.cpu_times()
                used = cpu.user + cpu.system
                total += proc.memory_full_info().pss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self._cpu_first.setdefault(proc.pid, used if first else 0.0)
            self._cpu_last[proc.pid] = used
        self._tree_peak = max(self._tree_peak, total)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._poll()

    def __exit__(self, *exc: Any) -> None:
        self.peak_mb = _status_kb("VmHWM") / 1024
        self.cpu_seconds = time.process_time() - self._cpu0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._poll()
            self.peak_mb = max(self.peak_mb, self._tree_peak)
            self.cpu_seconds = sum(last - self._cpu_first[pid] for pid, last in self._cpu_last.items())

    @property
    def delta_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)


@dataclass
class Variant:
    """One side of a comparison: ``run()`` does ``units`` units of work (iterations, images) and returns nothing;
    ``warmup()`` (default: ``run``) is called once before the timed rounds."""

    name: str
    run: Callable[[], Any]
    units: float
    warmup: Callable[[], Any] | None = None
    tree_rss: bool = False
    seconds: list[float] = field(default_factory=list)  # by the comparison's clock
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    peak_rss_delta_mb: float = 0.0

    def timed(self, clock: str = "wall") -> float:
        with PeakRSS(self.tree_rss) as mem:
            t0 = time.perf_counter()
            self.run()
            wall = time.perf_counter() - t0
        self.record(wall, mem.cpu_seconds, clock)
        self.peak_rss_mb = max(self.peak_rss_mb, mem.peak_mb)
        self.peak_rss_delta_mb = max(self.peak_rss_delta_mb, mem.delta_mb)
        return self.seconds[-1]

    def record(self, wall: float, cpu: float, clock: str) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.seconds.append(wall if clock == "wall" else cpu)


def interleave(variants: list[Variant], rounds: int, log: Callable[[str], None] = lambda m: None,
               clock: str = "wall") -> None:
    """Warm every variant up, then ``rounds`` rounds of one timed ``run`` each, alternating the order."""
    for v in variants:
        t0 = time.perf_counter()
        (v.warmup or v.run)()
        log(f"warm-up {v.name}: {time.perf_counter() - t0:.2f} s")
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else list(reversed(variants))):
            v.timed(clock)
            log(f"round {r + 1}/{rounds} {v.name}: {v.wall[-1]:.2f} s wall, {v.cpu[-1]:.2f} s CPU")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(v: Variant, per: str = "unit") -> dict[str, Any]:
    med = median(v.seconds)
    return {f"seconds_per_{per}": round(med / v.units, 4), f"{per}s_per_s": round(v.units / med, 3),
            "rounds_seconds": [round(s, 3) for s in v.seconds], "rounds_wall_seconds": [round(s, 3) for s in v.wall],
            "rounds_cpu_seconds": [round(s, 3) for s in v.cpu], f"{per}s_per_round": v.units,
            "peak_rss_mb": round(v.peak_rss_mb, 1), "peak_rss_delta_mb": round(v.peak_rss_delta_mb, 1)}


def paired_ratio(baseline: Variant, other: Variant) -> float:
    """Median over rounds of (baseline seconds per unit) / (other seconds per unit): > 1 = other is faster."""
    pairs = [(b / baseline.units) / (o / other.units) for b, o in zip(baseline.seconds, other.seconds)]
    return round(median(pairs), 3)


def matmul_peak_gflops(n: int = 2048, reps: int = 8, dtype: torch.dtype = torch.float32, clock: str = "wall"
                       ) -> float:
    """Best-of-``reps`` n×n matmul rate with torch's current threads: the machine's practical dense peak now."""
    timer = time.perf_counter if clock == "wall" else time.process_time
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        t0 = timer()
        torch.mm(a, b)
        best = min(best, timer() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(FLOPs of the matmuls/convolutions ``fn`` runs, forward and backward, as torch's FLOP counter counts them,
    ``fn``'s result)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
