"""Linear + BatchNorm1d: anchored on the BatchNorm, whose (M, N) input is a linear's output with a parameter weight
(and bias) -- directly, or flattened to (M, N) first and reshaped back after the BatchNorm (timm's ``LinearNorm``:
``bn(linear(x).flatten(0, 1)).reshape_as(x)``).  The features BatchNorm1d normalises on dim 1 are then the linear's
outputs.  O(1) per anchor."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.fusions.base import Candidate, Context, add_role, described
from fxfusion.fusions.linear_bn.rewrite import bn_arguments
from fxfusion.graph.capture import module_path
from fxfusion.graph.nodes import arg, dtype_name, kind, node_name, op_name, shape, tensor_value

RESHAPES = ("view", "flatten", "reshape_as")  # kinds (view covers reshape and _unsafe_view) that only reshape


def _reshape(node) -> bool:
    return kind(node) in RESHAPES


def _linear_behind(bn: Node) -> tuple[Node, Node | None] | None:
    """(linear, the flatten between it and the BatchNorm or None) when the BatchNorm's (M, N) input is a linear's
    output of N features, itself or flattened; None otherwise."""
    inp = bn.args[0] if bn.args else None
    ins = shape(inp)
    if ins is None or len(ins) != 2:
        return None
    if kind(inp) == "linear":
        return inp, None
    if _reshape(inp) and kind(inp.args[0]) == "linear" and len(inp.users) == 1:
        lin = inp.args[0]
        return (lin, inp) if (shape(lin) or (0,))[-1] == ins[1] else None
    return None


def match_linear_bn(ctx: Context, bn: Node) -> Candidate | None:
    g = ctx.graph
    found = _linear_behind(bn)
    if found is None:
        return None
    lin, flat = found
    x, weight, bias = lin.args[0], lin.args[1], arg(lin, 2, "bias")
    out, xs = shape(lin), shape(x)
    if out is None or xs is None or not g.param(weight) or (bias is not None and not g.param(bias)):
        return None
    result = tensor_value(bn)
    nodes = [lin] + ([flat] if flat is not None else []) + [bn] + ([result] if result is not bn else [])
    back = next(iter(result.users)) if len(result.users) == 1 else None
    if flat is not None and back is not None and _reshape(back) and shape(back) == out:
        nodes.append(back)  # reshaped back to the linear's shape (reshape_as(linear) reads the linear too)
        result = back
    if any(u not in nodes for u in lin.users) or len(lin.users) > (2 if result is not tensor_value(bn) else 1):
        return None  # the linear's output is read elsewhere: the folded linear would not produce it
    params = bn_arguments(bn)
    roles = {"gemm": lin.name, "bn": bn.name, "input": node_name(x), "weight": node_name(weight),
             "weight_param": g.param(weight), "output": result.name, "bn_eps": str(params["eps"])}
    add_role(roles, "bias", bias)
    for key in ("bn_weight", "bn_bias", "running_mean", "running_var"):
        add_role(roles, key, params.get(key))
    reasons = []
    if params["training"] or not isinstance(params.get("running_mean"), Node):
        bn_path, _ = module_path(bn)
        reasons.append(f"BatchNorm {bn_path or bn.name} normalises with batch statistics (training mode or "
                       "track_running_stats=False): folding needs fixed running statistics")
    how = f"{described(lin, 'F.linear')} + {described(bn, 'F.batch_norm')}"
    if flat is not None:
        how += f" on the tokens flattened ({op_name(flat)})" + (f", reshaped back ({op_name(result)})"
                                                               if result is not tensor_value(bn) else "")
    M = out[0] if len(out) == 2 else shape(flat)[0]
    return Candidate("linear_bn", nodes, result, {"M": M, "K": xs[-1], "N": out[-1]},
                     dtype_name(result) or "float32", roles, how, reasons=reasons,
                     boundary=[n for n in (x, weight, bias) if n is not None])
