"""The rotary embedding of one tensor, as transformers writes it (Llama, Qwen2, Gemma, Phi-3, Mistral):

    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]);   y = x * cos + rotate_half(x) * sin

Shape keys: B, H, S, D (x is (B, H, S, D); cos and sin (B, 1, S, D), broadcast over the heads).  N = BHSD, C = BSD.
  unfused: x * cos reads N + C, writes N; the negated half reads N/2, writes N/2; cat reads N, writes N; * sin reads
  N + C, writes N; the add reads 2N, writes N  ->  s(10N + 2C)
  fused: reads x, cos, sin, writes y  ->  s(2N + 2C).  FLOPs: 2 multiplies and an add per element, a negation per
  half element: 3.5N.
The hand form: rotate_half(x) * sin = roll(x, D/2) * (sin * sign), sign = (-1 x D/2, 1 x D/2) a constant and sin
* sign a pass over the (smaller) sin; then ``addcmul(x * cos, roll(x), sin * sign)``: four ops where eager launches
six, three passes over x instead of five, and no negated copy.  On the 2-core CPU, float32, one thread (2026-12-08, 25
interleaved rounds, with sin's sign made by a slice / neg / cat then): 1.26x over eager at Llama-bench's q
(4x16x512x64, q and k together), 1.17x at a decode step;
torch.compile of the chain 1.64x at the large shape and 0.70-1.02x at the small ones
(docs/results/cpu-rotary-2026-12-08).
"""

from __future__ import annotations

import torch

from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes
from fxfusion.fusions.rotary.rewrite import rewrite_rolled, rotary_rolled, rotate_sign

QUICK = shapes(dict(B=1, H=8, S=128, D=64), dict(B=4, H=16, S=512, D=64))
FULL = shapes(dict(B=8, H=16, S=1, D=64), dict(B=1, H=8, S=128, D=64), dict(B=4, H=16, S=512, D=64))
GPU = shapes(dict(B=8, H=32, S=1, D=128), dict(B=1, H=8, S=128, D=64), dict(B=4, H=16, S=512, D=64),
             dict(B=8, H=32, S=2048, D=128))


def _inputs(shape, dtype, device, gen):
    B, H, S, D = shape["B"], shape["H"], shape["S"], shape["D"]
    angle = torch.randn(B, 1, S, D // 2, generator=gen) * 3.0
    angle = torch.cat((angle, angle), dim=-1)  # transformers' emb = cat((freqs, freqs), -1)
    return {"x": randn(gen, B, H, S, D, dtype=dtype, device=device),
            "cos": angle.cos().to(device=device, dtype=dtype), "sin": angle.sin().to(device=device, dtype=dtype)}


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _eager(x, cos, sin):
    return (x * cos) + (rotate_half(x) * sin)


def _build_rolled(inp):
    x, cos, sin = inp["x"], inp["cos"], inp["sin"]
    sign = rotate_sign(x.shape[-1], sin)  # a constant, made once (at rewrite time in a graph)
    return lambda: rotary_rolled(x, cos, sin, sign)


def _bytes(s, i, fused):
    n, c = s["B"] * s["H"] * s["S"] * s["D"], s["B"] * s["S"] * s["D"]
    return i * ((2 * n + 2 * c) if fused else (10 * n + 2 * c))


PATTERNS = [
    Pattern(
        name="rotary", family="rotary", title="Rotary embedding (rotate_half written out)", legacy_name="Rotary",
        shape_keys=("B", "H", "S", "D"), make_inputs=_inputs, eager=_eager,
        manual=(ManualVariant("rolled", _build_rolled,
                              "rotate_half as one roll with the sign folded into sin; x * cos + roll(x) * sin as one "
                              "addcmul", rewrite=rewrite_rolled),),
        flops=lambda s: 7 * s["B"] * s["H"] * s["S"] * s["D"] // 2,
        bytes=_bytes,
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        batch_inputs=("x", "cos", "sin"),
    ),
]
