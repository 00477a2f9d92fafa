"""Counting what a variant launches, with torch.profiler.

On CUDA: device kernels (and their summed device time) per call, so host overhead = latency - device time.
On CPU: leaf aten ops that do work (views, allocations and metadata ops excluded, listed below), which is the CPU
analogue of a kernel launch.  Inductor's generated C++ kernels are not visible to the profiler on CPU, so a compiled
variant's CPU count covers only the aten ops it still calls (e.g. extern GEMMs); the profile says so.
"""

from __future__ import annotations

from typing import Iterable

from dataclasses import dataclass
from typing import Callable

import torch
from fxfusion.measure.devices import is_cuda
from fxfusion.measure.profiling import profiled

# Ops that launch no compute: views, allocation and dtype/metadata queries.
NON_KERNEL_OPS = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::_unsafe_view", "aten::reshape",
    "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::as_strided", "aten::unsqueeze",
    "aten::squeeze", "aten::detach", "aten::alias", "aten::result_type", "aten::resize_", "aten::lift_fresh",
    "aten::_reshape_alias", "aten::slice", "aten::select", "aten::contiguous", "aten::to", "aten::numpy_T",
    "aten::split", "aten::unbind", "aten::flatten", "aten::resolve_conj", "aten::resolve_neg",
    "aten::_nnpack_available", "aten::as_strided_", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense",
})
# Ops that hand the whole job to a library (BLAS, oneDNN, a fused kernel): one launch, whatever they call inside.
LIBRARY_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation", "aten::mkldnn_convolution",
    "aten::_slow_conv2d_forward", "mkldnn::_convolution_pointwise", "aten::_convolution_pointwise",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::native_layer_norm",
    "aten::native_batch_norm", "aten::_softmax",
})
CALLS = 5


@dataclass(frozen=True)
class LaunchCount:
    kernels_per_call: float
    device_s_per_call: float | None  # CUDA only
    unit: str  # "cuda kernels" | "aten ops"
    names: tuple[str, ...]


def _inside(inner, outer) -> bool:
    return (inner is not outer and inner.thread == outer.thread
            and outer.time_range.start <= inner.time_range.start and inner.time_range.end <= outer.time_range.end)


def _cpu_kernel_ops(events) -> list[str]:
    """Library ops, plus leaf ops (no counted op inside them) that are not inside a library op."""
    ops = [e for e in events if e.name.split("::")[0] in ("aten", "mkldnn") and e.name not in NON_KERNEL_OPS]
    libraries = [e for e in ops if e.name in LIBRARY_OPS]
    counted = []
    for e in ops:
        if any(_inside(e, lib) for lib in libraries):
            continue
        if e.name in LIBRARY_OPS or not any(_inside(o, e) for o in ops):
            counted.append(e.name)
    return counted


# A profiler session that records no CUDA kernel for calls that do work lost them (CUPTI re-attached after the
# previous session's teardown; seen once on the H200, 2026-12-01: eager "launched 0" kernels, so a merged GEMM that
# launches 1 was refused as no fusion).  Such a session is repeated up to this many times, then the count is refused.
EMPTY_RETRIES = 2


def _profile(fn: Callable[[], object], cuda: bool, calls: int):
    with profiled(cuda) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    return prof.events()


def _cuda_kernels(events) -> list:
    return [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]


def count_launches(fn: Callable[[], object], device: str, calls: int = CALLS) -> LaunchCount:
    """What ``fn`` launches per call, counted over ``calls`` calls.  On CUDA a session that records no kernel at all is
    taken for a lost one (see ``EMPTY_RETRIES``); raises RuntimeError when every attempt records none, so a caller
    keeps no count rather than a false zero."""
    cuda = is_cuda(device)
    fn()
    if cuda:
        torch.cuda.synchronize()
    events = _profile(fn, cuda, calls)
    for _ in range(EMPTY_RETRIES if cuda else 0):
        if _cuda_kernels(events):
            break
        events = _profile(fn, cuda, calls)
    if cuda:
        kernels = _cuda_kernels(events)
        if not kernels:
            raise RuntimeError(f"the profiler recorded no CUDA kernel in {calls} calls, {EMPTY_RETRIES + 1} sessions: "
                               "no launch count")
        device_us = sum(e.time_range.end - e.time_range.start for e in kernels)
        names = tuple(sorted({e.name for e in kernels}))  # whole names: templates differ only at the end
        return LaunchCount(len(kernels) / calls, device_us / 1e6 / calls, "cuda kernels", names)
    leaves = _cpu_kernel_ops(events)
    return LaunchCount(len(leaves) / calls, None, "aten ops", tuple(sorted(set(leaves))))


def sdpa_backend(kernel_names: Iterable[str]) -> str | None:
    """Which SDPA backend ran, read from its kernels' names (None when nothing ran)."""
    names = " ".join(kernel_names).lower()
    for needle, backend in (("flash_attention_for_cpu", "flash (cpu)"), ("cudnn", "cudnn"), ("flash", "flash"),
                            ("fmha", "efficient"), ("efficient", "efficient")):
        if needle in names:
            return backend
    return "math" if names else None
