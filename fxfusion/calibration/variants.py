"""Building the variants of one problem: eager, the pattern's manual fusions, and torch.compile of eager.

A variant that cannot be built (unsupported on the device, out of memory, compile error, over the per-variant time
limit) is returned with its status and reason, never dropped.  Builders contain no timing except the compile time of
the first call, which is reported separately from run time.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from fxfusion.fusions.base import Inputs, Pattern, Shape
from fxfusion.fusions.compiled import COMPILE_MODES
from fxfusion.measure.devices import is_cuda, kind as device_kind

# A single call slower than this (after compile) marks the variant failed instead of stalling a calibration.
VARIANT_TIME_LIMIT_S = 20.0
# Dynamo's per-function recompile limit: calibrations compile one function at many shapes and dtypes; past the
# default limit (8) dynamo would silently run eager, and the "compiled" variant would measure eager.
RECOMPILE_LIMIT = 512


@dataclass
class Built:
    name: str
    kind: str  # eager | manual | compile
    thunk: Callable[[], torch.Tensor] | None
    status: str = "ok"
    reason: str | None = None
    note: str = ""
    compile_s: float | None = None
    details: dict | None = None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


@contextmanager
def compile_limits():
    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(config, n)]
    saved = {n: getattr(config, n) for n in names}
    inductor = torch._inductor.config
    saved_threads = inductor.compile_threads
    try:
        for n in names:
            setattr(config, n, max(saved[n], RECOMPILE_LIMIT))
        # Compile in this process: a pool of compile workers warming up in the background would steal cores from
        # the timings that follow (seen here: the first samples of a 2-core calibration ran 100x slow).
        inductor.compile_threads = 1
        yield
    finally:
        for n, v in saved.items():
            setattr(config, n, v)
        inductor.compile_threads = saved_threads


def _sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def _guarded(name: str, kind: str, device: str, make: Callable[[], Built]) -> Built:
    try:
        return make()
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return Built(name, kind, None, "failed", f"out of memory: {one_line(exc)}")
    except Exception as exc:  # a variant's failure is data, not a crash
        if is_cuda(device):
            torch.cuda.empty_cache()
        return Built(name, kind, None, "failed", one_line(exc))


def first_call(thunk, device: str) -> float:
    """Seconds of one call of ``thunk`` until its work is done (a compile included, when it is the first)."""
    start = time.perf_counter()
    thunk()
    _sync(device)
    return time.perf_counter() - start


def static_parameters(pattern: Pattern, inputs: Inputs) -> Inputs:
    """Inputs whose parameters (everything but the pattern's activations) are marked as static addresses.

    In a model, weights are module parameters that CUDA graphs read in place; passed as plain inputs, cudagraph trees
    would copy them into the graph's buffers on every call and charge that copy to reduce-overhead.  Copies are
    marked, so the tensors the other variants use are untouched."""
    out = dict(inputs)
    for name, tensor in inputs.items():
        if name not in pattern.batch_inputs:
            out[name] = tensor.clone()
            torch._dynamo.mark_static_address(out[name])
    return out


def build_variants(pattern: Pattern, shape: Shape, dtype: torch.dtype, device: str, inputs: Inputs,
                   compile_modes: tuple[str, ...] = ("compile", "compile_reduce_overhead"),
                   time_limit_s: float = VARIANT_TIME_LIMIT_S, static_params: bool = True) -> list[Built]:
    kind_of_device = device_kind(device)
    built: list[Built] = []

    def eager_thunk():
        return pattern.eager(**inputs)

    def over_limit(b: Built) -> Built:
        if b.status != "ok":
            return b
        seconds = first_call(b.thunk, device)
        if seconds > time_limit_s:
            return Built(b.name, b.kind, None, "failed", f"one call took {seconds:.1f} s, over the "
                         f"{time_limit_s:.0f} s per-variant limit", b.note, b.compile_s)
        return b

    built.append(_guarded("eager", "eager", device,
                          lambda: over_limit(Built("eager", "eager", eager_thunk, note="the separate ops"))))
    for mv in pattern.manual:
        why = mv.unsupported(shape, dtype, device)
        if why:
            built.append(Built(mv.name, "manual", None, "unsupported", why, mv.note))
            continue
        built.append(_guarded(mv.name, "manual", device,
                              lambda mv=mv: over_limit(Built(mv.name, "manual", mv.build(inputs), note=mv.note))))
    for name in compile_modes:
        mode, devices = COMPILE_MODES[name].mode, COMPILE_MODES[name].devices
        if kind_of_device not in devices:
            built.append(Built(name, "compile", None, "unsupported",
                               f"torch.compile mode={mode!r} needs one of {', '.join(devices)}"))
            continue

        def make(name=name, mode=mode):
            compiled = torch.compile(pattern.eager, mode=mode, dynamic=False)
            args = static_parameters(pattern, inputs) if mode == "reduce-overhead" and static_params else inputs
            thunk = lambda: compiled(**args)  # noqa: E731
            with compile_limits():
                compile_s = first_call(thunk, device)
                if mode == "reduce-overhead":  # CUDA graphs are recorded on the calls after warm-up
                    compile_s += first_call(thunk, device) + first_call(thunk, device)
            note = "torch.compile (Inductor" + (", CUDA graphs)" if mode else ")")
            return over_limit(Built(name, "compile", thunk, note=note, compile_s=compile_s))

        built.append(_guarded(name, "compile", device, make))
    return built
