"""Attention.  Shape keys: B batch, H heads, S sequence, D head dim; q, k, v are (B, H, S, D).

Bytes (itemsize s, n = B H S D, m = B H S S):
  QK^T      reads q, k (2n), writes scores (m)
  / sqrt(d) reads scores, writes scores (2m)
  mask      reads scores and the (S, S) boolean mask (1 byte each), writes scores (2m)       (causal only)
  softmax   reads scores, writes probabilities (2m)
  PV        reads probabilities (m) and v (n), writes out (n)
  fused: q, k, v read once and out written once (4n) for SDPA; the scaled-score patterns keep their (m) output.
FLOPs: 2 m D per matmul, one per score for the scale, the mask and each of softmax's max/exp/sum/divide (4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fxfusion.fusions.attention.rewrite import rewrite_baddbmm_scale, rewrite_sdpa
from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes

QUICK = shapes(dict(B=1, H=2, S=64, D=32), dict(B=4, H=1, S=256, D=64))
FULL = shapes(dict(B=1, H=2, S=64, D=32), dict(B=4, H=1, S=256, D=64), dict(B=4, H=8, S=1024, D=64))
GPU = shapes(
    dict(B=1, H=2, S=64, D=32),
    dict(B=4, H=1, S=256, D=64),
    dict(B=4, H=16, S=1024, D=64),
    dict(B=8, H=16, S=4096, D=128),
)


def _inputs(causal: bool):
    def make(shape, dtype, device, gen):
        B, H, S, D = shape["B"], shape["H"], shape["S"], shape["D"]
        inputs = {name: randn(gen, B, H, S, D, dtype=dtype, device=device) for name in ("q", "k", "v")}
        if causal:
            inputs["mask"] = torch.ones(S, S, dtype=torch.bool, device=device).triu(1)
        return inputs

    return make


def _scaled_scores_baddbmm(q, k):
    """QK^T with the 1/sqrt(d) scale applied by the GEMM itself (alpha), so the scores are written once."""
    B, H, S, D = q.shape
    q3, k3 = q.reshape(B * H, S, D), k.reshape(B * H, S, D)
    out = torch.empty(B * H, S, S, dtype=q.dtype, device=q.device)
    return torch.baddbmm(out, q3, k3.transpose(1, 2), beta=0.0, alpha=1.0 / math.sqrt(D)).reshape(B, H, S, S)


def _pattern(kind: str) -> Pattern:
    causal = kind == "causal_attention"
    with_softmax = kind != "qk_scores"
    with_pv = kind in ("full_attention", "causal_attention")

    def eager(q, k, v=None, mask=None):
        scores = torch.matmul(q, k.transpose(-2, -1))
        scores = scores / math.sqrt(q.shape[-1])
        if causal:
            scores = scores.masked_fill(mask, float("-inf"))
        if not with_softmax:
            return scores
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs, v) if with_pv else probs

    if with_pv:
        def build(inp):
            q, k, v = inp["q"], inp["k"], inp["v"]
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        manual = (ManualVariant("sdpa", build, "F.scaled_dot_product_attention"
                                + (" with is_causal=True" if causal else ""), rewrite=rewrite_sdpa),)
    elif with_softmax:
        def build(inp):
            q, k = inp["q"], inp["k"]
            return lambda: torch.softmax(_scaled_scores_baddbmm(q, k), dim=-1)

        manual = (ManualVariant("baddbmm_scale", build, "scale folded into the GEMM (baddbmm alpha), then softmax",
                                  rewrite=rewrite_baddbmm_scale),)
    else:
        def build(inp):
            q, k = inp["q"], inp["k"]
            return lambda: _scaled_scores_baddbmm(q, k)

        manual = (ManualVariant("baddbmm_scale", build, "scale folded into the GEMM (baddbmm alpha)",
                                  rewrite=rewrite_baddbmm_scale),)

    def flops(s):
        m = s["B"] * s["H"] * s["S"] * s["S"]
        total = 2 * m * s["D"] + m
        if causal:
            total += m
        if with_softmax:
            total += 4 * m
        if with_pv:
            total += 2 * m * s["D"]
        return total

    def nbytes(s, itemsize, fused):
        n = s["B"] * s["H"] * s["S"] * s["D"]
        m = s["B"] * s["H"] * s["S"] * s["S"]
        if fused:
            return itemsize * (4 * n if with_pv else 2 * n + m)
        total = itemsize * (2 * n + m + 2 * m)  # QK^T, scale
        if causal:
            total += itemsize * 2 * m + s["S"] * s["S"]
        if with_softmax:
            total += itemsize * 2 * m
        if with_pv:
            total += itemsize * (m + 2 * n)
        return total

    titles = {
        "qk_scores": ("QK^T scores", "QK_T", ("matmul", "div")),
        "qk_softmax": ("QK^T+Softmax", "QK_T_Softmax", ("matmul", "div", "softmax")),
        "full_attention": ("Full attention", "FullAttention", ("matmul", "div", "softmax", "matmul")),
        "causal_attention": ("Causal multi-head attention", "CausalAttention",
                             ("matmul", "div", "masked_fill", "softmax", "matmul")),
    }
    title, legacy, ops = titles[kind]
    return Pattern(
        name=kind,
        family="attention",
        title=title,
        legacy_name=legacy,
        shape_keys=("B", "H", "S", "D"),
        make_inputs=_inputs(causal),
        eager=eager,
        manual=manual,
        flops=flops,
        bytes=nbytes,
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        extra=lambda s: {"heads": s["H"], "seq_len": s["S"], "head_dim": s["D"]},
        batch_inputs=("q", "k", "v"),
    )


PATTERNS = [_pattern(k) for k in ("qk_scores", "qk_softmax", "full_attention", "causal_attention")]
