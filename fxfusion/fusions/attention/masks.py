"""The mask SDPA takes for a hand-written attention: none, ``is_causal``, a boolean mask, or an additive one.

However a mask is written -- ``masked_fill``, ``torch.where``, ``scores + mask``, ``baddbmm``'s input, several of
them, with scales before and after -- the logits softmax reads are ``scale * QK^T + M`` where M is the score chain
evaluated at QK^T = 0: the chain is affine in the scores (a scale multiplies them by a constant, an add shifts them,
a fill replaces them by a constant), so replaying it on zeros gives M exactly where a score is kept, and the fill
value (-inf, ``finfo.min``) where it is dropped -- which drops it from the softmax as the original does.

Which form SDPA gets (:func:`mask_plan`):
  * ``causal``: M is a constant (every input evaluates ahead of time) that is 0 on and below the diagonal and drops
    every score above it: SDPA's ``is_causal=True`` (the flash kernels' fast path), no mask tensor at all;
  * ``keep``: one ``masked_fill``/``where`` with -inf: SDPA's boolean mask (True keeps), one byte per score;
  * ``additive``: anything else, M in q's dtype (a finite fill such as ``finfo.min`` stays finite, so a row whose
    scores are all dropped still gets the original's uniform probabilities, not NaN).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.fx import Node

from fxfusion.fusions.attention.fused import rebatch
from fxfusion.fusions.attention.reading import MASK_NODE_BUDGET, Reading, Step
from fxfusion.graph.edit import constant_value
from fxfusion.graph.nodes import kind, shape, val

# A mask value at or below this drops the score: exp(-1e4) is 0 in every floating dtype (float64's smallest
# positive number is exp(-745)), so no score can come back unless the scores themselves differ by 1e4.
DROPPED = -1e4


@dataclass
class MaskPlan:
    form: str  # "none" | "causal" | "keep" | "additive"
    inputs: list[Node] = field(default_factory=list)  # the graph values the mask is built from
    build: Callable[..., torch.Tensor] | None = None  # build(*inputs) -> the mask SDPA takes (traced into graphs);
    # None with one input: that input is the mask as it is
    note: str = ""


def _chain_inputs(r: Reading, steps: list[Step]) -> list[Node]:
    found: list[Node] = [r.root_mask] if r.root_mask is not None else []
    for s in steps:
        if s.role in ("mask", "scale"):
            for i, a in enumerate(s.node.args):
                if i != s.chain and isinstance(a, Node) and a not in found:
                    found.append(a)
    return found


def _replay(step: Step, x: torch.Tensor, env: dict) -> torch.Tensor:
    """One step of the score chain applied to the mask so far (``x`` broadcasts where the scores are full-size)."""
    n, op = step.node, kind(step.node)
    if step.role == "cast":
        return x if x.dtype == val(n).dtype else x.to(val(n).dtype)
    if step.role == "view":
        return rebatch(x, shape(n.args[0])[:-2], shape(n)[:-2])
    other = [env.get(a, a) for i, a in enumerate(n.args) if i != step.chain]
    if op == "mul":
        return x * other[0]
    if op == "div":
        return x / other[0]
    if op == "masked_fill":  # where() broadcasts x up to the mask's shape; masked_fill would not
        return torch.where(other[0], other[1], x)
    if op == "where":
        cond, fill = other
        return torch.where(cond, fill, x) if step.drops_where_true else torch.where(cond, x, fill)
    return x + other[0] if op == "add" else x - other[0]


def scores_at_zero(r: Reading) -> tuple[list[Node], Callable[..., torch.Tensor]] | None:
    """(inputs, fn): ``fn(*inputs)`` is M, the score chain at QK^T = 0, in q's dtype; None when nothing masks."""
    first = next((i for i, s in enumerate(r.steps) if s.role == "mask"), None)
    if first is None and r.root_mask is None:
        return None
    steps = r.steps[first:] if r.root_mask is None else r.steps
    inputs = _chain_inputs(r, steps)
    start = val(steps[0].node.args[steps[0].chain]) if steps else val(r.qk)
    q_dtype, root_mask, beta = val(r.q).dtype, r.root_mask, r.root_beta

    def fn(*tensors):
        env = dict(zip(inputs, tensors))
        if root_mask is not None:  # baddbmm: beta * input + alpha * q @ k^T
            x = env[root_mask] if beta == 1.0 else env[root_mask] * beta
        else:  # scales before the first mask scale zeros: they are left out.  (1, 1) grows to the masks' shape
            x = torch.zeros(1, 1, dtype=start.dtype, device=start.device)  # only: (B, 1, 1, S) stays that small
        for step in steps:
            x = _replay(step, x, env)
        return x if x.dtype == q_dtype else x.to(q_dtype)

    return inputs, fn


def _keep(r: Reading) -> tuple[Node, bool] | None:
    """(condition, negate) when the only mask is one -inf fill: SDPA's boolean mask is the condition's complement
    (``masked_fill(m, -inf)``: keep ~m; ``where(keep, s, -inf)``: keep)."""
    masks = r.masks
    if r.root_mask is not None or len(masks) != 1 or masks[0].fill != -math.inf:
        return None
    m = masks[0]
    cond = m.node.args[1] if kind(m.node) == "masked_fill" else m.node.args[0]
    return (cond, m.drops_where_true) if isinstance(cond, Node) and val(cond).dtype == torch.bool else None


_CAUSAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {mask nodes: verdict}


def _dropped_pattern(gm, r: Reading, inputs: list[Node], keep, fn) -> torch.Tensor | None:
    """The constant boolean 'dropped' matrix of the mask, or None when the mask is not a constant of the graph (or
    keeps some score with a nonzero shift)."""
    consts = [constant_value(gm, n, MASK_NODE_BUDGET) for n in inputs]
    if any(c is None for c in consts):
        return None
    with torch.no_grad():
        if keep is not None:
            return consts[0] if keep[1] else ~consts[0]
        m = fn(*consts) if fn is not None else consts[0]
    dropped = m <= DROPPED
    return dropped if bool((m[~dropped] == 0).all()) else None


def is_causal(gm, r: Reading, plan: MaskPlan) -> bool:
    """Whether the mask drops exactly the scores above the diagonal of every (L, S) matrix (SDPA's is_causal:
    query i sees keys 0..i, aligned top-left), proved by evaluating it."""
    cache = _CAUSAL_CACHE.setdefault(gm.graph, {})
    key = (tuple(n.name for n in plan.inputs), tuple(s.node.name for s in r.steps), r.qk.name)
    if key not in cache:
        dropped = _dropped_pattern(gm, r, plan.inputs, _keep(r), plan.build)
        L, S = shape(r.qk)[-2:]
        ok = False
        if dropped is not None and dropped.dtype == torch.bool and dropped.dim() >= 2:
            try:
                full = torch.broadcast_to(dropped, (*dropped.shape[:-2], L, S))
                ok = bool(torch.equal(full, torch.ones(L, S, dtype=torch.bool, device=full.device).triu(1)
                                      .expand_as(full)))
            except RuntimeError:  # a mask that does not broadcast to (L, S)
                ok = False
        cache[key] = ok
    return cache[key]


def mask_plan(gm, r: Reading) -> MaskPlan:
    """How SDPA gets this attention's mask (see the module doc)."""
    replay = scores_at_zero(r)
    if replay is None:
        return MaskPlan("none")
    inputs, fn = replay
    keep = _keep(r)
    plan = MaskPlan("keep", [keep[0]], (lambda c: c.logical_not()) if keep[1] else None) if keep else \
        MaskPlan("additive", inputs, fn)
    if is_causal(gm, r, plan):
        return MaskPlan("causal", note="the mask is a constant that drops exactly the scores above the diagonal: "
                                       "SDPA's is_causal")
    if keep is None and len(inputs) == 1 and _is_the_mask(r, inputs[0]):
        plan.build = None  # the mask tensor itself is already M in q's dtype: SDPA reads it as is
    return plan


def _is_the_mask(r: Reading, m: Node) -> bool:
    """True when M is the one additive mask input unchanged: ``scores * c + m`` (HF) with m in q's dtype -- nothing
    to build."""
    masks = r.masks
    if r.root_mask is not None or len(masks) != 1 or kind(masks[0].node) != "add":
        return False
    after = r.steps[r.steps.index(masks[0]) + 1:]
    mv = val(m)
    return all(s.role == "cast" and val(s.node).dtype == val(r.q).dtype for s in after) and mv.dtype == val(r.q).dtype
