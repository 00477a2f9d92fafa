"""Linear + bias (+ activation): the chain becomes one addmm (bias in the GEMM), or the cuBLASLt epilogue.

Forms read: ``aten.linear(x, W, b)``; ``matmul/mm(x, t(W)) + b``; ``matmul(x, R) + b`` with R already (K, N).
An input of more than two dimensions is flattened to (M, K) for addmm and reshaped back.  The activation node stays
where it is (addmm) or is absorbed (epilogue: ReLU and GELU(tanh) only -- cuBLASLt's GELU is the tanh one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import fx

from fxfusion.rewrites.graph import NotApplicable, arg, device_of, is_call, scalar, shape_of, aten

LINEAR_GEMMS = (aten.linear.default, aten.matmul.default, aten.mm.default)
TRANSPOSES = (aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default)


def _is_matrix_transpose(node: fx.Node) -> bool:
    if is_call(node, aten.t.default, aten.numpy_T.default):
        return True
    if is_call(node, aten.transpose.int):
        dims = {d % 2 for d in node.args[1:3]} if shape_of(node.args[0]) and len(shape_of(node.args[0])) == 2 else None
        return dims == {0, 1}
    return is_call(node, aten.permute.default) and list(node.args[1]) in ([1, 0], [-1, -2], [-1, 0], [1, -2])


@dataclass
class _Linear:
    x: fx.Node
    weight: fx.Node | None  # (N, K), when the site transposes it
    rhs: fx.Node | None  # (K, N), when the site multiplies by it directly
    bias: Any
    head: fx.Node  # the node whose value is x @ W^T + b
    act: fx.Node | None  # the activation applied to head, when it is in the site


def _parse_linear(nodes: list[fx.Node]) -> _Linear:
    gemm = next((n for n in nodes if is_call(n, *LINEAR_GEMMS)), None)
    if gemm is None:
        raise NotApplicable("no linear/matmul node in the site")
    inside = set(nodes)
    x, other = gemm.args[0], gemm.args[1]
    weight = rhs = None
    bias = None
    if gemm.target == aten.linear.default:
        weight = other
        bias = arg(gemm, 2, "bias", None)
    elif isinstance(other, fx.Node) and other in inside and _is_matrix_transpose(other):
        weight = other.args[0]
    else:
        rhs = other
    head = gemm
    if bias is None:
        add = next((u for u in gemm.users if is_call(u, aten.add.Tensor) and u in inside), None)
        if add is None:
            raise NotApplicable("the site has no bias add after its GEMM")
        if scalar(add.kwargs.get("alpha", 1)) != 1.0:
            raise NotApplicable("the bias add has alpha != 1")
        bias = add.args[1] if add.args[0] is gemm else add.args[0]
        head = add
    n_out = (shape_of(weight) or (0,))[0] if weight is not None else (shape_of(rhs) or (0, 0))[-1]
    if shape_of(bias) not in ((n_out,), (1, n_out)):
        raise NotApplicable(f"the bias has shape {shape_of(bias)}, not ({n_out},): addmm cannot broadcast it")
    users = [u for u in head.users if u in inside]
    act = users[0] if len(users) == 1 else None
    return _Linear(x, weight, rhs, bias, head, act)


def _emit_addmm(g: fx.Graph, lin: _Linear) -> tuple[fx.Node, fx.Node, tuple[int, ...]]:
    """x as a matrix and the (K, N) right-hand side; the caller reshapes the result back."""
    xs = shape_of(lin.x)
    if xs is None:
        raise NotApplicable("the input has no recorded shape")
    x2 = lin.x if len(xs) == 2 else g.call_function(aten.reshape.default, (lin.x, [-1, xs[-1]]))
    rhs = g.call_function(aten.t.default, (lin.weight,)) if lin.weight is not None else lin.rhs
    return x2, rhs, xs


def rewrite_addmm(gm, nodes, group):
    lin = _parse_linear(nodes)
    g = gm.graph
    with g.inserting_before(lin.head):
        x2, rhs, xs = _emit_addmm(g, lin)
        y = g.call_function(aten.addmm.default, (lin.bias, x2, rhs))
        if len(xs) != 2:
            y = g.call_function(aten.reshape.default, (y, [*xs[:-1], -1]))
    return lin.head, y


# torch._addmm_activation's GELU is the tanh approximation: only that GELU (and ReLU) may use the epilogue.
def _epilogue_gelu(act: fx.Node | None) -> bool:
    if is_call(act, aten.relu.default):
        return False
    if is_call(act, aten.gelu.default) and act.kwargs.get("approximate", act.args[1] if len(act.args) > 1 else "none") == "tanh":
        return True
    raise NotApplicable("the cuBLASLt epilogue computes only ReLU and GELU(tanh), not this activation")


def rewrite_addmm_epilogue(gm, nodes, group):
    lin = _parse_linear(nodes)
    use_gelu = _epilogue_gelu(lin.act)
    if device_of(lin.x) != "cuda":
        raise NotApplicable("the fused GEMM epilogue exists only in cuBLASLt (CUDA)")
    g = gm.graph
    with g.inserting_before(lin.act):
        x2, rhs, xs = _emit_addmm(g, lin)
        y = g.call_function(aten._addmm_activation.default, (lin.bias, x2, rhs), {"use_gelu": use_gelu})
        if len(xs) != 2:
            y = g.call_function(aten.reshape.default, (y, [*xs[:-1], -1]))
    return lin.act, y
