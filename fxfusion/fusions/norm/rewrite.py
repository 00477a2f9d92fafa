"""Norms: the written-out RMSNorm becomes ``aten.rms_norm``; add + LayerNorm becomes the Triton kernel (CUDA)."""

from __future__ import annotations

from torch import fx

from fxfusion.graph.edit import NotApplicable, aten, arg, device_of, is_call, scalar, shape_of
from fxfusion.fusions.kernels import add_layernorm, triton_unavailable


def rewrite_rms_norm(gm, nodes, group):
    inside = set(nodes)
    pow_ = next((n for n in nodes if is_call(n, aten.pow.Tensor_Scalar) and n.args[1] == 2), None)
    add = next((n for n in nodes if is_call(n, aten.add.Tensor, aten.add.Scalar) and scalar(n.args[1]) is not None),
               None)
    if pow_ is None or add is None:
        raise NotApplicable("cannot find x.pow(2) and the + eps of the RMSNorm")
    x, eps, last = pow_.args[0], scalar(add.args[1]), nodes[-1]
    if not is_call(last, aten.mul.Tensor):
        raise NotApplicable("the RMSNorm does not end with the weight multiply")
    weight = next((a for a in last.args[:2] if isinstance(a, fx.Node) and a not in inside), None)
    n = (shape_of(x) or (0,))[-1]
    if weight is None or shape_of(weight) != (n,):
        raise NotApplicable(f"the RMSNorm weight is not a ({n},) tensor")
    with gm.graph.inserting_before(last):
        y = gm.graph.call_function(aten.rms_norm.default, (x, [n], weight, eps))
    return last, y


def rewrite_triton_add_layernorm(gm, nodes, group):
    ln = next((n for n in nodes if is_call(n, aten.layer_norm.default)), None)
    if ln is None or not is_call(ln.args[0], aten.add.Tensor) or ln.args[0] not in set(nodes):
        raise NotApplicable("no add -> layer_norm chain in the site")
    if device_of(ln) != "cuda" or triton_unavailable():
        raise NotApplicable("the fused add+LayerNorm is a Triton kernel, for CUDA only")
    add = ln.args[0]
    x, r = add.args[:2]
    with gm.graph.inserting_before(ln):
        y = gm.graph.call_function(add_layernorm, (x, r, arg(ln, 2, "weight", None), arg(ln, 3, "bias", None),
                                                   arg(ln, 4, "eps", 1e-5)))
    return ln, y
