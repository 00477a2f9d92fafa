"""A causal mask proved at every shape of a range: what lets a symbolic graph's hand-written attention become SDPA's
``is_causal`` (:mod:`fxfusion.planning.dynamic`, step 4).

In a graph captured at one shape the mask is a constant, and :func:`fxfusion.fusions.attention.masks.is_causal`
evaluates it once.  Captured with a symbolic sequence length it is computed from the length (``arange(seq)``,
comparisons, expands): :func:`prove_causal` reads the site's mask as the rewrite would (``mask_plan``: a boolean keep
mask, or the additive mask the score chain makes at QK^T = 0), evaluates it from the graph at every shape of the range
(:func:`fxfusion.graph.symbolic.size_only_value`: constants and sizes only -- a mask that reads an input's values, a
padding mask, is not proved) and compares it with the upper triangle at each.  Every shape means every size of each
range with the others at their smallest, and every range at its largest; a range whose masks would take more than
:data:`PROOF_ELEMENTS` elements in all is refused rather than sampled.  Sites that read one mask (every layer of a
decoder) share one proof.  Cost: one evaluation of the mask's subgraph per shape (GPT-2 tiny at batch=1:32,
seq=16:512: 5.5 s on one loaded CPU core, 2026-12-07).
"""

from __future__ import annotations

import weakref

import torch

from fxfusion.fusions.attention.masks import DROPPED, mask_plan
from fxfusion.fusions.attention.reading import NotAttention, read_attention
from fxfusion.graph.capture import signature_tensors
from fxfusion.graph.nodes import kind
from fxfusion.graph.sites import CapturedModel, Site
from fxfusion.graph.symbolic import DynamicDims, SymbolicGraph, size_only_value, sizes_text

# Mask elements evaluated in all to prove a mask causal at every length (the sum of L * S over the lengths): about
# seq=1:900 of one mask.  A longer range is refused with that reason rather than proved at a sample of its lengths.
PROOF_ELEMENTS = 2 ** 28


def _assignments(dims: DynamicDims) -> list[dict[str, int]]:
    """Every size of each range with the others at their smallest, then every range at its largest."""
    out = []
    for r in dims.ranges:
        for v in range(r.lo, r.hi + 1):
            out.append({q.name: (v if q is r else q.lo) for q in dims.ranges})
    out.append({q.name: q.hi for q in dims.ranges})
    return out


def prove_causal(captured: CapturedModel, site: Site) -> str | None:
    """None when the site's mask drops exactly the scores above the diagonal at every shape of the range (module
    doc), else why it is not proved."""
    gm = captured.graphs[site.graph_index]
    nodes = {n.name: n for n in gm.graph.nodes}
    inside = {nodes[n] for n in site.nodes if n in nodes}
    softmax = next((n for n in inside if kind(n) == "softmax"), None)
    try:
        r = read_attention(gm, softmax, absorb=inside.__contains__)
    except (NotAttention, AttributeError) as exc:
        return f"its attention could not be read again ({exc})"
    if any(s.role == "view" for s in r.steps):
        return "a reshape between the scores and the mask: the mask is not proved at other lengths"
    plan = mask_plan(gm, r)
    if plan.form not in ("keep", "additive"):
        return f"its mask is {plan.form} in the symbolic graph"
    # Sites reading one mask at one (L, S) (every layer of a decoder) share the proof: the mask's nodes, how it is
    # built from them (as is, negated, or through this site's score chain), the scores' symbolic shape
    built = "as is" if plan.build is None else "negated" if plan.form == "keep" else tuple(s.node.name for s in r.steps)
    key = (plan.form, tuple(n.name for n in plan.inputs), built, captured.dynamic.shapes.get(r.qk.name, ())[-2:])
    proofs = _PROOFS.setdefault(gm.graph, {})
    if key not in proofs:
        proofs[key] = _prove(captured, site, r, plan)
    return proofs[key]


_PROOFS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {a mask: why not causal, or None}


def _prove(captured: CapturedModel, site: Site, r, plan) -> str | None:
    symbolic: SymbolicGraph = captured.dynamic
    gm = captured.graphs[site.graph_index]
    program = captured.programs[site.graph_index]
    constants = signature_tensors(program) if program is not None else {}
    shapes = _assignments(symbolic.dims)
    cost = sum(_elements(symbolic, r.qk.name, s) for s in shapes)
    if cost > PROOF_ELEMENTS:
        return (f"proving the mask causal at every shape of the range takes {cost:.3g} mask elements (at most "
                f"{PROOF_ELEMENTS:.3g}): declare a shorter range")
    for sizes in shapes:
        values = [size_only_value(gm, n, symbolic, sizes, constants) for n in plan.inputs]
        if any(v is None for v in values):
            return "its mask reads the inputs' values, not only their sizes: it is not causal at every input"
        with torch.no_grad():
            m = plan.build(*values) if plan.build is not None else values[0]
            dropped = ~m if plan.form == "keep" else m <= DROPPED
            if plan.form == "additive" and not bool((m[~dropped] == 0).all()):
                return f"at {sizes_text(sizes)} its mask shifts a kept score"
        L, S = (symbolic.shape_at(r.qk.name, sizes) or (None, None))[-2:]
        try:
            full = torch.broadcast_to(dropped, (*dropped.shape[:-2], L, S))
            ok = bool(torch.equal(full, torch.ones(L, S, dtype=torch.bool).triu(1).expand_as(full)))
        except (RuntimeError, TypeError):
            ok = False
        if not ok:
            return f"at {sizes_text(sizes)} its mask is not causal"
    return None


def _elements(symbolic: SymbolicGraph, node: str, sizes: dict[str, int]) -> int:
    shape = symbolic.shape_at(node, sizes) or (1, 1)
    return int(shape[-1]) * int(shape[-2]) if len(shape) >= 2 else 1
