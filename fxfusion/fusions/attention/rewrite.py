"""Attention: QK^T -> scale -> mask -> softmax -> PV becomes SDPA; QK^T -> scale becomes baddbmm with alpha.

The scores are read backwards from the softmax: any number of multiplies/divides by Python scalars (on the scores,
on q or on K^T) multiply into SDPA's ``scale``, and at most one mask, before or after them:
``masked_fill(m, -inf)`` -> SDPA's boolean mask ``~m``; a finite fill value v -> the additive mask v * m; ``+ m``
with a floating-point m -> m (times any scale applied after it).  Eval-mode dropout (p = 0 or train = False)
between softmax and PV is dropped; casts, and anything else, are refused with the node that stopped the reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from fxfusion.graph.edit import NotApplicable, aten, arg, constant_value, is_call, scalar, shape_of, value_of

SOFTMAXES = (aten.softmax.int, aten._softmax.default)
BMMS = (aten.matmul.default, aten.bmm.default)


def _last_two_swapped(node: fx.Node) -> bool:
    shape = shape_of(node.args[0])
    if shape is None:
        return False
    nd = len(shape)
    if is_call(node, aten.transpose.int):
        return {node.args[1] % nd, node.args[2] % nd} == {nd - 2, nd - 1}
    if is_call(node, aten.permute.default):
        perm = [d % nd for d in node.args[1]]
        return perm == list(range(nd - 2)) + [nd - 1, nd - 2]
    return nd == 2 and is_call(node, aten.t.default)


@dataclass
class _Attention:
    q: fx.Node
    kt: fx.Node  # K^T as the site multiplies by it: (..., E, S)
    k: fx.Node | None  # K itself (..., S, E) when the site transposes it
    scale: float
    scaled: fx.Node  # the scores after the scale (what qk_scores returns)
    mask: tuple | None  # ("keep", bool m) | ("fill", bool m, value) | ("add", float m, factor)
    softmax: fx.Node | None
    out: fx.Node | None  # probs @ v
    v: fx.Node | None


def _scale_of(node: fx.Node, inside: set) -> tuple[float, fx.Node] | None:
    """(factor, operand) when node multiplies/divides a site value by a Python scalar."""
    if node not in inside:
        return None
    if is_call(node, aten.div.Tensor, aten.div.Scalar) and scalar(node.args[1]) is not None:
        return 1.0 / scalar(node.args[1]), node.args[0]
    if is_call(node, aten.mul.Tensor, aten.mul.Scalar):
        a, b = node.args[:2]
        if scalar(b) is not None:
            return scalar(b), a
        if scalar(a) is not None:
            return scalar(a), b
    return None


def _parse_scores(head: fx.Node, inside: set) -> tuple[fx.Node, fx.Node, float, tuple | None]:
    """Walk back from the value softmax reads: scales and at most one mask, in any order, then QK^T.

    Returns q, K^T, the total scale and the mask as SDPA must see it: a scale applied after the mask scales the
    mask too (softmax(s * (qk + m)) = softmax(s * qk + s * m)), so the mask carries the scale found before it.
    """
    mask, scale, node = None, 1.0, head
    while True:
        if is_call(node, *BMMS) and node in inside:
            q, kt = node.args[0], node.args[1]
            break
        s = _scale_of(node, inside)
        if s is not None:
            scale *= s[0]
            node = s[1]
            continue
        if is_call(node, aten.masked_fill.Scalar) and node in inside and mask is None:
            value = scalar(node.args[2])
            if value is None or scale <= 0:
                raise NotApplicable("the mask fill value is not a number, or is scaled by a non-positive factor")
            mask = ("keep", node.args[1]) if value == -math.inf else ("fill", node.args[1], value * scale)
            node = node.args[0]
            continue
        if is_call(node, aten.add.Tensor) and node in inside and mask is None:
            if scalar(node.kwargs.get("alpha", 1)) != 1.0:
                raise NotApplicable("the additive mask has alpha != 1")
            a, b = node.args[:2]
            scores, m = (a, b) if isinstance(a, fx.Node) and a in inside else (b, a)
            if not isinstance(m, fx.Node) or value_of(m) is None or not value_of(m).is_floating_point():
                raise NotApplicable("the additive mask is not a floating-point tensor")
            mask, node = ("add", m, scale), scores
            continue
        raise NotApplicable(f"cannot read the attention scores at node {getattr(node, 'name', node)!r} "
                            "(expected scales, one mask and QK^T, from the softmax back)")
    for side in ("q", "kt"):  # a scale applied to q (or K^T) before the GEMM is the same scale
        operand = q if side == "q" else kt
        s = _scale_of(operand, inside) if isinstance(operand, fx.Node) else None
        if s is not None:
            scale *= s[0]
            q, kt = (s[1], kt) if side == "q" else (q, s[1])
    return q, kt, scale, mask


def _parse_attention(nodes: list[fx.Node], need_pv: bool) -> _Attention:
    inside = set(nodes)
    softmax = next((n for n in nodes if is_call(n, *SOFTMAXES)), None)
    out = v = None
    if softmax is not None:
        dim, ndim = softmax.args[1], len(shape_of(softmax) or (0, 0))
        if dim % ndim != ndim - 1:
            raise NotApplicable("the softmax is not over the last dimension")
        if softmax.target == aten.softmax.int and arg(softmax, 2, "dtype", None) is not None:
            raise NotApplicable("the softmax changes dtype")
        if softmax.target == aten._softmax.default and softmax.args[2]:
            raise NotApplicable("the softmax converts half to float")
        probs, seen = softmax, set()
        for n in nodes:  # PV: a matmul reading the probabilities (through eval-mode dropout at most)
            if is_call(n, *BMMS) and n.args[0] in (softmax, *seen):
                out, v = n, n.args[1]
            if is_call(n, aten.dropout.default) and n.args[0] is probs and (n.args[1] == 0 or not n.args[2]):
                seen.add(n)
                probs = n
        scores = softmax.args[0]
    else:
        scores = nodes[-1]
    if need_pv and out is None:
        raise NotApplicable("no probabilities @ V matmul in the site")
    q, kt, scale, mask = _parse_scores(scores, inside)
    if not need_pv and mask is not None:
        raise NotApplicable("a masked site is rewritten only as a whole attention (SDPA)")
    k = kt.args[0] if isinstance(kt, fx.Node) and kt in inside and _last_two_swapped(kt) else None
    scaled = scores
    return _Attention(q, kt, k, scale, scaled, mask, softmax, out, v)


def _is_causal(gm, a: _Attention) -> bool:
    """True when the mask is a constant that drops exactly the scores above the diagonal (SDPA's is_causal).

    The calibration measures causal attention as SDPA with is_causal=True (the flash kernels); an explicit boolean
    mask would run another kernel, so a constant causal mask is recognised and replaced by the flag.
    """
    if a.mask is None or a.mask[0] != "keep":
        return False
    drop = constant_value(gm, a.mask[1])
    qs, ks = shape_of(a.q), shape_of(a.k if a.k is not None else a.kt)
    if drop is None or drop.dtype != torch.bool or qs is None or ks is None:
        return False
    L, S = qs[-2], (ks[-2] if a.k is not None else ks[-1])
    causal = torch.ones(L, S, dtype=torch.bool, device=drop.device).triu(1)
    try:
        return bool(torch.equal(torch.broadcast_to(drop, (*drop.shape[:-2], L, S)),
                                causal.expand(*drop.shape[:-2], L, S)))
    except RuntimeError:  # a mask that does not broadcast to (L, S)
        return False


def rewrite_sdpa(gm, nodes, group):
    a = _parse_attention(nodes, need_pv=True)
    g = gm.graph
    qv = value_of(a.q)
    causal = _is_causal(gm, a)
    if a.mask is not None and a.mask[0] == "add" and value_of(a.mask[1]).dtype != qv.dtype:
        raise NotApplicable("the additive mask's dtype differs from q's; SDPA needs them equal")
    with g.inserting_before(a.out):
        k = a.k if a.k is not None else g.call_function(aten.transpose.int, (a.kt, -2, -1))
        mask = None
        if a.mask is not None and not causal:
            kind, m = a.mask[0], a.mask[1]
            if kind == "keep":  # masked_fill(True -> -inf) drops those scores; SDPA's boolean mask keeps True
                mask = g.call_function(aten.logical_not.default, (m,))
            elif kind == "fill":  # a finite fill value: the same softmax as adding it where the mask is True
                as_float = g.call_function(aten._to_copy.default, (m,), {"dtype": qv.dtype})
                mask = g.call_function(aten.mul.Tensor, (as_float, a.mask[2]))
            elif a.mask[2] != 1.0:  # an additive mask the scale also multiplied
                mask = g.call_function(aten.mul.Tensor, (m, a.mask[2]))
            else:
                mask = m
        y = g.call_function(aten.scaled_dot_product_attention.default, (a.q, k, a.v, mask, 0.0, causal),
                            {"scale": a.scale})
    return a.out, y


def rewrite_baddbmm_scale(gm, nodes, group):
    a = _parse_attention(nodes, need_pv=False)
    qs, ks = shape_of(a.q), shape_of(a.kt)
    if qs is None or ks is None or qs[:-2] != ks[:-2]:
        raise NotApplicable("q and K^T must have the same batch dimensions for one baddbmm")
    if a.scaled is a.kt or is_call(a.scaled, *BMMS):
        raise NotApplicable("the scores are not scaled: nothing for alpha to fold")
    *batch, L, E = qs
    S = ks[-1]
    bh = math.prod(batch)
    qv = value_of(a.q)
    g = gm.graph
    with g.inserting_before(a.scaled):
        q3 = g.call_function(aten.reshape.default, (a.q, [bh, L, E]))
        kt3 = g.call_function(aten.reshape.default, (a.kt, [bh, E, S]))
        empty = g.call_function(aten.empty.memory_format, ([bh, L, S],), {"dtype": qv.dtype, "device": qv.device})
        y = g.call_function(aten.baddbmm.default, (empty, q3, kt3), {"beta": 0.0, "alpha": a.scale})
        y = g.call_function(aten.reshape.default, (y, [*batch, L, S]))
    return a.scaled, y
