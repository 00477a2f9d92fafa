"""Attention: a hand-written QK^T -> scale -> mask -> softmax -> PV becomes one SDPA; QK^T -> scale becomes baddbmm.

Both rules read the group the way the matcher read the site (:func:`fxfusion.fusions.attention.reading.read_attention`,
restricted to the group's nodes) and trace the fused computation of :mod:`fxfusion.fusions.attention.fused` in:

  * ``sdpa``: ``scale`` is the product of every constant factor (on the scores, on q, on K, baddbmm's alpha); the
    mask is the form :func:`fxfusion.fusions.attention.masks.mask_plan` proves -- ``is_causal=True`` for a constant
    causal mask, a boolean mask for one -inf fill, else the additive mask the score chain makes at QK^T = 0; GQA's
    repeat_kv in the group becomes ``enable_gqa``; casts around the softmax (float32 softmax, cast back) and eval-mode
    dropout go: SDPA accumulates in float32 itself, and the verification checks the result against float64;
  * ``baddbmm_scale``: unmasked scores only; the scale folded into the GEMM.
"""

from __future__ import annotations

from torch import fx

from fxfusion.fusions.attention.fused import attend, rebatch, scaled_scores, to_batch
from fxfusion.fusions.attention.masks import MaskPlan, mask_plan
from fxfusion.fusions.attention.reading import MASK_NODE_BUDGET, NotAttention, Reading, read_attention
from fxfusion.graph.edit import NotApplicable, constant, constant_value, emit_traced, value_of
from fxfusion.graph.nodes import kind, shape


def _read_group(gm, nodes: list[fx.Node]) -> Reading:
    inside = set(nodes)
    softmax = next((n for n in nodes if kind(n) == "softmax"), None)
    if softmax is None:
        raise NotApplicable("the group has no softmax")
    try:
        r = read_attention(gm, softmax, absorb=inside.__contains__)
    except NotAttention as exc:
        raise NotApplicable(str(exc)) from None
    outside = [n.name for n in r.nodes if n not in inside]
    if outside:
        raise NotApplicable(f"the attention read from the softmax takes {', '.join(outside)}, outside the group")
    if r.reasons:
        raise NotApplicable(r.reasons[0])
    return r


def _with_values(gm, nodes: list[fx.Node], like: fx.Node) -> None:
    """Give constants read through get_attr a recorded value (fake, like the graph's), so they can be traced with."""
    mode = getattr(value_of(like), "fake_mode", None)
    for n in nodes:
        if value_of(n) is None and n.op == "get_attr":
            t = constant(gm, n, "mask")
            n.meta["val"] = mode.from_tensor(t) if mode is not None else t


def _sdpa_fn(r: Reading, plan: MaskPlan, k_given: bool):
    """The traced computation: the inputs brought to PV's batch dimensions, the mask built, one SDPA."""
    batch, soft = shape(r.pv)[:-2], shape(r.softmax)
    causal, gqa, scale = plan.form == "causal", r.gqa > 1, r.scale

    def fn(q, k, v, *mask_inputs):
        k = k if k_given else k.transpose(-2, -1)
        if not gqa:
            q, k, v = to_batch(q, batch), to_batch(k, batch), to_batch(v, batch)
        mask = None
        if plan.form in ("keep", "additive"):
            mask = plan.build(*mask_inputs) if plan.build is not None else mask_inputs[0]
            if tuple(soft[:-2]) != tuple(batch):  # the probabilities reshaped between the softmax and PV
                mask = rebatch(mask, soft[:-2], batch)
        return attend(q, k, v, mask, scale=scale, causal=causal, gqa=gqa)

    return fn


# The matcher decides a site as one of these only when it proved the mask causal on the whole captured graph.  A
# region cut out of that graph (in-model timing, planning/insitu.py) gets the mask as an input it cannot evaluate;
# the pattern carries the proof there, so the region is timed with the SDPA that the applied model runs.
PROVED_CAUSAL = ("causal_attention", "gqa_attention")


def _plan(gm, r: Reading, group) -> MaskPlan:
    plan = mask_plan(gm, r)
    if (plan.form in ("keep", "additive") and getattr(group, "pattern", None) in PROVED_CAUSAL
            and any(constant_value(gm, n, MASK_NODE_BUDGET) is None for n in plan.inputs)):
        return MaskPlan("causal", note="proved causal when the site was matched")
    return plan


def rewrite_sdpa(gm, nodes, group):
    r = _read_group(gm, nodes)
    if r.pv is None:
        raise NotApplicable("no probabilities @ V matmul in the site")
    plan = _plan(gm, r, group)
    inputs = [r.q, r.k if r.k is not None else r.kt, r.v] + (plan.inputs if plan.form in ("keep", "additive") else [])
    _with_values(gm, inputs, r.q)
    y = emit_traced(gm.graph, _sdpa_fn(r, plan, r.k is not None), inputs, before=r.pv, pre_dispatch=True)
    if shape(y) != shape(r.pv):
        raise NotApplicable(f"SDPA would return {shape(y)} where the site returns {shape(r.pv)}")
    return r.pv, y


def rewrite_baddbmm_scale(gm, nodes, group):
    r = _read_group(gm, nodes)
    if r.masks or r.root_mask is not None:
        raise NotApplicable("a masked site is rewritten only as a whole attention (SDPA)")
    if any(s.role != "scale" for s in r.steps) or kind(r.qk) == "baddbmm":
        raise NotApplicable("casts or reshapes between QK^T and the softmax: only a scale folds into the GEMM")
    if r.scale == 1.0:
        raise NotApplicable("the scores are not scaled: nothing for alpha to fold")
    qs, ks = shape(r.q), shape(r.kt)
    if qs is None or ks is None or qs[:-2] != ks[:-2]:
        raise NotApplicable("q and K^T must have the same batch dimensions for one baddbmm")
    scores = r.softmax.args[0]
    scale = r.scale
    y = emit_traced(gm.graph, lambda q, kt: scaled_scores(q, kt, scale), [r.q, r.kt], before=scores, pre_dispatch=True)
    return scores, y
