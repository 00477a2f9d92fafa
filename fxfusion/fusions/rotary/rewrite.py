"""Rotary: the slice / neg / cat / mul / mul / add chain becomes ``rotary_rolled(x, cos, sin, sign)``: one roll and
one addcmul over x, the sign of rotate_half folded into sin by one multiply with a constant made at rewrite time."""

from __future__ import annotations

import torch
from torch import fx

from fxfusion.graph.edit import NotApplicable, add_constant, aten, is_call, shape_of, value_of


def rotate_sign(d: int, like: torch.Tensor) -> torch.Tensor:
    """(-1, ..., -1, 1, ..., 1), D/2 of each: ``rotate_half(x) = roll(x, D/2) * sign``."""
    sign = torch.ones(d, dtype=like.dtype, device=like.device)
    sign[: d // 2] = -1
    return sign


def rotary_rolled(x, cos, sin, sign):
    """``x * cos + rotate_half(x) * sin`` (rotate_half(x) = cat(-x2, x1) of x's halves along the last dim), with
    ``sign`` from :func:`rotate_sign`: ``roll(x, D/2) * (sin * sign)`` is the second product."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin * sign)


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
    like = value_of(sin)
    if not isinstance(like, torch.Tensor):
        raise NotApplicable("sin has no recorded value to make the sign constant like")
    with gm.graph.inserting_before(out):
        sign = add_constant(gm, getattr(group, "site_id", "site"), "rotate_sign",
                            rotate_sign(int(shape_of(x)[-1]), torch.empty(0, dtype=like.dtype, device=like.device)),
                            like=sin)
        y = gm.graph.call_function(rotary_rolled, (x, cos, sin, sign))
    return out, y
