"""Attention: SDPA already fused, and hand-written attention in the idioms of :mod:`.reading`, with the pattern that
measures what it costs.

Which pattern a hand-written site is decided as (the mask form is :func:`fxfusion.fusions.attention.masks.mask_plan`'s):
  no ``@ V``                    -> qk_softmax
  no mask                       -> full_attention
  a provably causal mask        -> causal_attention, or gqa_attention when repeat_kv is in the site
  any other mask                -> masked_attention (boolean or additive; padding, or causal and padding)
"""

from __future__ import annotations

from torch.fx import Node

from fxfusion.fusions.attention.masks import mask_plan
from fxfusion.fusions.attention.reading import NotAttention, Reading, read_attention, repeat_source
from fxfusion.fusions.base import Candidate, Context, add_role
from fxfusion.graph.capture import module_path
from fxfusion.graph.nodes import arg, dtype_name, kind, node_name, shape, tensor_value, val
from fxfusion.graph.sites import ALREADY_FUSED


def match_sdpa(ctx: Context, node: Node) -> Candidate | None:
    """Already fused: one SDPA call (written directly, or inside nn.MultiheadAttention)."""
    q, k, v = node.args[0], node.args[1], node.args[2]
    qs, ks = shape(q), shape(k)
    out = tensor_value(node)
    if qs is None or ks is None or len(qs) < 3:
        return None
    B, H = (qs[0], qs[1]) if len(qs) == 4 else (qs[0], 1)
    roles = {"q": q.name, "k": k.name, "v": v.name, "sdpa": node.name, "output": out.name}
    add_role(roles, "mask", arg(node, 3, "attn_mask"))
    causal = bool(arg(node, 5, "is_causal", False))
    path, cls = module_path(node)
    how = "nn.MultiheadAttention (SDPA)" if cls == "MultiheadAttention" else "F.scaled_dot_product_attention"
    S = qs[-2] if qs[-2] == ks[-2] else round((qs[-2] * ks[-2]) ** 0.5)
    return Candidate("sdpa", [node] + ([out] if out is not node else []), out,
                     {"B": B, "H": H, "S": S, "D": qs[-1]}, dtype_name(out) or "float32", roles,
                     how + (", causal" if causal else ""), status=ALREADY_FUSED)


def _written_as(r: Reading) -> str:
    pre = [i for i in r.idioms if i in ("q scaled", "k scaled", "q, k scaled")]
    gemm = "baddbmm(mask) QK^T" if r.root_mask is not None else ("baddbmm QK^T" if kind(r.qk) == "baddbmm" else "QK^T")
    chain = [s.idiom for s in r.steps if s.role in ("scale", "mask")]
    upcast = val(r.softmax).dtype != val(r.q).dtype
    after = ["softmax" + (f" ({str(val(r.softmax).dtype)[6:]})" if upcast else "")]
    after += (["dropout"] if r.dropout is not None else []) + (["@ V"] if r.pv is not None else [])
    gqa = [i for i in r.idioms if "GQA" in i]
    return "hand-written attention: " + ", ".join(pre + [" ".join([gemm] + chain[:1])] + chain[1:] + after + gqa)


def _roles(r: Reading, form: str) -> dict[str, str]:
    k = r.k if r.k is not None else r.kt
    roles = {"softmax": r.softmax.name, "qk": r.qk.name, "q": node_name(r.q), "k": node_name(k),
             "scale_value": f"{r.scale:.6g}", "output": r.output.name}
    scales = [s for s in r.steps if s.role == "scale"]
    if scales:
        roles["scale"], roles["scale_op"] = scales[0].node.name, kind(scales[0].node)
    masks = r.masks
    if masks or r.root_mask is not None:
        kinds = (["baddbmm"] if r.root_mask is not None else []) + [
            "additive" if kind(m.node) in ("add", "sub") else kind(m.node) for m in masks]
        roles["mask_kind"], roles["mask_form"] = "+".join(dict.fromkeys(kinds)), form
        roles["mask_op"] = masks[0].node.name if masks else r.qk.name
        first = r.root_mask if r.root_mask is not None else next(
            a for i, a in enumerate(masks[0].node.args) if i != masks[0].chain and isinstance(a, Node))
        add_role(roles, "mask", first)
    if r.dropout is not None:
        roles["dropout"] = r.dropout.name
    if r.pv is not None:
        roles.update({"pv": r.pv.name, "v": node_name(r.v)})
    if r.gqa > 1:
        roles["gqa"] = str(r.gqa)
    return roles


def _notes(r: Reading, pattern: str, form: str, note: str) -> list[str]:
    notes = []
    Sq, Sk = shape(r.softmax)[-2:]
    if Sq != Sk:
        notes.append(f"queries ({Sq}) and keys ({Sk}) differ in length: decided at S={round((Sq * Sk) ** 0.5)}, "
                     "which keeps the score matrix's size")
    if r.scale == 1.0 and not any(s.role == "scale" for s in r.steps):
        notes.append("no scale between QK^T and softmax (scaled elsewhere, or not at all); SDPA takes scale=1 then")
    if val(r.softmax).dtype != val(r.q).dtype:
        notes.append(f"the softmax runs in {str(val(r.softmax).dtype)[6:]} and is cast back: SDPA accumulates in "
                     "float32 itself")
    if note:
        notes.append(note)
    elif form == "keep":
        notes.append("a boolean mask not provably causal (a run-time value): SDPA takes it as attn_mask")
    elif form == "additive":
        notes.append("SDPA takes the additive mask the score chain makes at QK^T = 0 as attn_mask")
    if r.gqa > 1:
        notes.append(f"repeat_kv is in the site: SDPA repeats the {shape(r.k)[-3]} K/V heads x{r.gqa} itself "
                     "(enable_gqa)" + ("" if pattern == "gqa_attention" else f", decided as {pattern}"))
    elif r.k is not None and r.v is not None and repeat_source(r.k) is not None:
        notes.append("K and V are repeated for GQA outside the site (read elsewhere, or this torch's SDPA has no "
                     "enable_gqa): SDPA takes the repeated K and V")
    if pattern == "qk_softmax" and (r.masks or r.root_mask is not None):
        notes.append("the mask is part of the site; the qk_softmax pattern measures the unmasked chain")
    return notes


def match_attention(ctx: Context, softmax: Node) -> Candidate | None:
    """softmax(scale(QK^T) [+ masks]) [cast, dropout] @ V, written by hand in any idiom of :data:`SCORE_RULES`."""
    gm = ctx.graph.gm
    try:
        r = read_attention(gm, softmax)
    except NotAttention:
        return None
    qs, ks = shape(r.q), shape(r.k if r.k is not None else r.kt)
    if qs is None or ks is None or len(qs) not in (3, 4):
        return None
    plan = mask_plan(gm, r)
    if r.pv is None:
        pattern = "qk_softmax"
    elif plan.form == "none":
        pattern = "full_attention"
    elif plan.form == "causal":
        pattern = "gqa_attention" if r.gqa > 1 else "causal_attention"
    else:
        pattern = "masked_attention"
    Sq, Sk = shape(r.softmax)[-2:]
    B, H = (qs[0], qs[1]) if len(qs) == 4 else (qs[0], 1)
    site_shape = {"B": B, "H": H, "S": Sq if Sq == Sk else round((Sq * Sk) ** 0.5), "D": qs[-1]}
    if pattern == "gqa_attention":
        site_shape = {"B": B, "H": H, "KV": H // r.gqa, "S": site_shape["S"], "D": qs[-1]}
    k_in = r.k if r.k is not None else r.kt
    return Candidate(pattern, list(dict.fromkeys(r.nodes)), r.output, site_shape, dtype_name(r.output) or "float32",
                     _roles(r, plan.form), _written_as(r), reasons=list(r.reasons),
                     notes=_notes(r, pattern, plan.form, plan.note),
                     boundary=[r.q, k_in] + ([r.v] if r.v is not None else []))
