"""Normalisation patterns.  Shape keys: M rows (tokens), N features.

rmsnorm, as people write it (gpt-fast, LLaMA):  x * rsqrt(mean(x^2) + eps) * w
  unfused: pow reads/writes MN (2MN), mean reads MN writes M, add+rsqrt read/write M (4M), mul reads MN and M
  writes MN (2MN + M), mul by w reads MN and N writes MN (2MN + N)  ->  s(6MN + 6M + N)
  fused: reads x and w, writes out  ->  s(2MN + N).  FLOPs: 4 per element (square, sum, scale, weight) + 2 per row.

add_layernorm, the residual add in front of a LayerNorm:  LayerNorm(x + residual)
  unfused: add reads 2MN writes MN; layer_norm reads MN + 2N, writes MN  ->  s(5MN + 2N)
  fused: reads x, residual, w, b, writes out  ->  s(3MN + 2N).  FLOPs: 1 (add) + 7 per element (LayerNorm
  mean, centre, square, sum, scale, weight, bias) + 2 per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxfusion.fusions.kernels import add_layernorm as triton_add_layernorm
from fxfusion.fusions.kernels import triton_unavailable
from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes
from fxfusion.fusions.norm.rewrite import rewrite_rms_norm, rewrite_triton_add_layernorm
from fxfusion.measure.devices import is_cuda

EPS = 1e-5

QUICK = shapes(dict(M=64, N=256), dict(M=2048, N=1024))
FULL = shapes(dict(M=64, N=256), dict(M=2048, N=1024), dict(M=8192, N=4096))
GPU = shapes(dict(M=64, N=256), dict(M=2048, N=1024), dict(M=16384, N=4096), dict(M=65536, N=8192))


def _rms_inputs(shape, dtype, device, gen):
    return {"x": randn(gen, shape["M"], shape["N"], dtype=dtype, device=device),
            "weight": (torch.rand(shape["N"], generator=gen) + 0.5).to(device=device, dtype=dtype)}


def _rms_eager(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _build_rms(inp):
    x, w = inp["x"], inp["weight"]
    return lambda: F.rms_norm(x, (x.shape[-1],), w, EPS)


def _add_ln_inputs(shape, dtype, device, gen):
    M, N = shape["M"], shape["N"]
    return {"x": randn(gen, M, N, dtype=dtype, device=device),
            "residual": randn(gen, M, N, dtype=dtype, device=device),
            "weight": (torch.rand(N, generator=gen) + 0.5).to(device=device, dtype=dtype),
            "bias": randn(gen, N, dtype=dtype, device=device, scale=0.1)}


def _add_ln_eager(x, residual, weight, bias):
    h = x + residual
    return F.layer_norm(h, (h.shape[-1],), weight, bias, EPS)


def _build_triton_add_ln(inp):
    x, r, w, b = inp["x"], inp["residual"], inp["weight"], inp["bias"]
    return lambda: triton_add_layernorm(x, r, w, b, EPS)


def _triton_only(shape, dtype, device):
    if not is_cuda(device):
        return "the hand-fused add+LayerNorm is a Triton kernel; there is no fused op for it on CPU"
    if dtype == torch.float64:
        return "the Triton kernel is not built for float64"
    return triton_unavailable()


PATTERNS = [
    Pattern(
        name="rmsnorm", family="norm", title="RMSNorm (written out)", legacy_name="RMSNorm",
        shape_keys=("M", "N"), make_inputs=_rms_inputs, eager=_rms_eager,
        manual=(ManualVariant("rms_norm_op", _build_rms, "F.rms_norm (one fused kernel where the build has one)",
                              rewrite=rewrite_rms_norm),),
        flops=lambda s: 4 * s["M"] * s["N"] + 2 * s["M"],
        bytes=lambda s, i, fused: i * ((2 * s["M"] * s["N"] + s["N"]) if fused
                                       else (6 * s["M"] * s["N"] + 6 * s["M"] + s["N"])),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
    ),
    Pattern(
        name="add_layernorm", family="norm", title="Residual add+LayerNorm", legacy_name="Add_LayerNorm",
        shape_keys=("M", "N"), make_inputs=_add_ln_inputs, eager=_add_ln_eager,
        manual=(ManualVariant("triton_add_layernorm", _build_triton_add_ln,
                              "add and LayerNorm in one Triton kernel", unsupported=_triton_only,
                              rewrite=rewrite_triton_add_layernorm),),
        flops=lambda s: 8 * s["M"] * s["N"] + 2 * s["M"],
        bytes=lambda s, i, fused: i * ((3 if fused else 5) * s["M"] * s["N"] + 2 * s["N"]),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        batch_inputs=("x", "residual"),
    ),
]
