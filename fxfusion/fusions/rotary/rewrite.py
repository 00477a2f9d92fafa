"""Rotary: the slice / neg / cat / mul / mul / add chain becomes ``rotary_rolled(x, cos, sin)``: one roll and one
addcmul over x, the sign of rotate_half folded into a copy of sin."""

from __future__ import annotations

import torch
from torch import fx

from fxfusion.graph.edit import NotApplicable, aten, is_call, shape_of


def rotary_rolled(x, cos, sin):
    """``x * cos + rotate_half(x) * sin`` (rotate_half(x) = cat(-x2, x1) of x's halves along the last dim)."""
    h = x.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :h], sin[..., h:]), dim=-1)
    return torch.addcmul(x * cos, x.roll(h, -1), sin_signed)


def rewrite_rolled(gm, nodes, group):
    out = nodes[-1]
    cat = next((n for n in nodes if is_call(n, aten.cat.default)), None)
    if not is_call(out, aten.add.Tensor) or cat is None:
        raise NotApplicable("the site does not end with the add of the two products")
    mul_sin = next(n for n in nodes if is_call(n, aten.mul.Tensor) and cat in n.args[:2])
    mul_cos = next(a for a in out.args[:2] if a is not mul_sin)
    sin = mul_sin.args[1] if mul_sin.args[0] is cat else mul_sin.args[0]
    first = cat.args[0][1]  # cat((-x2, x1)): x1 = slice(x, -1, 0, D/2)
    x = first.args[0]
    if x not in mul_cos.args[:2]:
        raise NotApplicable("x * cos does not read the tensor the halves are cut from")
    cos = mul_cos.args[1] if mul_cos.args[0] is x else mul_cos.args[0]
    if any(not isinstance(a, fx.Node) for a in (x, cos, sin)) or shape_of(out) != shape_of(x):
        raise NotApplicable("cos and sin must broadcast over x without changing its shape")
    with gm.graph.inserting_before(out):
        y = gm.graph.call_function(rotary_rolled, (x, cos, sin))
    return out, y
