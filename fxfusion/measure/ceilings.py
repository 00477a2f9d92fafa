"""Measured ceilings: matmul throughput and memory-copy bandwidth at several sizes, against the datasheet peaks.

Copy bandwidth counts bytes read plus bytes written (2 x the tensor size), the convention of STREAM's copy.
"""

from __future__ import annotations

import torch

from fxfusion.measure.hardware import HardwareSpec
from fxfusion.measure.stats import summarize
from fxfusion.measure.timing import Clock, TimingSpec, measure

MATMUL_SIZES = {"quick": (256, 1024), "full": (256, 1024, 2048), "gpu": (1024, 4096, 8192)}
COPY_BYTES = {"quick": (1 << 20, 32 << 20), "full": (1 << 20, 32 << 20, 256 << 20),
              "gpu": (1 << 20, 64 << 20, 1 << 30)}
CEILING_SPEC = TimingSpec(rounds=10, warmup=2, target_sample_s=0.01, budget_s=3.0)


def _median_s(fn, clock: Clock, spec: TimingSpec) -> float:
    return summarize(measure({"op": fn}, clock, spec).seconds["op"]).median


def _matmul_s(n: int, dtype: torch.dtype, device: str, clock: Clock, spec: TimingSpec) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _median_s(lambda: torch.mm(a, b), clock, spec)


def _copy_s(nbytes: int, device: str, clock: Clock, spec: TimingSpec) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return _median_s(lambda: dst.copy_(src), clock, spec)


def measure_ceilings(hw: HardwareSpec, device: str, dtypes: list[torch.dtype], sizes: str, clock: Clock,
                     tf32: bool, spec: TimingSpec = CEILING_SPEC) -> dict:
    matmul, best_gflops = [], {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for n in MATMUL_SIZES[sizes]:
            med = _matmul_s(n, dtype, device, clock, spec)
            gflops = 2 * n**3 / med / 1e9
            matmul.append({"n": n, "dtype": name, "median_ms": med * 1e3, "gflops": gflops,
                           "efficiency": gflops / hw.peak_for(name, tf32)})
            best_gflops[name] = max(best_gflops.get(name, 0.0), gflops)
    bandwidth, best_gbs = [], 0.0
    for nbytes in COPY_BYTES[sizes]:
        med = _copy_s(nbytes, device, clock, spec)
        gbs = 2 * nbytes / med / 1e9
        bandwidth.append({"bytes": nbytes, "median_ms": med * 1e3, "gbs": gbs,
                          "efficiency": gbs / hw.peak_bandwidth_gbs})
        best_gbs = max(best_gbs, gbs)
    return {"matmul": matmul, "bandwidth": bandwidth, "best_gflops": best_gflops, "best_gbs": best_gbs}
