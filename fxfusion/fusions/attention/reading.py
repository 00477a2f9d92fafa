"""Reading hand-written attention from its softmax: the idioms the zoo's eager code writes, one rule each.

The matcher and the rewrite read a site the same way (:func:`read_attention`), so what is matched is what is
rewritten.  From the softmax, three walks, each bounded:

  1. back along the *score chain* to QK^T: every op on the way must be one of :data:`SCORE_RULES` (a scale, a mask,
     a cast, a batch reshape); ``add`` is the one op whose scores operand is ambiguous, so both operands are tried;
  2. at QK^T (``matmul``/``bmm``, or ``baddbmm`` whose ``beta * input`` is a mask and ``alpha`` a scale): scales on
     q and on K^T (or K), K^T's transpose, and GQA's repeat_kv of K;
  3. forward from the softmax through casts, eval-mode dropout and batch reshapes to ``probs @ V`` (repeat_kv of V).

What the reading gives SDPA: ``scale`` is the product of every constant factor; the mask is the score chain
evaluated at QK^T = 0 (:mod:`fxfusion.fusions.attention.masks`), which is exact because every rule is affine in the
scores with slope 1 or a constant (a masked_fill/where puts a constant where it drops, the others add or multiply).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.fx import Node

from fxfusion.graph.edit import constant_value, scalar
from fxfusion.graph.nodes import ASSERT_OPS, arg, kind, shape, swaps_last_two, val

SCHEMA_ARGS = {a.name for a in torch.ops.aten.scaled_dot_product_attention.default._schema.arguments}
HAS_GQA = "enable_gqa" in SCHEMA_ARGS  # torch >= 2.5: SDPA repeats K/V heads itself
# HF's masks are built from position ids in ~40 ops (aranges, index, comparisons, a cumsum); evaluating them once
# at match/rewrite time is what proves a mask causal.
MASK_NODE_BUDGET = 96
MAX_CHAIN = 12  # ops between QK^T and the softmax (HF GPT-2 writes 5: cast, where, add, scale, cast)
MAX_PROBS = 4  # ops between the softmax and PV (cast, dropout, reshape)


class NotAttention(Exception):
    """The softmax is not the middle of an attention written in a way this reader knows; the site is not matched."""


@dataclass
class Step:
    """One op of the score chain, in forward order (QK^T first)."""

    node: Node
    role: str  # "scale" | "mask" | "cast" | "view"
    chain: int  # position of the scores in node.args
    idiom: str  # how it is written, for the report
    factor: float = 1.0  # scale: what it multiplies the scores by
    fill: float | None = None  # masked_fill / where: the value a dropped score gets (None: a run-time tensor)
    drops_where_true: bool = True  # masked_fill / where: the condition marks dropped (True) or kept (False) scores


@dataclass
class Reading:
    softmax: Node
    qk: Node  # the GEMM of the raw scores: matmul, bmm or baddbmm
    q: Node
    kt: Node  # K^T as the GEMM reads it, after scales and the transpose were taken off
    k: Node | None  # K when the site transposes it (K^T = k^T), else None
    steps: list[Step]
    pre_scale: float = 1.0  # constant factors on q and K before the GEMM, and baddbmm's alpha
    root_mask: Node | None = None  # baddbmm's input, when beta != 0
    root_beta: float = 0.0
    probs: list[Node] = field(default_factory=list)  # casts / dropout / reshapes between softmax and PV
    dropout: Node | None = None
    pv: Node | None = None
    v: Node | None = None
    gqa: int = 1  # K/V heads repeated this many times by repeat_kv absorbed into the site (SDPA's enable_gqa)
    nodes: list[Node] = field(default_factory=list)
    idioms: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        out = self.pre_scale
        for s in self.steps:
            out *= s.factor
        return out

    @property
    def masks(self) -> list[Step]:
        return [s for s in self.steps if s.role == "mask"]

    @property
    def output(self) -> Node:
        return self.pv if self.pv is not None else (self.probs[-1] if self.probs else self.softmax)


# -- the score chain: one rule per idiom, read backwards from the softmax ----------------------------------------

def _number(gm, x) -> float | None:
    """A Python number, or a 0-d tensor whose value is a constant of the graph (``torch.full([], v)``)."""
    if scalar(x) is not None:
        return scalar(x)
    if isinstance(x, Node) and shape(x) == ():
        c = constant_value(gm, x, MASK_NODE_BUDGET)
        return float(c) if c is not None else None
    return None


def _is_0d(x) -> bool:
    return scalar(x) is not None or (isinstance(x, Node) and shape(x) == ())


def _scale_rule(gm, n: Node) -> list[Step]:
    """``s * c``, ``c * s``, ``s / c`` with c a number or a 0-d tensor (GPT-2: ``/ torch.full([], sqrt(d))``)."""
    k = kind(n)
    if k not in ("mul", "div") or n.kwargs.get("rounding_mode") is not None:
        return []
    out = []
    for chain in ((0, 1) if k == "mul" else (0,)):
        c = n.args[1 - chain]
        if isinstance(n.args[chain], Node) and _is_0d(c):
            factor = _number(gm, c)
            if factor == 0.0 and k == "div":
                continue
            nan = float("nan")  # a run-time factor: read, then refused (SDPA's scale is a number)
            out.append(Step(n, "scale", chain, "* scale" if k == "mul" else "/ scale",
                            factor=nan if factor is None else (factor if k == "mul" else 1.0 / factor)))
    return out


def _masked_fill_rule(gm, n: Node) -> list[Step]:
    """``s.masked_fill(m, v)``: dropped where m (nanoGPT, the reference transformer_block)."""
    if kind(n) != "masked_fill" or not isinstance(n.args[0], Node):
        return []
    return [Step(n, "mask", 0, "masked_fill", fill=_number(gm, n.args[2]))]


def _where_rule(gm, n: Node) -> list[Step]:
    """``torch.where(keep, s, v)`` (HF GPT-2: causal bias, ``finfo.min``) or ``torch.where(drop, v, s)``."""
    if kind(n) != "where" or len(n.args) != 3:
        return []
    out = []
    for chain in (1, 2):
        s, fill = n.args[chain], n.args[3 - chain]
        if isinstance(s, Node) and shape(s) == shape(n) and _is_0d(fill):
            out.append(Step(n, "mask", chain, "where", fill=_number(gm, fill), drops_where_true=chain == 2))
    return out


def _additive_rule(gm, n: Node) -> list[Step]:
    """``s + mask``, ``mask + s``, ``s - mask``: a floating-point mask that broadcasts to the scores (HF padding
    (B, 1, 1, S), causal (1, 1, S, S), or both in one)."""
    k = kind(n)
    if k not in ("add", "sub") or scalar(n.kwargs.get("alpha", 1)) != 1.0:
        return []
    out = []
    for chain in ((0, 1) if k == "add" else (0,)):
        s, m = n.args[chain], n.args[1 - chain]
        mv = val(m)
        if (isinstance(s, Node) and mv is not None and mv.is_floating_point() and shape(s) == shape(n)
                and mv.dim() <= len(shape(n))):
            out.append(Step(n, "mask", chain, "+ additive mask" if k == "add" else "- additive mask"))
    return out


def _cast_rule(gm, n: Node) -> list[Step]:
    """``s.float()``, ``s.to(dtype)``: scores upcast before the softmax (Llama's reference code)."""
    v = val(n)
    if kind(n) != "cast" or v is None or not v.is_floating_point() or not isinstance(n.args[0], Node):
        return []
    return [Step(n, "cast", 0, "cast")]


def _view_rule(gm, n: Node) -> list[Step]:
    """``s.view(B, H, L, S)`` after a ``bmm``/``baddbmm`` on (B*H, L, S): a reshape of the batch dimensions only."""
    src = n.args[0] if n.args else None
    if kind(n) != "view" or not isinstance(src, Node) or shape(src) is None or shape(n) is None:
        return []
    return [Step(n, "view", 0, "reshape")] if shape(src)[-2:] == shape(n)[-2:] else []


# Each rule reads one op of the score chain and says what it does to the scores (tinygrad's (pattern, rewrite)
# lists, read backwards).  Order matters only for speed; an op matches at most the rules of its kind.
SCORE_RULES: tuple[Callable[..., list[Step]], ...] = (
    _scale_rule, _additive_rule, _masked_fill_rule, _where_rule, _cast_rule, _view_rule)


def _root(n: Node) -> bool:
    return kind(n) in ("matmul", "baddbmm") and len(shape(n) or ()) >= 3


def _walk_chain(gm, n: Node, budget: int) -> tuple[Node, list[Step]] | None:
    """From the softmax's input back to QK^T: (the GEMM, the steps in forward order), or None."""
    if _root(n):
        return n, []
    if budget == 0:
        return None
    for rule in SCORE_RULES:
        for step in rule(gm, n):
            found = _walk_chain(gm, step.node.args[step.chain], budget - 1)
            if found is not None:
                return found[0], found[1] + [step]
    return None


# -- around the GEMMs: scales on q and K, K's transpose, GQA's repeat_kv ----------------------------------------

def _unscale(gm, n, absorb) -> tuple[Node, float, list[Node]]:
    """Constant factors applied to an operand before the GEMM (``q * d**-0.25``), taken off while ``absorb``."""
    factor, taken = 1.0, []
    while isinstance(n, Node) and absorb(n):
        steps = [s for s in _scale_rule(gm, n) if s.factor == s.factor]  # not NaN: a constant factor
        if not steps:
            break
        factor *= steps[0].factor
        taken.append(n)
        n = n.args[steps[0].chain]
    return n, factor, taken


def _full_slice(n: Node) -> bool:
    """``x[:, :]``-style slices that export records and that change nothing."""
    src = shape(n.args[0]) if n.args and isinstance(n.args[0], Node) else None
    return kind(n) == "slice" and src is not None and shape(n) == src


def _past_full_slices(x: Node, ops: list[Node]) -> Node:
    """``x``, or what the full slices above it read (each appended to ``ops``)."""
    while kind(x) == "slice" and _full_slice(x):
        ops.append(x)
        x = x.args[0]
    return x


def repeat_source(n: Node) -> tuple[Node, int, list[Node]] | None:
    """GQA's repeat_kv: (K with its own heads, the repeat count, the ops) for
    ``k[:, :, None].expand(B, Hkv, n, S, D).reshape(B, Hkv * n, S, D)`` or ``repeat_interleave(k, n, dim=1)``."""
    if kind(n) == "repeat_interleave" and len(shape(n) or ()) == 4 and arg(n, 2, "dim") in (1, -3):
        reps = arg(n, 1, "repeats")
        return (n.args[0], reps, [n]) if isinstance(reps, int) else None
    if kind(n) != "view" or len(shape(n) or ()) != 4:
        return None
    ops, x = [n], n.args[0]
    if kind(x) != "expand" or len(shape(x) or ()) != 5:
        return None
    ops.append(x)
    x = _past_full_slices(x.args[0], ops)
    if kind(x) != "unsqueeze" or arg(x, 1, "dim") not in (2, -3):
        return None
    ops.append(x)
    src = _past_full_slices(x.args[0], ops)
    B, Hkv, reps, S, D = shape(n.args[0])
    return (src, reps, ops) if shape(src) == (B, Hkv, S, D) and shape(n) == (B, Hkv * reps, S, D) else None


def _gqa(r: Reading, absorb) -> None:
    """Absorb repeat_kv of K and V into the site when SDPA can repeat heads itself and nothing else reads the
    repeated tensors; otherwise SDPA takes the repeated K and V as they are."""
    if not HAS_GQA or r.k is None or r.v is None or r.pv is None:
        return
    rk, rv = repeat_source(r.k), repeat_source(r.v)
    if rk is None or rv is None or rk[1] != rv[1] or rk[1] <= 1 or shape(r.q) is None or len(shape(r.q)) != 4:
        return
    if not all(absorb(n) for n in rk[2] + rv[2]):
        return
    r.k, r.v, r.gqa = rk[0], rv[0], rk[1]
    r.nodes += rk[2] + rv[2]
    r.idioms.append(f"K/V heads repeated x{rk[1]} (GQA)")


def _users(n: Node) -> list[Node]:
    return [u for u in n.users if kind(u) not in ASSERT_OPS and u.op == "call_function"]


def _walk_probs(r: Reading, absorb) -> None:
    """Forward from the softmax: casts, eval or active dropout, batch reshapes, then ``probs @ V``."""
    p = r.softmax
    for _ in range(MAX_PROBS + 1):
        users = _users(p)
        pv = [u for u in users if kind(u) == "matmul" and u.args[0] is p and isinstance(u.args[1], Node)]
        if pv:
            r.pv, r.v = pv[0], pv[0].args[1]
            return
        nxt = [u for u in users if kind(u) in ("cast", "dropout") or (kind(u) == "view" and _view_rule(None, u))]
        if len(users) != 1 or not nxt or not absorb(nxt[0]):
            return
        p = nxt[0]
        if kind(p) == "dropout":
            r.dropout = p
            if isinstance(p.meta.get("val"), (tuple, list)):  # native_dropout: (out, mask)
                outs = [u for u in p.users if u.args[1] == 0]
                if not outs:
                    return
                r.probs.append(p)
                p = outs[0]
        r.probs.append(p)


def read_attention(gm, softmax: Node, absorb: Callable[[Node], bool] | None = None) -> Reading:
    """The attention around ``softmax``.  ``absorb(node)`` says whether an op on q, K or V (a scale, a transpose,
    repeat_kv) or after the softmax may join the site: when matching, while nothing else reads it; when rewriting,
    when it is in the group.  Raises :class:`NotAttention`."""
    absorb = absorb or (lambda n: len(_users(n)) == 1)
    out_shape = shape(softmax)
    dim = arg(softmax, 1, "dim")
    rank = len(out_shape or ())
    if rank < 3 or not isinstance(dim, int) or dim % rank != rank - 1:
        raise NotAttention("the softmax is not over the last dimension of a batch of score matrices")
    found = _walk_chain(gm, softmax.args[0], MAX_CHAIN)
    if found is None:
        raise NotAttention("no QK^T reached from the softmax through scales, masks and casts")
    qk, steps = found
    if kind(qk) == "baddbmm":
        q, kt, base = qk.args[1], qk.args[2], qk.args[0]
        beta, alpha = scalar(arg(qk, 3, "beta", 1)), scalar(arg(qk, 4, "alpha", 1))
        if beta is None or alpha is None:
            raise NotAttention("baddbmm's beta or alpha is not a number")
    else:
        q, kt, base, beta, alpha = qk.args[0], qk.args[1], None, 0.0, 1.0
    if not isinstance(q, Node) or not isinstance(kt, Node):
        raise NotAttention("QK^T's operands are not tensors")
    r = Reading(softmax, qk, q, kt, None, steps, idioms=[s.idiom for s in steps])
    r.nodes = [softmax, qk] + [s.node for s in steps]
    if base is not None and beta != 0.0:
        r.root_mask, r.root_beta = base, beta
        r.idioms.insert(0, "baddbmm(mask)")
    r.pre_scale = alpha
    r.q, fq, taken_q = _unscale(gm, q, absorb)
    kt, fk, taken_k = _unscale(gm, kt, absorb)
    if swaps_last_two(kt) and absorb(kt):
        r.nodes.append(kt)
        r.k, fk2, taken_k2 = _unscale(gm, kt.args[0], absorb)
        fk, taken_k = fk * fk2, taken_k + taken_k2
    r.kt = kt
    r.pre_scale *= fq * fk
    r.nodes += taken_q + taken_k
    if taken_q or taken_k:
        r.idioms.insert(0, "q, k scaled" if taken_q and taken_k else ("q scaled" if taken_q else "k scaled"))
    _walk_probs(r, absorb)
    r.nodes += r.probs + ([r.pv] if r.pv is not None else [])
    _gqa(r, absorb)
    if any(s.factor != s.factor for s in steps):
        r.reasons.append("the scores are scaled by a run-time tensor: SDPA's scale must be a number")
    if r.scale <= 0:
        r.reasons.append(f"the scores are scaled by {r.scale:g}: SDPA's masks assume a positive scale")
    if r.dropout is not None and r.dropout.args[1] != 0 and arg(r.dropout, 2, "train", True):
        r.reasons.append(f"dropout {r.dropout.name} is active (training mode): its random mask cannot be reproduced "
                         "by a fused kernel's own dropout")
    return r
