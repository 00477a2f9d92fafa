"""Attention.  Shape keys: B batch, H heads, S sequence, D head dim; q, k, v are (B, H, S, D).

Bytes (itemsize s, n = B H S D, m = B H S S):
  QK^T      reads q, k (2n), writes scores (m)
  / sqrt(d) reads scores, writes scores (2m)
  mask      reads scores and the (S, S) boolean mask (1 byte each), writes scores (2m)       (causal only)
  softmax   reads scores, writes probabilities (2m)
  PV        reads probabilities (m) and v (n), writes out (n)
  fused: q, k, v read once and out written once (4n) for SDPA; the scaled-score patterns keep their (m) output.
FLOPs: 2 m D per matmul, one per score for the scale, the mask and each of softmax's max/exp/sum/divide (4).

The idioms whose cost differs get their own pattern, with its bytes next to it: ``masked_attention`` (an additive
(B, 1, 1, S) padding mask: read by the eager add and by SDPA, which cannot take its causal fast path) and
``gqa_attention`` (Llama eager: repeat_kv copies K and V to every query head, the softmax writes float32 scores and
the cast reads them back; SDPA with ``enable_gqa`` and ``is_causal`` reads K and V once, with their own heads).
"""

from __future__ import annotations

import math

import torch

from fxfusion.fusions.attention.fused import attend, scaled_scores
from fxfusion.fusions.attention.reading import HAS_GQA
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
            return lambda: attend(q, k, v, scale=q.shape[-1] ** -0.5, causal=causal)

        manual = (ManualVariant("sdpa", build, "F.scaled_dot_product_attention"
                                + (" with is_causal=True" if causal else ""), rewrite=rewrite_sdpa),)
    elif with_softmax:
        def build(inp):
            q, k = inp["q"], inp["k"]
            return lambda: torch.softmax(scaled_scores(q, k.transpose(-2, -1), q.shape[-1] ** -0.5), dim=-1)

        manual = (ManualVariant("baddbmm_scale", build, "scale folded into the GEMM (baddbmm alpha), then softmax",
                                  rewrite=rewrite_baddbmm_scale),)
    else:
        def build(inp):
            q, k = inp["q"], inp["k"]
            return lambda: scaled_scores(q, k.transpose(-2, -1), q.shape[-1] ** -0.5)

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


# -- the idioms that change the cost: an additive padding mask, and Llama's GQA ----------------------------------

def _masked_inputs(shape, dtype, device, gen):
    """q, k, v and an additive padding mask (B, 1, 1, S) as HF builds it: 0 where a key is kept, finfo.min for the
    last quarter of the keys of every other sequence (padding)."""
    B, H, S, D = shape["B"], shape["H"], shape["S"], shape["D"]
    inputs = {name: randn(gen, B, H, S, D, dtype=dtype, device=device) for name in ("q", "k", "v")}
    mask = torch.zeros(B, 1, 1, S, dtype=dtype, device=device)
    mask[::2, ..., S - S // 4:] = torch.finfo(dtype).min
    inputs["mask"] = mask
    return inputs


def _masked_eager(q, k, v, mask):  # BERT/GPT-2 eager in transformers: scale by multiplication, then + mask
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _masked_bytes(s, itemsize, fused):
    # unfused: QK^T reads q, k (2n) and writes m; * scale 2m; + mask reads m and the (B, S) mask, writes m;
    # softmax 2m; PV reads m and v, writes out (n).  fused: q, k, v, the mask and out, once each
    n, m, p = s["B"] * s["H"] * s["S"] * s["D"], s["B"] * s["H"] * s["S"] * s["S"], s["B"] * s["S"]
    return itemsize * ((4 * n + p) if fused else (4 * n + 8 * m + p))


MASKED = Pattern(
    name="masked_attention", family="attention", title="Attention with an additive padding mask",
    legacy_name="MaskedAttention", shape_keys=("B", "H", "S", "D"), make_inputs=_masked_inputs, eager=_masked_eager,
    manual=(ManualVariant("sdpa", lambda i: lambda: attend(i["q"], i["k"], i["v"], i["mask"],
                                                           scale=i["q"].shape[-1] ** -0.5),
                          "F.scaled_dot_product_attention with the additive mask as attn_mask", rewrite=rewrite_sdpa),),
    # FLOPs: two GEMMs (2 m D each), the scale and the mask (one per score), softmax's max/exp/sum/divide (4)
    flops=lambda s: 4 * s["B"] * s["H"] * s["S"] * s["S"] * s["D"] + 6 * s["B"] * s["H"] * s["S"] * s["S"],
    bytes=_masked_bytes, shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
    extra=lambda s: {"heads": s["H"], "seq_len": s["S"], "head_dim": s["D"], "mask": "additive (B, 1, 1, S)"},
    batch_inputs=("q", "k", "v", "mask"),
)


def _gqa_inputs(shape, dtype, device, gen):
    """q (B, H, S, D), k and v with KV heads, and Llama's additive causal mask (0 on and below the diagonal,
    finfo.min above)."""
    B, H, KV, S, D = (shape[k] for k in ("B", "H", "KV", "S", "D"))
    inputs = {"q": randn(gen, B, H, S, D, dtype=dtype, device=device)}
    inputs.update({name: randn(gen, B, KV, S, D, dtype=dtype, device=device) for name in ("k", "v")})
    inputs["mask"] = torch.full((S, S), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return inputs


def _gqa_eager(q, k, v, mask):  # Llama/Qwen2 eager in transformers: repeat_kv, * scale, + mask, float32 softmax
    (B, H, S, D), KV = q.shape, k.shape[1]
    k, v = (x[:, :, None].expand(B, KV, H // KV, S, D).reshape(B, H, S, D) for x in (k, v))
    w = torch.matmul(q, k.transpose(2, 3)) * D ** -0.5 + mask
    return torch.matmul(torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype), v)


def _gqa_bytes(s, itemsize, fused):
    # unfused: repeat_kv reads k, v (2g) and writes them repeated (2n); QK^T 2n + m; * scale 2m; + mask 2m and the
    # (S, S) mask; softmax reads m and writes float32 scores (4 bytes each), the cast back reads those and writes m
    # (no cast, and a plain softmax, in float32); PV m + 2n.  fused: q, k, v with their own heads, and out
    n, m = s["B"] * s["H"] * s["S"] * s["D"], s["B"] * s["H"] * s["S"] * s["S"]
    g = s["B"] * s["KV"] * s["S"] * s["D"]
    if fused:
        return itemsize * (2 * n + 2 * g)
    softmax = itemsize * m + 4 * m + (0 if itemsize == 4 else 4 * m + itemsize * m)
    return itemsize * (2 * g + 2 * n + 2 * n + m + 2 * m + 2 * m + s["S"] * s["S"] + m + 2 * n) + softmax


def _gqa_unsupported(shape, dtype, device):
    return None if HAS_GQA else "this torch's SDPA has no enable_gqa (torch < 2.5)"


GQA = Pattern(
    name="gqa_attention", family="attention", title="Causal grouped-query attention (Llama eager)",
    legacy_name="GQACausalAttention", shape_keys=("B", "H", "KV", "S", "D"), make_inputs=_gqa_inputs,
    eager=_gqa_eager,
    manual=(ManualVariant("sdpa", lambda i: lambda: attend(i["q"], i["k"], i["v"], scale=i["q"].shape[-1] ** -0.5,
                                                           causal=True, gqa=True),
                          "F.scaled_dot_product_attention with is_causal=True and enable_gqa=True (K/V not repeated)",
                          rewrite=rewrite_sdpa, unsupported=_gqa_unsupported),),
    # FLOPs: two GEMMs at H heads (2 m D each), the scale and the mask, softmax (4), the casts counted as free
    flops=lambda s: 4 * s["B"] * s["H"] * s["S"] * s["S"] * s["D"] + 6 * s["B"] * s["H"] * s["S"] * s["S"],
    bytes=_gqa_bytes,
    shapes={"quick": shapes(dict(B=1, H=4, KV=2, S=64, D=32), dict(B=2, H=8, KV=2, S=256, D=64)),
            "full": shapes(dict(B=1, H=4, KV=2, S=64, D=32), dict(B=2, H=8, KV=2, S=256, D=64),
                           dict(B=4, H=8, KV=2, S=1024, D=64)),
            "gpu": shapes(dict(B=1, H=4, KV=2, S=64, D=32), dict(B=4, H=32, KV=8, S=1024, D=128),
                          dict(B=8, H=32, KV=8, S=4096, D=128))},
    extra=lambda s: {"heads": s["H"], "kv_heads": s["KV"], "seq_len": s["S"], "head_dim": s["D"]},
    batch_inputs=("q", "k", "v"),
)

PATTERNS = [_pattern(k) for k in ("qk_scores", "qk_softmax", "full_attention", "causal_attention")] + [MASKED, GQA]
