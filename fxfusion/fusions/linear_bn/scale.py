"""Linear + layer scale: ``gamma * linear(x)`` with a parameter ``gamma`` of one value per output feature (ConvNeXt's
``layer_scale``, timm's LayerScale / ``gamma``), the linear's output read only by the scale -- directly, through an
eval-mode Dropout (timm's ``proj_drop``), or through one permute that moves the features (torchvision's ConvNeXt
block: linear on NHWC, permute to NCHW, then the (C, 1, 1) scale).  Folded at rewrite time, as BatchNorm is:

  gamma * (x W^T + b) = x (gamma[:, None] * W)^T + gamma * b

Shape keys M rows, K inputs, N features.  Bytes (itemsize s): the linear reads MK + NK + N and writes MN; the scale
reads MN + N and writes MN  ->  s(MK + NK + 2N + 3MN) unfused; folded, one linear: s(MK + NK + N + MN).  FLOPs: 2MKN +
MN (bias) + MN (scale); folded 2MKN + MN.  Matcher, pattern and rewrite live together here (one small pattern of
the linear_bn folder's kind: an affine per output feature folded into the linear's weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.fx import Node

from fxfusion.fusions.base import Candidate, Context, ManualVariant, Pattern, add_role, described, randn, shapes
from fxfusion.fusions.linear.pattern import _inputs as linear_inputs
from fxfusion.graph.edit import (NotApplicable, add_constant, aten, constant, constant_value, copy_meta, is_call,
                                 value_of)
from fxfusion.graph.nodes import arg, dtype_name, eval_dropout, kind, node_name, shape

SIZES = {
    "quick": shapes(dict(M=64, K=256, N=256), dict(M=512, K=1536, N=384)),
    "full": shapes(dict(M=64, K=256, N=256), dict(M=512, K=1536, N=384), dict(M=3136, K=384, N=96)),
    "gpu": shapes(dict(M=512, K=1536, N=384), dict(M=3136, K=384, N=96), dict(M=25088, K=384, N=96),
                  dict(M=8192, K=4096, N=1024)),
}


def _inputs(shape, dtype, device, gen):
    return {**linear_inputs(shape, dtype, device, gen),
            "gamma": randn(gen, shape["N"], dtype=dtype, device=device, scale=0.1)}


def eager(x, weight, bias, gamma):
    return gamma * F.linear(x, weight, bias)


def fold_scale(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor):
    """(gamma[:, None] * W, gamma * b) computed in float32 (float64 stays float64), in the weight's dtype."""
    acc = torch.promote_types(weight.dtype, torch.float32)
    g = gamma.reshape(-1).to(acc)
    w = (weight.to(acc) * g[:, None]).to(weight.dtype)
    b = None if bias is None else (bias.to(acc) * g).to(bias.dtype)
    return w, b


def _build_folded(inp):
    w, b = fold_scale(inp["weight"], inp["bias"], inp["gamma"])  # once, as at load
    x = inp["x"]
    return lambda: F.linear(x, w, b)


def _bytes(s, i, fused):
    M, K, N = s["M"], s["K"], s["N"]
    return i * (M * K + N * K + (N + M * N if fused else 2 * N + 3 * M * N))


# -- matching ----------------------------------------------------------------------------------------------------------

def _feature_dim(lin: Node, perm: Node | None) -> int | None:
    """Where the linear's features sit in the scaled tensor: its last dim, or where the permute moves it."""
    rank = len(shape(lin) or ())
    if perm is None:
        return rank - 1
    dims = [d % rank for d in arg(perm, 1, "dims", [])]
    return dims.index(rank - 1) if sorted(dims) == list(range(rank)) and rank - 1 in dims else None


def _per_feature(scale_shape, out_shape, dim: int, n: int) -> bool:
    """A scale that broadcasts one value per feature along ``dim`` of ``out_shape`` and nothing else."""
    if scale_shape is None or len(scale_shape) > len(out_shape):
        return False
    lead = len(out_shape) - len(scale_shape)
    return dim >= lead and all(s == (n if i + lead == dim else 1) for i, s in enumerate(scale_shape))


def match_linear_scale(ctx: Context, mul: Node) -> Candidate | None:
    g = ctx.graph
    if len(mul.args) != 2 or not all(isinstance(a, Node) for a in mul.args):
        return None
    for i in (0, 1):
        src, gamma = mul.args[i], mul.args[1 - i]
        drop = src if eval_dropout(src) and isinstance(src.args[0], Node) else None  # timm: proj, proj_drop, ls
        base = drop.args[0] if drop is not None else src
        perm = base if kind(base) == "transpose" and kind(base.args[0]) == "linear" else None
        lin = perm.args[0] if perm is not None else base
        param = gamma if g.param(gamma) else (gamma.args[0] if kind(gamma) == "view" and g.param(gamma.args[0])
                                               and len(gamma.users) == 1 else None)  # timm: gamma.reshape(1, -1, 1, 1)
        if kind(lin) != "linear" or not g.param(lin.args[1]) or param is None:
            continue
        if any(n is not None and len(n.users) != 1 for n in (lin, perm, drop)):
            return None  # the unscaled output is read elsewhere: the folded linear would not produce it
        bias, out = arg(lin, 2, "bias"), shape(mul)
        n, dim = (shape(lin) or (0,))[-1], _feature_dim(lin, perm)
        if dim is None or out != shape(src) or not _per_feature(shape(gamma), out, dim, n) \
                or (bias is not None and not g.param(bias)):
            return None
        x = lin.args[0]
        nodes = [n for n in (lin, perm, drop) if n is not None] + ([gamma] if param is not gamma else []) + [mul]
        roles = {"gemm": lin.name, "input": node_name(x), "weight": node_name(lin.args[1]),
                 "weight_param": g.param(lin.args[1]), "gamma": node_name(gamma), "gamma_param": g.param(param),
                 "output": mul.name}
        add_role(roles, "bias", bias)
        if perm is not None:
            roles["permute"] = perm.name
        K = (shape(x) or (0,))[-1]
        how = (f"{described(lin, 'F.linear')}" + (", permuted," if perm is not None else "")
               + (" (eval-mode dropout)" if drop is not None else "") + " then * gamma")
        return Candidate("linear_scale", nodes, mul, {"M": max(1, (value_of(lin).numel() // n) if n else 1),
                                                       "K": K, "N": n}, dtype_name(mul) or "float32", roles, how,
                         boundary=[a for a in (x, lin.args[1], bias, param) if a is not None])
    return None


# -- rewriting ---------------------------------------------------------------------------------------------------------

def rewrite_scale_folded(gm, nodes, group):
    """gamma * [permute](linear(x, W, b)) -> [permute](linear(x, gamma W, gamma b)): one linear, the scale gone."""
    lin = next((n for n in nodes if is_call(n, aten.linear.default)), None)
    mul = nodes[-1]
    if lin is None or not is_call(mul, aten.mul.Tensor):
        raise NotApplicable("the site is not a linear scaled by a parameter")
    inside = set(nodes)
    if any(u not in inside for n in nodes[:-1] for u in n.users):
        raise NotApplicable("the unscaled output is read outside the site")
    gamma_node = next((a for a in mul.args[:2] if a not in inside), None)
    if gamma_node is None:  # the reshape of the parameter is in the site: read the parameter behind it
        gamma_node = next(a for a in mul.args[:2] if is_call(a, aten.view.default, aten.reshape.default)).args[0]
    weight = constant(gm, lin.args[1], "linear weight")
    bias = constant(gm, arg(lin, 2, "bias", None), "linear bias")
    gamma = constant_value(gm, gamma_node)
    if weight is None or gamma is None or gamma.numel() != weight.shape[0]:
        raise NotApplicable("the scale is not a constant with one value per output feature")
    w, b = fold_scale(weight, bias, gamma)
    site = getattr(group, "site_id", "site")
    with gm.graph.inserting_before(lin):
        w_node = add_constant(gm, site, "weight", w, like=lin.args[0])
        b_node = add_constant(gm, site, "bias", b, like=lin.args[0]) if b is not None else None
        new = gm.graph.call_function(aten.linear.default, (lin.args[0], w_node, b_node))
    copy_meta(new, lin)
    out = new  # the driver gives the node it returns the scaled output's meta
    perm = next((n for n in nodes if is_call(n, aten.permute.default, aten.transpose.int)), None)
    if perm is not None:
        with gm.graph.inserting_after(new):
            out = gm.graph.call_function(perm.target, (new, *perm.args[1:]), dict(perm.kwargs))
    return mul, out


PATTERN = Pattern(
    # family "linear", as linear_bn: a GEMM fusion calibrated with the matmul settings (`--patterns linear`)
    name="linear_scale", family="linear", title="Linear+layer scale", legacy_name="Linear_Scale",
    shape_keys=("M", "K", "N"), make_inputs=_inputs, eager=eager,
    manual=(ManualVariant("scale_folded", _build_folded, "the per-feature scale folded into the linear's weight and "
                          "bias at load", rewrite=rewrite_scale_folded),),
    flops=lambda s: 2 * s["M"] * s["K"] * s["N"] + 2 * s["M"] * s["N"],
    bytes=_bytes, shapes=SIZES,
)
