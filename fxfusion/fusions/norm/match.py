"""Norms: RMSNorm written out or already one op, and the residual add in front of a LayerNorm or an RMSNorm --
read only by the norm (add_layernorm), or read again by the next residual add, as in a pre-LN transformer
(add_layernorm_sum, add_rmsnorm_sum: the fused variants write the sum out as well)."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.graph.capture import module_path
from fxfusion.fusions.base import Candidate, Context, add_role, described
from fxfusion.graph.nodes import (ASSERT_OPS, arg, dtype_name, eval_dropout, is_scalar, kind, node_name, op_name,
                                  only_user, shape, swaps_last_two, tensor_value, val)
from fxfusion.graph.sites import ALREADY_FUSED


def match_rmsnorm_written(ctx: Context, rsqrt: Node) -> Candidate | None:
    """x * rsqrt(mean(x^2, -1, keepdim) + eps) [cast back] [* weight], as gpt-fast and LLaMA write it (and T5, whose
    square reads x.float() while its scale reads x)."""
    g = ctx.graph
    add = rsqrt.args[0]
    if kind(add) != "add" or not isinstance(add.args[0], Node) or not is_scalar(add.args[1]):
        return None
    mean = add.args[0]
    if kind(mean) != "mean" or list(arg(mean, 1, "dim", [])) not in ([-1], [len(shape(mean) or (0,)) - 1]):
        return None
    sq = mean.args[0]
    if kind(sq) == "pow" and sq.args[1] == 2:
        x = sq.args[0]
    elif kind(sq) == "mul" and sq.args[0] is sq.args[1]:
        x = sq.args[0]
    else:
        return None
    # T5 squares x.float() but scales x itself (``x * rsqrt(...)``: bfloat16 times float32 is float32, the same
    # product): the mul may read the cast's input, where the cast is read by the square alone.
    upcast = x.args[0] if kind(x) == "cast" and isinstance(x.args[0], Node) else None
    muls = [u for u in rsqrt.users if kind(u) == "mul" and (x in u.args or (
        upcast is not None and upcast in u.args and dtype_name(x) == dtype_name(u)
        and {r for r in x.users if op_name(r) not in ASSERT_OPS} == {sq}))]
    if not muls:
        return None
    normed = muls[0]
    nodes = [sq, mean, add, rsqrt, normed]
    roles = {"input": node_name(x), "eps": str(add.args[1]), "rsqrt": rsqrt.name}
    cur, weight = normed, None
    nxt = only_user(cur)
    if nxt is not None and kind(nxt) == "cast":
        nodes.append(nxt)
        cur = nxt
    for u in cur.users:
        if kind(u) == "mul":
            other = u.args[1] if u.args[0] is cur else u.args[0]
            if isinstance(other, Node) and shape(other) == (shape(cur) or (0,))[-1:] and (
                    g.param(other) or _one_plus_param(g, other, u)):
                weight = other
                nodes.append(u)
                cur = u
                break
    if weight is not None and not g.param(weight):  # Gemma's 1 + w (w.float() in between): inside, w the boundary
        inner = next(a for a in weight.args if isinstance(a, Node))  # w, or w.float()
        nodes[-1:-1] = [inner, weight] if kind(inner) == "cast" else [weight]  # before the scale's mul, in order
        weight = inner.args[0] if kind(inner) == "cast" else inner
        nxt = only_user(cur)
        if nxt is not None and kind(nxt) == "cast":  # output.type_as(x) after the scale
            nodes.append(nxt)
            cur = nxt
    source = x
    if kind(x) == "cast" and isinstance(x.args[0], Node) and set(x.users) <= set(nodes):
        source = x.args[0]  # x.float() in front, read only by the norm: part of the site
        nodes.insert(0, x)
    roles.update({"input": node_name(source), "output": cur.name})
    notes = [] if weight is not None else ["no weight multiply after the normalisation"]
    add_role(roles, "weight", weight)
    if weight is not None and g.param(weight):
        roles["weight_param"] = g.param(weight)
    xs = shape(source) or shape(x)
    N = xs[-1]
    M = max(1, val(source).numel() // N) if val(source) is not None else 1
    return Candidate("rmsnorm", nodes, cur, {"M": M, "N": N}, dtype_name(cur) or "float32", roles,
                     "RMSNorm written out: x * rsqrt(mean(x^2) + eps) * w", notes=notes,
                     boundary=[source] + ([weight] if weight is not None else []))


def _one_plus_param(g, node: Node, mul: Node) -> bool:
    """Gemma's scale: ``1 + w`` of a parameter ``w`` (``w.float()`` in between or not), made fresh every call and
    read by ``mul`` alone (else it is not the site's own)."""
    if kind(node) != "add" or len(node.args) != 2 or set(node.users) != {mul}:
        return False
    one = [a for a in node.args if is_scalar(a) and float(a) == 1.0]
    w = [a for a in node.args if isinstance(a, Node)]
    if len(one) != 1 or len(w) != 1:
        return False
    w = w[0]
    if kind(w) == "cast" and isinstance(w.args[0], Node) and set(w.users) == {node}:
        w = w.args[0]
    return bool(g.param(w))


def match_rms_norm_op(ctx: Context, node: Node) -> Candidate | None:
    """Already fused: one rms_norm op (nn.RMSNorm, F.rms_norm)."""
    xs, out = shape(node.args[0]), tensor_value(node)
    if xs is None:
        return None
    N = xs[-1]
    path, cls = module_path(node)
    roles = {"input": node.args[0].name, "rms_norm": node.name, "output": out.name}
    add_role(roles, "weight", arg(node, 2, "weight"))
    return Candidate("rmsnorm", [node] + ([out] if out is not node else []), out,
                     {"M": max(1, val(node.args[0]).numel() // N), "N": N}, dtype_name(out) or "float32", roles,
                     "nn.RMSNorm" if cls == "RMSNorm" else "F.rms_norm", status=ALREADY_FUSED)


def match_add_layernorm(ctx: Context, ln: Node) -> Candidate | None:
    """LayerNorm(x + residual) over the last dim: the residual add in front of a LayerNorm.  The add may broadcast
    its residual over the leading dims (the position embeddings added to the token or patch embeddings, then the
    first LayerNorm: GPT-2, BERT, CLIP, ViT, Whisper), and an eval-mode Dropout (the identity) may sit between them:
    the sum is the same tensor either way.  (A broadcast residual reads S x N where the cost model counts M x N, in
    the fused and the unfused form alike: the saving, the sum written and read back, is the same.)"""
    src, between = ln.args[0], []
    if eval_dropout(src) and isinstance(src.args[0], Node):
        src, between = src.args[0], [src]
    add = src
    if not _residual_add(add, broadcast=True):
        return None
    normalized = arg(ln, 1, "normalized_shape")
    xs = shape(add)
    if xs is None or list(normalized or []) != [xs[-1]]:
        return None
    x, residual = add.args if shape(add.args[0]) == xs else add.args[::-1]
    out = tensor_value(ln)
    nodes = [add, *between, ln] + ([out] if out is not ln else [])
    roles = {"x": x.name, "residual": residual.name, "add": add.name, "layer_norm": ln.name,
             "output": out.name, "eps": str(arg(ln, 4, "eps", 1e-5))}
    if shape(residual) != xs:
        roles["residual_broadcast"] = "x".join(map(str, shape(residual)))
    if between:
        roles["dropout_eval"] = between[0].name
    add_role(roles, "weight", arg(ln, 2, "weight"))
    add_role(roles, "bias", arg(ln, 3, "bias"))
    path, _ = module_path(ln)
    if path:
        roles["module"] = path
    N = xs[-1]
    boundary = [x, residual] + [a for a in (arg(ln, 2, "weight"), arg(ln, 3, "bias")) if a is not None]
    written = "x + residual" + (f" (residual {roles['residual_broadcast']}, broadcast)" if "residual_broadcast" in roles
                                else "") + (", eval-mode dropout" if between else "")
    return Candidate("add_layernorm", nodes, out, {"M": max(1, val(add).numel() // N), "N": N},
                     dtype_name(out) or "float32", roles,
                     written + ", then " + described(ln, "F.layer_norm"), boundary=boundary)


def _residual_add(node, broadcast: bool = False) -> bool:
    """``x + residual``: an add of two tensors of its own shape (no alpha); with ``broadcast``, one of them may have
    fewer or size-1 leading dims (never a broadcast last dim: the norm's rows must each read a whole residual row)."""
    if not (kind(node) == "add" and len(node.args) == 2 and all(isinstance(a, Node) for a in node.args)
            and node.kwargs.get("alpha", 1) == 1):
        return False
    out, a, b = shape(node), shape(node.args[0]), shape(node.args[1])
    if out is None or a is None or b is None:
        return False
    if a == out == b:
        return True
    if not broadcast or out not in (a, b):
        return False
    other = b if a == out else a
    lead = len(out) - len(other)
    return (0 < len(other) <= len(out) and other[-1] == out[-1]
            and all(o in (1, d) for o, d in zip(other[:-1], out[lead:-1])))


def _readers_outside(values: list[Node], nodes: list[Node]) -> list[Node]:
    """The nodes outside the site that read any of ``values`` (export's dtype checks do not count)."""
    inside = set(nodes)
    return [u for v in values for u in v.users if u not in inside and op_name(u) not in ASSERT_OPS]


def _keeping_the_sum(c: Candidate, pattern: str, add: Node, sums: list[Node], readers: list[Node]) -> Candidate:
    c.pattern, c.outputs = pattern, list(sums)
    c.roles.update({"sum": add.name, "sum_read_by": ", ".join(sorted(u.name for u in readers))})
    c.written_as += "; the sum is read again"
    return c


def match_add_layernorm_sum(ctx: Context, ln: Node) -> Candidate | None:
    """h = x + residual; LayerNorm(h), with h read again (a pre-LN block's next residual add): both are outputs."""
    c = match_add_layernorm(ctx, ln)
    if c is None:
        return None
    add = c.nodes[0]
    sums = [add] + [n for n in c.nodes if eval_dropout(n)]  # the eval dropout of the sum is the sum
    readers = _readers_outside(sums, c.nodes)
    if not readers:
        return None  # read by the LayerNorm alone: an add_layernorm site
    return _keeping_the_sum(c, "add_layernorm_sum", add, sums, readers)


def match_add_rmsnorm_sum(ctx: Context, rsqrt: Node) -> Candidate | None:
    """h = x + residual; RMSNorm(h) written out with its weight (Llama's, gpt-fast's), with h read again.

    The norm may read h through ``h.to(float32)``: in float32 that cast is h itself, and export makes the next residual
    add read the cast, so a same-dtype cast read outside is the sum too; a real upcast read outside is not."""
    c = match_rmsnorm_written(ctx, rsqrt)
    if c is None or "weight" not in c.roles:
        return None
    source, sums = c.boundary[0], []
    if kind(source) == "cast" and isinstance(source.args[0], Node) and source not in c.nodes:
        if dtype_name(source) != dtype_name(source.args[0]) or shape(source) != shape(source.args[0]):
            return None
        sums, source = [source], source.args[0]
    if not _residual_add(source):
        return None
    add, weight = source, c.boundary[-1]
    sums.insert(0, add)
    c.nodes[:0] = sums
    readers = _readers_outside(sums, c.nodes)
    if not readers:
        return None  # read by the norm alone: the rmsnorm site, the add left as it is
    c.boundary = [add.args[0], add.args[1], weight]
    c.roles.update({"x": node_name(add.args[0]), "residual": node_name(add.args[1]), "add": add.name})
    c.written_as = "x + residual, then " + c.written_as
    return _keeping_the_sum(c, "add_rmsnorm_sum", add, sums, readers)


def _bias_free_gemm(ctx: Context, read) -> tuple[list[Node], Node, Node] | None:
    """``read`` as a bias-free GEMM with a parameter weight whose output only the residual add reads: (its nodes, x,
    the weight) -- ``linear(x, W)``, or ``mm(x, t(W))`` with the view back to the input's leading dims after it; an
    eval-mode Dropout may sit between it and the add."""
    g = ctx.graph
    if not isinstance(read, Node) or len(read.users) != 1:
        return None
    gemm, nodes = read, [read]
    if eval_dropout(read) and isinstance(read.args[0], Node) and len(read.args[0].users) == 1:
        gemm = read = read.args[0]  # the projection's eval-mode Dropout (Phi-3, T5): the identity
        nodes.insert(0, gemm)
    if kind(read) == "view" and isinstance(read.args[0], Node) and len(read.args[0].users) == 1:
        gemm = read.args[0]
        nodes.insert(0, gemm)
    if kind(gemm) == "linear" and arg(gemm, 2, "bias") is None and g.param(gemm.args[1]):
        return nodes, gemm.args[0], gemm.args[1]
    rhs = gemm.args[1] if kind(gemm) == "matmul" and len(gemm.args) > 1 else None  # mm, matmul (graph.nodes.KINDS)
    if isinstance(rhs, Node) and swaps_last_two(rhs) and len(rhs.users) == 1 \
            and g.param(rhs.args[0]) and len(shape(rhs.args[0]) or ()) == 2:
        return [rhs] + nodes, gemm.args[0], rhs.args[0]
    return None


def match_linear_add_rmsnorm_sum(ctx: Context, rsqrt: Node) -> Candidate | None:
    """h = x @ W^T + residual (a bias-free projection: Llama's o_proj, down_proj); RMSNorm(h), h read again."""
    c = match_add_rmsnorm_sum(ctx, rsqrt)
    if c is None:
        return None
    add = next(n for n in c.nodes if n.name == c.roles["add"])
    for i, read in enumerate(add.args[:2]):
        found = _bias_free_gemm(ctx, read)
        if found is None or any(n in ctx.claimed for n in found[0]):
            continue
        gemm_nodes, x, weight = found
        residual = add.args[1 - i]
        c.nodes[:0] = gemm_nodes
        c.pattern = "linear_add_rmsnorm_sum"
        K, N = (shape(x) or (0,))[-1], (shape(add) or (0,))[-1]
        c.shape = {"M": c.shape["M"], "K": K, "N": N}
        c.boundary = [x, weight, residual, c.boundary[-1]]
        c.roles.update({"x": node_name(x), "residual": node_name(residual), "gemm": gemm_nodes[-1].name,
                        "proj_weight": node_name(weight)})
        if ctx.graph.param(weight):
            c.roles["proj_weight_param"] = ctx.graph.param(weight)
        c.written_as = f"{described(gemm_nodes[-1], 'x @ W.T')} (no bias) + residual, then " + c.written_as.split(
            ", then ", 1)[-1]
        return c
    return None
