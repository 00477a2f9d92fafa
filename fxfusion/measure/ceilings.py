"""Measured ceilings: matmul throughput and memory-copy bandwidth at several sizes, against the datasheet peaks.

Copy bandwidth counts bytes read plus bytes written (2 x the tensor size), the convention of STREAM's copy.

Every ceiling is bounded by its budget (``CEILING_SPEC.budget_s``), whatever the dtype costs here
(:func:`bounded_median`):
  1. one call is timed cold: it warms the op up and says what a call costs;
  2. more warm-up calls only if they fit in a quarter of the budget;
  3. samples of ``inner`` calls (about ``target_sample_s`` each) until ``rounds`` samples or the budget, never
     starting a sample that the cost of a call says would overrun it; at least one warm sample is taken.
So one ceiling spends at most the budget plus about two calls.  Across sizes, a larger matmul whose one call the
smaller size predicts (n^3 scaling) to exceed the budget is not started at all, and that is said in a note: a CPU
without a fast bfloat16 path runs a 2048^3 bfloat16 matmul at ~1 GFLOP/s, 17 s a call.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from fxfusion.measure.hardware import HardwareSpec
from fxfusion.measure.timing import Clock, TimingSpec

MATMUL_SIZES = {"quick": (256, 1024), "full": (256, 1024, 2048), "gpu": (1024, 4096, 8192)}
COPY_BYTES = {"quick": (1 << 20, 32 << 20), "full": (1 << 20, 32 << 20, 256 << 20),
              "gpu": (1 << 20, 64 << 20, 1 << 30)}
CEILING_SPEC = TimingSpec(rounds=10, warmup=2, target_sample_s=0.01, budget_s=3.0)
# A dtype whose best matmul runs this many times slower than float32's has no fast path on this device (bfloat16 on
# a CPU without AVX512-BF16 or AMX): every entry in it takes that much longer, so calibrate warns before measuring.
SLOW_DTYPE_FACTOR = 10.0


def bounded_median(fn: Callable[[], object], clock: Clock, spec: TimingSpec) -> tuple[float, int]:
    """(median seconds per call of ``fn``, samples taken), spending about ``spec.budget_s`` at most (module doc)."""
    start = clock.now()
    cost = clock.sample(fn, 1)  # cold: the first warm-up call
    for _ in range(spec.warmup - 1):
        if (clock.now() - start) + cost > spec.budget_s / 4:
            break
        cost = clock.sample(fn, 1)
    inner = int(min(spec.max_inner, max(1, math.ceil(spec.target_sample_s / max(cost, 1e-9)))))
    samples: list[float] = []
    while len(samples) < spec.rounds:
        if samples and (clock.now() - start) + inner * cost > spec.budget_s:
            break
        samples.append(clock.sample(fn, inner))
        cost = samples[-1]
    samples.sort()
    mid = len(samples) // 2
    median = samples[mid] if len(samples) % 2 else (samples[mid - 1] + samples[mid]) / 2
    return median, len(samples)


def _matmul_fn(n: int, dtype: torch.dtype, device: str):
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return lambda: torch.mm(a, b)


def _copy_fn(nbytes: int, device: str):
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def measure_ceilings(hw: HardwareSpec, device: str, dtypes: list[torch.dtype], sizes: str, clock: Clock,
                     tf32: bool, spec: TimingSpec = CEILING_SPEC, notes: list[str] | None = None) -> dict:
    """The ceilings of a profile; sizes skipped to keep within the budget are explained in ``notes``."""
    notes = notes if notes is not None else []
    matmul, best_gflops = [], {}
    for dtype in dtypes:
        name = _dtype_name(dtype)
        previous = None  # (n, seconds per call)
        for n in MATMUL_SIZES[sizes]:
            if previous is not None:
                predicted = previous[1] * (n / previous[0]) ** 3
                if predicted > spec.budget_s:
                    notes.append(f"{name} matmul ceiling: n={n} not measured, one call would take about "
                                 f"{predicted:.3g} s here (from n={previous[0]}), over the {spec.budget_s:g} s budget")
                    break  # larger sizes cost more still
            med, _ = bounded_median(_matmul_fn(n, dtype, device), clock, spec)
            previous = (n, med)
            gflops = 2 * n**3 / med / 1e9
            matmul.append({"n": n, "dtype": name, "median_ms": med * 1e3, "gflops": gflops,
                           "efficiency": gflops / hw.peak_for(name, tf32)})
            best_gflops[name] = max(best_gflops.get(name, 0.0), gflops)
    bandwidth, best_gbs = [], 0.0
    for nbytes in COPY_BYTES[sizes]:
        med, _ = bounded_median(_copy_fn(nbytes, device), clock, spec)
        gbs = 2 * nbytes / med / 1e9
        bandwidth.append({"bytes": nbytes, "median_ms": med * 1e3, "gbs": gbs,
                          "efficiency": gbs / hw.peak_bandwidth_gbs})
        best_gbs = max(best_gbs, gbs)
    return {"matmul": matmul, "bandwidth": bandwidth, "best_gflops": best_gflops, "best_gbs": best_gbs}


def slow_dtypes(best_gflops: dict[str, float], device: str, clock: Clock, spec: TimingSpec = CEILING_SPEC,
                n: int = 256) -> list[str]:
    """A warning for each dtype whose best matmul is :data:`SLOW_DTYPE_FACTOR` or more times slower than float32's
    (float32 is measured once at ``n`` if the calibration does not include it)."""
    others = {d: g for d, g in best_gflops.items() if d != "float32" and g}
    if not others:
        return []
    ref = best_gflops.get("float32")
    if not ref:
        med, _ = bounded_median(_matmul_fn(n, torch.float32, device), clock, spec)
        ref = 2 * n**3 / med / 1e9
    return [f"{d} matmul runs at {g:.3g} GFLOP/s on this {device}, {ref / g:.0f}x slower than float32 "
            f"({ref:.3g} GFLOP/s): it has no fast {d} path here, so every {d} entry takes about that much longer "
            f"to measure (consider --quick or dropping {d})"
            for d, g in others.items() if ref / g >= SLOW_DTYPE_FACTOR]
