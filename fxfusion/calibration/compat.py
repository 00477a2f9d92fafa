"""The original calibration suite's functions and result dicts, backed by fxfusion's measurements.

Each result dict has the original keys (fusion_pattern, input_shape, unfused_*/fused_* latency, GFLOP/s and bytes,
speedup_factor, memory_reduction, extra_params, flops).  Unlike the original, every size gets its own dict, "fused"
is the best *correct* fused variant (never a copy of the unfused ops), and extra_params carries the 95% interval
and the verdict that the interval supports.
"""

from __future__ import annotations

from typing import Any

from fxfusion.fusions.registry import ORIGINAL_SUITE, REGISTRY
from fxfusion.profiles.profile import Entry
from fxfusion.calibration.calibrate import calibrate


def result_dict(entry: Entry) -> dict[str, Any]:
    eager = entry.variant("eager")
    fused_ok = [v for v in entry.variants if v.kind != "eager" and v.status == "ok" and v.median_ms]
    best = entry.variant(entry.decision.best_variant) if entry.decision.best_variant != "eager" else None
    if best is None and fused_ok:
        best = max(fused_ok, key=lambda v: v.speedup.median if v.speedup else 0.0)
    sp = best.speedup if best else None
    return {
        "fusion_pattern": REGISTRY[entry.pattern].legacy_name,
        "input_shape": tuple(entry.shape.values()),
        "unfused_latency_ms": eager.median_ms if eager else None,
        "unfused_gflops": eager.gflops if eager else None,
        "unfused_bytes": entry.bytes_unfused,
        "fused_latency_ms": best.median_ms if best else None,
        "fused_gflops": best.gflops if best else None,
        "fused_bytes": entry.bytes_fused,
        # the original format's speedup: the ratio of the two latencies it reports
        "speedup_factor": eager.median_ms / best.median_ms if sp and eager and best.median_ms else None,
        "memory_reduction": entry.memory_reduction,
        "extra_params": {
            **entry.extra, "dtype": entry.dtype, "device": entry.device, "fused_variant": best.name if best else None,
            # the verdict's statistic (median of per-round ratios, or floors under contention) and its interval
            "speedup": sp.median if sp else None,
            "speedup_ci95": (sp.ci_low, sp.ci_high) if sp else None, "verdict": entry.decision.verdict,
            "reason": entry.decision.reason,
        },
        "flops": entry.flops,
    }


def _family(family: str, quick: bool, device: str, **kwargs) -> list[dict[str, Any]]:
    names = ",".join(n for n in ORIGINAL_SUITE if REGISTRY[n].family == family)
    profile = calibrate(hardware=kwargs.pop("hardware", "generic-cpu" if device == "cpu" else "h100-sxm"),
                        device=device, patterns=names, quick=quick, skip_ceilings=True, **kwargs)
    return [result_dict(e) for e in profile.entries]


def calibrate_linear_fusion_patterns(quick: bool = False, device: str = "cpu", **kwargs) -> list[dict[str, Any]]:
    """Linear+Bias, Linear+Bias+ReLU, Linear+Bias+GELU at every size of the size set."""
    return _family("linear", quick, device, **kwargs)


def calibrate_conv_fusion_patterns(quick: bool = False, device: str = "cpu", **kwargs) -> list[dict[str, Any]]:
    """Conv2d+ReLU, Conv2d+BN, Conv2d+BN+ReLU at every size of the size set."""
    return _family("conv", quick, device, **kwargs)


def calibrate_attention_fusion_patterns(quick: bool = False, device: str = "cpu", **kwargs) -> list[dict[str, Any]]:
    """QK^T scores, QK^T+Softmax, full attention at every size of the size set."""
    return _family("attention", quick, device, **kwargs)
