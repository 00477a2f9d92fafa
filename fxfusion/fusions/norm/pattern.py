"""Normalisation patterns.  Shape keys: M rows (tokens), N features.

rmsnorm, as people write it (gpt-fast, LLaMA):  x * rsqrt(mean(x^2) + eps) * w
  unfused: pow reads/writes MN (2MN), mean reads MN writes M, add+rsqrt read/write M (4M), mul reads MN and M
  writes MN (2MN + M), mul by w reads MN and N writes MN (2MN + N)  ->  s(7MN + 6M + N)
  fused: reads x and w, writes out  ->  s(2MN + N).  FLOPs: 4 per element (square, sum, scale, weight) + 2 per row.

add_layernorm, the residual add in front of a LayerNorm:  LayerNorm(x + residual)
  unfused: add reads 2MN writes MN; layer_norm reads MN + 2N, writes MN  ->  s(5MN + 2N)
  fused: reads x, residual, w, b, writes out  ->  s(3MN + 2N).  FLOPs: 1 (add) + 7 per element (LayerNorm
  mean, centre, square, sum, scale, weight, bias) + 2 per row.

The pre-LN residual block, where the sum h = x + residual is normalised *and* read again by the next residual add
(GPT-2, ViT, Llama): the fused variants write both h and y, so h is written once and never read back.

add_layernorm_sum:  h = x + residual; y = LayerNorm(h); both returned
  unfused: add reads 2MN writes h (MN); layer_norm reads h (MN) + 2N, writes y (MN)  ->  s(5MN + 2N)
  fused: reads x, residual (2MN), w, b (2N); writes h and y (2MN)  ->  s(4MN + 2N).  FLOPs as add_layernorm.

add_rmsnorm_sum, Llama's RMSNorm written out after the residual add:  h = x + residual;
  y = w * (h.float() * rsqrt(mean(h.float()^2) + eps)).to(dtype); both returned
  unfused: add reads 2MN writes MN (3MN), then the written-out RMSNorm's 7MN + 6M + N (above)  ->  s(10MN + 6M + N);
  the upcast and cast back of half-precision inputs are not counted (in float32 they copy nothing)
  fused: reads x, residual (2MN), w (N); writes h and y (2MN)  ->  s(4MN + N).
  FLOPs: 1 (add) + 4 per element (square, sum, scale, weight) + 2 per row.
linear_add_rmsnorm_sum, the bias-free projection in front of that residual add (Llama's o_proj / down_proj):
  h = x @ W^T + residual; y = RMSNorm(h) as above; both returned.  Shape keys M rows, K inputs, N features.
  unfused: the GEMM reads MK + NK and writes MN, then add_rmsnorm_sum's unfused 10MN + 6M + N  ->  s(MK + NK + 11MN +
  6M + N)
  fused (the GEMM's epilogue adds the residual and normalises): reads x, W, residual, w; writes h and y  ->
  s(MK + NK + 3MN + N).  The variants: addmm with the residual as C then F.rms_norm (MK + NK + 4MN + N: h read back
  once), the GEMM then the Triton add+RMSNorm kernel (MK + NK + 5MN + N).  FLOPs: 2MKN + add_rmsnorm_sum's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxfusion.fusions.kernels import add_layernorm as triton_add_layernorm
from fxfusion.fusions.kernels import triton_unavailable
from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes
from fxfusion.fusions.norm.kernels import add_layernorm_sum, add_rmsnorm_sum, linear_residual
from fxfusion.fusions.norm.rewrite import (rewrite_rms_norm, rewrite_triton_add_layernorm,
                                           rewrite_triton_add_layernorm_sum, rewrite_triton_add_rmsnorm_sum,
                                           rewrite_addmm_rms_norm)
from fxfusion.measure.devices import is_cuda

EPS = 1e-5

QUICK = shapes(dict(M=64, N=256), dict(M=2048, N=1024))
FULL = shapes(dict(M=64, N=256), dict(M=2048, N=1024), dict(M=8192, N=4096))
GPU = shapes(dict(M=64, N=256), dict(M=2048, N=1024), dict(M=16384, N=4096), dict(M=65536, N=8192))
# The projection in front (Llama-bench's o_proj and down_proj, then a 7B-wide one).
QUICK_GEMM = shapes(dict(M=64, K=256, N=256), dict(M=2048, K=1024, N=1024))
FULL_GEMM = shapes(dict(M=64, K=256, N=256), dict(M=2048, K=1024, N=1024), dict(M=2048, K=2816, N=1024))
GPU_GEMM = shapes(dict(M=64, K=256, N=256), dict(M=2048, K=1024, N=1024), dict(M=2048, K=2816, N=1024),
                  dict(M=8192, K=4096, N=4096))


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


def _triton_only(what: str):
    def unsupported(shape, dtype, device):
        if not is_cuda(device):
            return f"the hand-fused {what} is a Triton kernel; there is no fused op for it on CPU"
        if dtype == torch.float64:
            return "the Triton kernel is not built for float64"
        return triton_unavailable()

    return unsupported


def _add_ln_sum_eager(x, residual, weight, bias):  # a pre-LN block: the sum is returned, the next add reads it
    h = x + residual
    return h, F.layer_norm(h, (h.shape[-1],), weight, bias, EPS)


def _build_triton_add_ln_sum(inp):
    x, r, w, b = inp["x"], inp["residual"], inp["weight"], inp["bias"]
    return lambda: add_layernorm_sum(x, r, w, b, EPS)


def _add_rms_inputs(shape, dtype, device, gen):
    inputs = _add_ln_inputs(shape, dtype, device, gen)
    del inputs["bias"]
    return inputs


def _add_rms_sum_eager(x, residual, weight):  # transformers' LlamaRMSNorm after the residual add
    h = x + residual
    hidden = h.to(torch.promote_types(h.dtype, torch.float32))  # Llama: .to(torch.float32); float64 stays float64
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + EPS)
    return h, weight * hidden.to(h.dtype)


def _build_triton_add_rms_sum(inp):
    x, r, w = inp["x"], inp["residual"], inp["weight"]
    return lambda: add_rmsnorm_sum(x, r, w, EPS)


def _lin_add_rms_inputs(shape, dtype, device, gen):
    M, K, N = shape["M"], shape["K"], shape["N"]
    return {"x": randn(gen, M, K, dtype=dtype, device=device),
            "proj": randn(gen, N, K, dtype=dtype, device=device, scale=K ** -0.5),
            "residual": randn(gen, M, N, dtype=dtype, device=device),
            "weight": (torch.rand(N, generator=gen) + 0.5).to(device=device, dtype=dtype)}


def _lin_add_rms_sum_eager(x, proj, residual, weight):  # Llama: hidden = residual + o_proj(attn); then its RMSNorm
    return _add_rms_sum_eager(F.linear(x, proj), residual, weight)


def _build_addmm_rms_norm(inp):
    x, p, r, w = inp["x"], inp["proj"], inp["residual"], inp["weight"]

    def run():
        h = linear_residual(x, p, r)
        return h, F.rms_norm(h, (h.shape[-1],), w, EPS)
    return run


def _build_linear_triton_add_rms_sum(inp):
    x, p, r, w = inp["x"], inp["proj"], inp["residual"], inp["weight"]
    return lambda: add_rmsnorm_sum(F.linear(x, p), r, w, EPS)


def _lin_bytes(s, i, fused):
    gemm = s["M"] * s["K"] + s["N"] * s["K"]
    return i * (gemm + ((3 * s["M"] * s["N"] + s["N"]) if fused else (11 * s["M"] * s["N"] + 6 * s["M"] + s["N"])))


PATTERNS = [
    Pattern(
        name="rmsnorm", family="norm", title="RMSNorm (written out)", legacy_name="RMSNorm",
        shape_keys=("M", "N"), make_inputs=_rms_inputs, eager=_rms_eager,
        manual=(ManualVariant("rms_norm_op", _build_rms, "F.rms_norm (one fused kernel where the build has one)",
                              rewrite=rewrite_rms_norm),),
        flops=lambda s: 4 * s["M"] * s["N"] + 2 * s["M"],
        bytes=lambda s, i, fused: i * ((2 * s["M"] * s["N"] + s["N"]) if fused
                                       else (7 * s["M"] * s["N"] + 6 * s["M"] + s["N"])),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
    ),
    Pattern(
        name="add_layernorm", family="norm", title="Residual add+LayerNorm", legacy_name="Add_LayerNorm",
        shape_keys=("M", "N"), make_inputs=_add_ln_inputs, eager=_add_ln_eager,
        manual=(ManualVariant("triton_add_layernorm", _build_triton_add_ln,
                              "add and LayerNorm in one Triton kernel", unsupported=_triton_only("add+LayerNorm"),
                              rewrite=rewrite_triton_add_layernorm),),
        flops=lambda s: 8 * s["M"] * s["N"] + 2 * s["M"],
        bytes=lambda s, i, fused: i * ((3 if fused else 5) * s["M"] * s["N"] + 2 * s["N"]),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        batch_inputs=("x", "residual"),
    ),
    Pattern(
        name="add_layernorm_sum", family="norm", title="Residual add+LayerNorm, sum kept (pre-LN)",
        legacy_name="Add_LayerNorm_Sum", shape_keys=("M", "N"), make_inputs=_add_ln_inputs, eager=_add_ln_sum_eager,
        manual=(ManualVariant("triton_add_layernorm_sum", _build_triton_add_ln_sum,
                              "add and LayerNorm in one Triton kernel that writes the sum and the normalised value",
                              unsupported=_triton_only("add+LayerNorm writing the sum"),
                              rewrite=rewrite_triton_add_layernorm_sum),),
        flops=lambda s: 8 * s["M"] * s["N"] + 2 * s["M"],
        bytes=lambda s, i, fused: i * ((4 if fused else 5) * s["M"] * s["N"] + 2 * s["N"]),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        batch_inputs=("x", "residual"),
    ),
    Pattern(
        name="add_rmsnorm_sum", family="norm", title="Residual add+RMSNorm, sum kept (pre-LN)",
        legacy_name="Add_RMSNorm_Sum", shape_keys=("M", "N"), make_inputs=_add_rms_inputs, eager=_add_rms_sum_eager,
        manual=(ManualVariant("triton_add_rmsnorm_sum", _build_triton_add_rms_sum,
                              "add and RMSNorm in one Triton kernel that writes the sum and the normalised value",
                              unsupported=_triton_only("add+RMSNorm writing the sum"),
                              rewrite=rewrite_triton_add_rmsnorm_sum),),
        flops=lambda s: 5 * s["M"] * s["N"] + 2 * s["M"],
        bytes=lambda s, i, fused: i * ((4 * s["M"] * s["N"] + s["N"]) if fused
                                       else (10 * s["M"] * s["N"] + 6 * s["M"] + s["N"])),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        batch_inputs=("x", "residual"),
    ),
    Pattern(
        name="linear_add_rmsnorm_sum", family="norm", title="Linear (no bias)+residual add+RMSNorm, sum kept",
        legacy_name="Linear_Add_RMSNorm_Sum", shape_keys=("M", "K", "N"), make_inputs=_lin_add_rms_inputs,
        eager=_lin_add_rms_sum_eager,
        manual=(ManualVariant("addmm_rms_norm", _build_addmm_rms_norm,
                              "the residual added in the GEMM's epilogue (addmm, C = residual), then F.rms_norm",
                              rewrite=rewrite_addmm_rms_norm),
                ManualVariant("linear_triton_add_rmsnorm_sum", _build_linear_triton_add_rms_sum,
                              "the GEMM, then add and RMSNorm in one Triton kernel writing the sum and the "
                              "normalised value", unsupported=_triton_only("add+RMSNorm writing the sum"),
                              rewrite=rewrite_triton_add_rmsnorm_sum)),
        flops=lambda s: 2 * s["M"] * s["K"] * s["N"] + 5 * s["M"] * s["N"] + 2 * s["M"],
        bytes=_lin_bytes,
        shapes={"quick": QUICK_GEMM, "full": FULL_GEMM, "gpu": GPU_GEMM},
        batch_inputs=("x", "residual"),
    ),
]
