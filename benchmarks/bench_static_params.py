"""Does passing weights as static addresses change what CUDA graphs (torch.compile mode="reduce-overhead") cost?

For a few patterns, the reduce-overhead variant is measured twice, interleaved with eager: once with the parameters
passed as plain inputs (cudagraph trees copy them into the graph's buffers on every call), once with them marked as
static addresses (as module parameters are in a real model).  Prints each median and the ratio.
    python benchmarks/bench_static_params.py          # needs a CUDA GPU
"""

from __future__ import annotations

import functools
import importlib

import torch

from fxfusion.measure.hardware import detect
from fxfusion.fusions.registry import REGISTRY
from fxfusion.measure.timing import CudaClock, TimingSpec

CASES = [("linear_bias_gelu", dict(M=512, K=1024, N=1024)), ("linear_bias_gelu", dict(M=4096, K=4096, N=4096)),
         ("conv2d_bn_relu", dict(B=4, Cin=128, Cout=128, H=28, W=28, k=3, G=1)),
         ("add_layernorm", dict(M=2048, N=1024)), ("add_layernorm", dict(M=16384, N=4096))]


def main() -> None:
    cal = importlib.import_module("fxfusion.calibration.calibrate")
    variants = importlib.import_module("fxfusion.calibration.variants")
    real = variants.build_variants
    spec, clock, hw = TimingSpec(rounds=30, warmup=3, budget_s=10.0), CudaClock(), detect("cuda")
    for name, shape in CASES:
        row = []
        for static in (False, True):
            cal.build_variants = functools.partial(real, static_params=static)
            e = cal.measure_entry(REGISTRY[name], shape, "bfloat16", "cuda", hw, spec, clock,
                                  compile_modes=("compile_reduce_overhead",))
            v = e.variant("compile_reduce_overhead")
            row.append((v.median_ms, v.kernels_per_call, v.speedup.median if v.speedup else None))
            torch.cuda.empty_cache()
        (a, ka, sa), (b, kb, sb) = row
        print(f"{name:18s} {'x'.join(map(str, shape.values())):22s} plain: {a * 1e3:8.1f} us, {ka:g} kernels, "
              f"{sa:.2f}x eager | static: {b * 1e3:8.1f} us, {kb:g} kernels, {sb:.2f}x eager | plain/static {a / b:.2f}")
    cal.build_variants = real


if __name__ == "__main__":
    main()
