"""Variant building: a variant that cannot run is recorded with its reason, never dropped, and calibration goes on."""

from __future__ import annotations

import importlib

import pytest
import torch

from fxfusion.fusions.registry import REGISTRY
from fxfusion.fusions.base import ManualVariant
from fxfusion.measure.timing import CpuClock
from fxfusion.calibration.variants import build_variants

cal = importlib.import_module("fxfusion.calibration.calibrate")


def _inputs(p):
    return p.make_inputs(p.shapes["quick"][0], torch.float32, "cpu", torch.Generator().manual_seed(0))


def _with_manual(p, *variants):
    return type(p)(**{**{f: getattr(p, f) for f in p.__dataclass_fields__}, "manual": tuple(variants)})


def test_unsupported_variants_are_kept_with_reasons():
    p = REGISTRY["linear_bias_relu"]
    built = build_variants(p, p.shapes["quick"][0], torch.float32, "cpu", _inputs(p), compile_modes=("compile_reduce_overhead",))
    by_name = {b.name: b for b in built}
    assert by_name["addmm_epilogue"].status == "unsupported" and "cuBLASLt" in by_name["addmm_epilogue"].reason
    assert by_name["compile_reduce_overhead"].status == "unsupported" and "cuda" in by_name["compile_reduce_overhead"].reason
    assert by_name["eager"].status == by_name["addmm"].status == "ok"


def test_out_of_memory_is_recorded_as_failed():
    def oom(inputs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    p = _with_manual(REGISTRY["linear_bias"], ManualVariant("greedy", oom, "allocates too much"))
    built = build_variants(p, p.shapes["quick"][0], torch.float32, "cpu", _inputs(p), compile_modes=())
    greedy = built[1]
    assert greedy.status == "failed" and greedy.reason.startswith("out of memory") and greedy.thunk is None


def test_compile_failure_is_recorded_and_the_rest_still_runs(monkeypatch):
    def broken_compile(fn, **kwargs):
        raise RuntimeError("inductor exploded\nlong traceback line 2")

    monkeypatch.setattr(torch, "compile", broken_compile)
    p = REGISTRY["linear_bias"]
    built = build_variants(p, p.shapes["quick"][0], torch.float32, "cpu", _inputs(p), compile_modes=("compile",))
    compiled = next(b for b in built if b.name == "compile")
    assert compiled.status == "failed" and compiled.reason == "RuntimeError: inductor exploded"
    assert [b.status for b in built if b.name != "compile"] == ["ok", "ok"]


def test_variant_over_the_time_limit_is_failed():
    def slow(inputs):
        import time

        return lambda: time.sleep(0.05) or inputs["x"]

    p = _with_manual(REGISTRY["linear_bias"], ManualVariant("slow", slow, "sleeps"))
    built = build_variants(p, p.shapes["quick"][0], torch.float32, "cpu", _inputs(p), compile_modes=(),
                           time_limit_s=0.01)
    assert built[1].status == "failed" and "per-variant limit" in built[1].reason


def test_a_failing_variant_does_not_stop_the_entry(monkeypatch):
    from fxfusion.measure.hardware import resolve
    from tests.helpers import TINY_SPEC

    def boom(inputs):
        raise ValueError("cannot build")

    p = _with_manual(REGISTRY["linear_bias"], REGISTRY["linear_bias"].manual[0],
                     ManualVariant("boom", boom, "always fails"))
    entry = cal.measure_entry(p, {"M": 8, "K": 16, "N": 8}, "float32", "cpu", resolve("generic-cpu"), TINY_SPEC,
                              CpuClock(), compile_modes=())
    assert entry.variant("boom").status == "failed" and entry.variant("boom").reason == "ValueError: cannot build"
    assert entry.variant("addmm").status == "ok" and entry.variant("addmm").samples_ms


def test_manual_variant_with_more_ops_than_eager_is_not_a_fusion():
    """On this CPU build F.rms_norm decomposes into the very ops of the eager version: not a fusion."""
    from fxfusion.measure.hardware import resolve
    from fxfusion.measure.kernelcount import count_launches
    from tests.helpers import TINY_SPEC

    p = REGISTRY["rmsnorm"]
    inputs = _inputs(p)
    if count_launches(p.manual[0].build(inputs), "cpu").kernels_per_call < count_launches(
            lambda: p.eager(**inputs), "cpu").kernels_per_call:
        pytest.skip("this torch build has a fused CPU rms_norm")
    entry = cal.measure_entry(p, p.shapes["quick"][0], "float32", "cpu", resolve("generic-cpu"), TINY_SPEC,
                              CpuClock(), compile_modes=())
    v = entry.variant("rms_norm_op")
    assert v.status == "not_a_fusion" and "not a fusion" in v.reason and v.samples_ms == []
    assert entry.decision.best_variant == "eager"


def test_parameters_are_static_copies_for_cuda_graphs():
    from fxfusion.calibration.variants import static_parameters

    p = REGISTRY["add_layernorm"]
    inputs = p.make_inputs({"M": 4, "N": 8}, torch.float32, "cpu", torch.Generator().manual_seed(0))
    marked = static_parameters(p, inputs)
    assert marked["x"] is inputs["x"] and marked["residual"] is inputs["residual"]  # activations as they are
    for name in ("weight", "bias"):
        assert marked[name] is not inputs[name] and torch.equal(marked[name], inputs[name])
        assert getattr(marked[name], "_dynamo_static_input_type", None) is not None
        assert getattr(inputs[name], "_dynamo_static_input_type", None) is None
