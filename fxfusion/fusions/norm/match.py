"""Norms: RMSNorm written out or already one op, and the residual add in front of a LayerNorm."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.graph.capture import module_path
from fxfusion.fusions.base import Candidate, Context, add_role, described
from fxfusion.graph.nodes import arg, dtype_name, is_scalar, kind, node_name, only_user, shape, tensor_value, val
from fxfusion.graph.sites import ALREADY_FUSED


def match_rmsnorm_written(ctx: Context, rsqrt: Node) -> Candidate | None:
    """x * rsqrt(mean(x^2, -1, keepdim) + eps) [cast back] [* weight], as gpt-fast and LLaMA write it."""
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
    muls = [u for u in rsqrt.users if kind(u) == "mul" and x in u.args]
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
            if isinstance(other, Node) and g.param(other) and shape(other) == (shape(cur) or (0,))[-1:]:
                weight = other
                nodes.append(u)
                cur = u
                break
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
    """LayerNorm(x + residual) over the last dim: the residual add in front of a LayerNorm."""
    add = ln.args[0]
    if kind(add) != "add" or len(add.args) != 2 or not all(isinstance(a, Node) for a in add.args):
        return None
    if add.kwargs.get("alpha", 1) != 1 or shape(add.args[0]) != shape(add) or shape(add.args[1]) != shape(add):
        return None
    normalized = arg(ln, 1, "normalized_shape")
    xs = shape(add)
    if xs is None or list(normalized or []) != [xs[-1]]:
        return None
    out = tensor_value(ln)
    nodes = [add, ln] + ([out] if out is not ln else [])
    roles = {"x": add.args[0].name, "residual": add.args[1].name, "add": add.name, "layer_norm": ln.name,
             "output": out.name, "eps": str(arg(ln, 4, "eps", 1e-5))}
    add_role(roles, "weight", arg(ln, 2, "weight"))
    add_role(roles, "bias", arg(ln, 3, "bias"))
    path, _ = module_path(ln)
    if path:
        roles["module"] = path
    N = xs[-1]
    boundary = [add.args[0], add.args[1]] + [a for a in (arg(ln, 2, "weight"), arg(ln, 3, "bias")) if a is not None]
    return Candidate("add_layernorm", nodes, out, {"M": max(1, val(add).numel() // N), "N": N},
                     dtype_name(out) or "float32", roles,
                     "x + residual, then " + described(ln, "F.layer_norm"), boundary=boundary)
