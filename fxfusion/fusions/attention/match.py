"""Attention: SDPA already fused, and softmax(scale(QK^T) [+ mask]) [dropout] @ V written by hand."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.graph.capture import module_path
from fxfusion.fusions.base import Candidate, Context, add_role
from fxfusion.graph.nodes import arg, dtype_name, is_scalar, kind, node_name, shape, swaps_last_two, tensor_value
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


def _scores_operand(node: Node) -> tuple[Node, Node] | None:
    """For an additive mask ``scores + mask``: (scores, mask), the scores being the full-shaped GEMM side."""
    a, b = node.args[0], node.args[1]
    if not (isinstance(a, Node) and isinstance(b, Node)):
        return None
    feeds = ("div", "mul", "matmul", "cast")
    if kind(a) in feeds and shape(a) == shape(node):
        return a, b
    if kind(b) in feeds and shape(b) == shape(node):
        return b, a
    return None


def match_attention(ctx: Context, softmax: Node) -> Candidate | None:
    """softmax(scale(QK^T) [+ mask]) [dropout] @ V, written by hand; the softmax dim must be the last."""
    out_shape = shape(softmax)
    if out_shape is None or len(out_shape) < 3 or arg(softmax, 1, "dim") not in (-1, len(out_shape) - 1):
        return None
    nodes, roles, how = [softmax], {"softmax": softmax.name}, []
    cur, scale, mask = softmax.args[0], None, None
    for _ in range(5):  # back from softmax to QK^T: at most a cast, a mask and a scale, in either order
        k = kind(cur)
        if k == "matmul":
            break
        if k == "cast" and len(cur.users) >= 1:
            nodes.append(cur)
            cur = cur.args[0]
        elif k in ("div", "mul") and scale is None and is_scalar(cur.args[1]) and isinstance(cur.args[0], Node):
            scale = cur
            nodes.append(cur)
            roles["scale"], roles["scale_op"] = cur.name, k
            roles["scale_value"] = str(cur.args[1].name if isinstance(cur.args[1], Node) else cur.args[1])
            how.append("/ scale" if k == "div" else "* scale")
            cur = cur.args[0]
        elif k == "add" and mask is None and (pair := _scores_operand(cur)):
            mask = cur
            nodes.append(cur)
            roles["mask_op"], roles["mask_kind"] = cur.name, "additive"
            add_role(roles, "mask", pair[1])
            how.append("+ additive mask")
            cur = pair[0]
        elif k == "masked_fill" and mask is None and isinstance(cur.args[0], Node):
            mask = cur
            nodes.append(cur)
            roles["mask_op"], roles["mask_kind"] = cur.name, "masked_fill"
            add_role(roles, "mask", cur.args[1])
            roles["mask_fill"] = str(cur.args[2])
            how.append("masked_fill")
            cur = cur.args[0]
        else:
            return None
    else:
        return None
    qk = cur
    if kind(qk) != "matmul":
        return None
    q, kt = qk.args[0], qk.args[1]
    qs, kts = shape(q), shape(kt)
    if qs is None or kts is None or len(qs) not in (3, 4) or len(kts) != len(qs):
        return None
    k_node = kt
    if swaps_last_two(kt):
        k_node = kt.args[0]
        if len(kt.users) == 1:
            nodes.append(kt)
    nodes.append(qk)
    roles.update({"qk": qk.name, "q": node_name(q), "k": node_name(k_node)})

    probs, pv, dropout = softmax, None, None
    for _ in range(3):  # forward from softmax: at most a cast and a dropout, then P @ V
        users = list(probs.users)
        nxt = [u for u in users if kind(u) == "matmul" and u.args[0] is probs]
        if nxt:
            pv = nxt[0]
            break
        step = [u for u in users if kind(u) in ("dropout", "cast")]
        if not step:
            break
        if kind(step[0]) == "dropout":
            dropout = step[0]
            roles["dropout"] = dropout.name
        nodes.append(step[0])
        probs = tensor_value(step[0])
        if probs is not step[0]:
            nodes.append(probs)
    reasons = []
    if dropout is not None and arg(dropout, 2, "train", True):
        reasons.append(f"dropout {dropout.name} is active (training mode): its random mask cannot be reproduced by "
                       "a fused kernel's own dropout")
    if pv is not None:
        nodes.append(pv)
        roles.update({"pv": pv.name, "v": node_name(pv.args[1]), "output": pv.name})
        pattern = "causal_attention" if mask is not None else "full_attention"
        output = pv
    else:
        pattern, output = "qk_softmax", probs
        roles["output"] = probs.name
    B, H = (qs[0], qs[1]) if len(qs) == 4 else (qs[0], 1)
    Sq, Sk, D = qs[-2], kts[-1], qs[-1]
    notes = []
    if Sq != Sk:
        notes.append(f"queries ({Sq}) and keys ({Sk}) differ in length: decided at S={round((Sq * Sk) ** 0.5)}, "
                     "which keeps the score matrix's size")
    if scale is None:
        notes.append("no scale between QK^T and softmax (scaled elsewhere, or not at all); SDPA takes scale=1 then")
    if mask is not None and pattern == "causal_attention" and roles.get("mask_kind") == "additive":
        notes.append("an additive mask is decided as the library's masked (causal) attention pattern")
    if mask is not None and pattern == "qk_softmax":
        notes.append("the mask is part of the site; the qk_softmax pattern measures the unmasked chain")
    after = ["softmax"] + (["dropout"] if dropout is not None else []) + (["@ V"] if pv is not None else [])
    written = "hand-written attention: QK^T " + ", ".join(how[::-1] + after)  # found walking back: reversed
    return Candidate(pattern, nodes, output, {"B": B, "H": H, "S": Sq if Sq == Sk else round((Sq * Sk) ** 0.5),
                                             "D": D},
                     dtype_name(output) or "float32", roles, written, reasons=reasons, notes=notes,
                     boundary=[q, k_node] + ([pv.args[1]] if pv is not None else []))
