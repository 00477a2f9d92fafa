"""The original suite's functions return its result-dict format, one dict per size, from real measurements."""

from __future__ import annotations

import pytest

import fxfusion
from tests.helpers import TINY_SPEC

KEYS = {"fusion_pattern", "input_shape", "unfused_latency_ms", "unfused_gflops", "unfused_bytes", "fused_latency_ms",
        "fused_gflops", "fused_bytes", "speedup_factor", "memory_reduction", "extra_params", "flops"}


def test_conv_results_have_the_original_format_and_every_size():
    results = fxfusion.calibrate_conv_fusion_patterns(quick=True, device="cpu", compile_modes=(), spec=TINY_SPEC)
    assert [r["fusion_pattern"] for r in results] == ["Conv2d_ReLU"] * 2 + ["Conv2d_BN"] * 2 + ["Conv2d_BN_ReLU"] * 2
    assert {r["input_shape"] for r in results} == {(1, 16, 16, 16, 16, 3, 1), (4, 128, 128, 28, 28, 3, 1)}
    for r in results:
        assert set(r) == KEYS
        assert r["fused_bytes"] < r["unfused_bytes"] and 0 < r["memory_reduction"] < 1
        assert r["unfused_latency_ms"] > 0 and r["flops"] > 0
        extra = r["extra_params"]
        assert extra["kernel_size"] == 3 and extra["verdict"] in ("fuse", "neutral", "avoid")
        if r["speedup_factor"] is not None:
            low, high = extra["speedup_ci95"]
            assert low <= extra["speedup"] <= high  # the verdict's statistic, paired by round
            assert r["speedup_factor"] == pytest.approx(r["unfused_latency_ms"] / r["fused_latency_ms"])
            assert extra["fused_variant"] != "eager"  # "fused" is never the unfused ops again
