"""Linear + BatchNorm1d: anchored on the BatchNorm, whose input must be a linear with a parameter weight (and bias)
giving an (M, N) output -- the features BatchNorm1d normalises on dim 1 are the linear's outputs.  O(1) per anchor."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.fusions.base import Candidate, Context, add_role, described
from fxfusion.fusions.linear_bn.rewrite import bn_arguments
from fxfusion.graph.capture import module_path
from fxfusion.graph.nodes import arg, dtype_name, kind, node_name, shape, tensor_value


def match_linear_bn(ctx: Context, bn: Node) -> Candidate | None:
    g = ctx.graph
    lin = bn.args[0] if bn.args else None
    if kind(lin) != "linear" or len(lin.users) != 1:
        return None
    x, weight, bias = lin.args[0], lin.args[1], arg(lin, 2, "bias")
    out, xs = shape(lin), shape(x)
    if out is None or xs is None or len(out) != 2 or not g.param(weight) or (bias is not None and not g.param(bias)):
        return None
    params = bn_arguments(bn)
    result = tensor_value(bn)
    nodes = [lin, bn] + ([result] if result is not bn else [])
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
    return Candidate("linear_bn", nodes, result, {"M": out[0], "K": xs[-1], "N": out[1]},
                     dtype_name(result) or "float32", roles, how, reasons=reasons,
                     boundary=[n for n in (x, weight, bias) if n is not None])
