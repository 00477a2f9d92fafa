"""Linear + BatchNorm1d (inference).  Shape keys: M rows, K inputs, N features; x (M, K), weight (N, K), bias (N),
the BatchNorm's running mean and variance, weight and bias (N each).

Bytes (itemsize s), every op reading its inputs and writing its output:
  linear     reads x (MK), W (NK), b (N), writes y (MN)
  batchnorm  reads y (MN) and mean, var, gamma, beta (4N), writes z (MN)
    unfused = s(MK + NK + 5N + 2MN + MN) = s(MK + NK + 5N + 3MN)
  folded: one linear on W * s and (b - mean) * s + beta, computed once at load
    fused   = s(MK + NK + N + MN): the BatchNorm's read and write of the activations (2MN) are gone.
FLOPs: 2MKN for the GEMM, MN for the bias, 2MN for the BatchNorm's scale and shift (the folded linear does 2MKN + MN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes
from fxfusion.fusions.conv.fused import BN_EPS, fold_batchnorm
from fxfusion.fusions.linear.pattern import _inputs as linear_inputs
from fxfusion.fusions.linear_bn.rewrite import folded_linear, rewrite_linear_bn_folded

SIZES = {
    "quick": shapes(dict(M=64, K=256, N=256), dict(M=512, K=1024, N=1024)),
    "full": shapes(dict(M=32, K=256, N=256), dict(M=512, K=1024, N=1024), dict(M=2048, K=2048, N=2048)),
    "gpu": shapes(dict(M=512, K=1024, N=1024), dict(M=4096, K=4096, N=4096), dict(M=8192, K=8192, N=8192)),
}


def _inputs(shape, dtype, device, gen):
    N = shape["N"]
    return {
        **linear_inputs(shape, dtype, device, gen),  # x, weight, bias as the linear family draws them
        "running_mean": randn(gen, N, dtype=dtype, device=device, scale=0.1),
        "running_var": (randn(gen, N, dtype=torch.float32, device="cpu").abs() + 0.5).to(device=device, dtype=dtype),
        "bn_weight": randn(gen, N, dtype=dtype, device=device),
        "bn_bias": randn(gen, N, dtype=dtype, device=device, scale=0.1),
    }


def eager(x, weight, bias, running_mean, running_var, bn_weight, bn_bias):
    """nn.Linear then nn.BatchNorm1d in eval(): two ops, the activations written and read again in between."""
    return F.batch_norm(F.linear(x, weight, bias), running_mean, running_var, bn_weight, bn_bias, False, 0.1, BN_EPS)


def _build_folded(inp):
    w, b = fold_batchnorm(inp["weight"], inp["bias"], inp["running_mean"], inp["running_var"], inp["bn_weight"],
                          inp["bn_bias"])  # once, as at load
    x = inp["x"]
    return lambda: folded_linear(x, w, b)


def _bytes(s, itemsize, fused):
    M, K, N = s["M"], s["K"], s["N"]
    return itemsize * (M * K + N * K + (N + M * N if fused else 5 * N + 3 * M * N))


PATTERNS = [Pattern(
    # family "linear": a GEMM fusion, calibrated with the matmul settings and listed by `--patterns linear` (the
    # profile schema names the five families; this folder is a family of the registry, not of the profile format)
    name="linear_bn", family="linear", title="Linear+BatchNorm1d", legacy_name="Linear_BN",
    shape_keys=("M", "K", "N"), make_inputs=_inputs, eager=eager,
    manual=(ManualVariant("bn_folded", _build_folded, "BatchNorm folded into the linear's weight and bias at load",
                          rewrite=rewrite_linear_bn_folded),),
    flops=lambda s: 2 * s["M"] * s["K"] * s["N"] + 3 * s["M"] * s["N"],
    bytes=_bytes, shapes=SIZES,
)]
