"""Linear + bias (+ activation): the chain becomes one addmm (bias in the GEMM), or the cuBLASLt epilogue; a
bias-free linear + ReLU/GELU(tanh) becomes the epilogue with a zero bias made at rewrite time (CUDA only).

Forms read: ``aten.linear(x, W, b)``; ``matmul/mm(x, t(W)) + b``; ``matmul(x, R) + b`` with R already (K, N);
``addmm(b, x, t(W))``; a view between the GEMM and the bias add (a 3-d input flattened for a 2-d GEMM).  The GEMM
runs on x flattened to (M, K) and its result is reshaped to the value it replaces.  The activation node stays where
it is (addmm) or is absorbed (epilogue: ReLU and GELU(tanh) only -- cuBLASLt's GELU is the tanh one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxfusion.fusions.activations import ACTIVATIONS, activation
from fxfusion.graph.sites import Flag
from fxfusion.graph.edit import (NotApplicable, add_constant, arg, aten, device_of, emit_traced, is_call, scalar,
                                 shape_of, value_of)

LINEAR_GEMMS = (aten.linear.default, aten.matmul.default, aten.mm.default, aten.addmm.default)
VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def is_matrix_transpose(node: fx.Node) -> bool:
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


def _parse_linear(nodes: list[fx.Node], roles: dict | None = None, flags: frozenset = frozenset()) -> _Linear:
    gemm = next((n for n in nodes if is_call(n, *LINEAR_GEMMS)), None)
    if gemm is None:
        raise NotApplicable("no linear/matmul/addmm node in the site")
    inside = set(nodes)
    bias = None
    if gemm.target == aten.addmm.default:
        if scalar(arg(gemm, 3, "beta", 1)) != 1.0 or scalar(arg(gemm, 4, "alpha", 1)) != 1.0:
            raise NotApplicable("the addmm scales its terms (beta/alpha != 1)")
        bias, x, other = gemm.args[0], gemm.args[1], gemm.args[2]
    else:
        x, other = gemm.args[0], gemm.args[1]
    weight = rhs = None
    if gemm.target == aten.linear.default:
        weight = other
        bias = arg(gemm, 2, "bias", None)
    elif isinstance(other, fx.Node) and other in inside and is_matrix_transpose(other):
        weight = other.args[0]
    else:
        rhs = other
    head = gemm
    if bias is None:
        view = [u for u in gemm.users if u in inside and is_call(u, *VIEWS)]
        after = view[0] if len(gemm.users) == 1 and view else gemm
        add = next((u for u in after.users if is_call(u, aten.add.Tensor) and u in inside), None)
        if add is not None:  # no add: a bias-free GEMM (linear_<act>)
            if scalar(add.kwargs.get("alpha", 1)) != 1.0:
                raise NotApplicable("the bias add has alpha != 1")
            bias = add.args[1] if add.args[0] is after else add.args[0]
            head = add
    n_out = (shape_of(weight) or (0,))[0] if weight is not None else (shape_of(rhs) or (0, 0))[-1]
    if bias is not None and shape_of(bias) not in ((n_out,), (1, n_out)):
        raise NotApplicable(f"the bias has shape {shape_of(bias)}, not ({n_out},): addmm cannot broadcast it")
    cur = head
    while len(cur.users) == 1 and next(iter(cur.users)) in inside and is_call(next(iter(cur.users)), *VIEWS):
        cur = next(iter(cur.users))  # addmm (2-d) -> view back to 3-d -> activation
    users = [u for u in cur.users if u in inside]
    act = users[0] if len(users) == 1 else None
    if Flag.ACT_WRITTEN in flags:  # an activation written out: the matcher named its output
        act = next((n for n in nodes if n.name == (roles or {}).get("activation")), None)
        if act is None:
            raise NotApplicable("the written-out activation's output is not in the site")
    return _Linear(x, weight, rhs, bias, head, act)


# -- the fused computations: measured as the pattern's variants, and traced into graphs by the rewrites ---------------

def _flat(x: torch.Tensor, gemm, n_out: int) -> torch.Tensor:
    """``gemm`` of x flattened to (M, K), reshaped back to x's leading dims: the GEMMs below take 2-d inputs."""
    y = gemm(x if x.dim() == 2 else x.reshape(-1, x.shape[-1]))
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n_out)


def addmm_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x @ W^T + b as one GEMM with the bias in it.  x (..., K), weight (N, K), bias (N) -> (..., N)."""
    return _flat(x, lambda x2: torch.addmm(bias, x2, weight.t()), weight.shape[0])


def addmm_rhs(x: torch.Tensor, rhs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x @ R + b with R already (K, N) (Hugging Face's Conv1D), as one GEMM with the bias in it."""
    return _flat(x, lambda x2: torch.addmm(bias, x2, rhs), rhs.shape[-1])


def epilogue_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, use_gelu: bool) -> torch.Tensor:
    """act(x @ W^T + b) in cuBLASLt's GEMM epilogue: ReLU, or GELU(tanh) with ``use_gelu``."""
    return _flat(x, lambda x2: torch._addmm_activation(bias, x2, weight.t(), use_gelu=use_gelu), weight.shape[0])


def epilogue_rhs(x: torch.Tensor, rhs: torch.Tensor, bias: torch.Tensor, use_gelu: bool) -> torch.Tensor:
    return _flat(x, lambda x2: torch._addmm_activation(bias, x2, rhs, use_gelu=use_gelu), rhs.shape[-1])


def _emit(g: fx.Graph, lin: _Linear, like: fx.Node, use_gelu: bool | None = None) -> fx.Node:
    """The fused GEMM traced in before ``like``, the value it replaces (same shape, or not applicable)."""
    if lin.weight is not None:
        fn, operand = (addmm_linear if use_gelu is None else functools.partial(epilogue_linear, use_gelu=use_gelu)), lin.weight
    else:
        fn, operand = (addmm_rhs if use_gelu is None else functools.partial(epilogue_rhs, use_gelu=use_gelu)), lin.rhs
    if not all(isinstance(n, fx.Node) for n in (lin.x, operand, lin.bias)):
        raise NotApplicable("the GEMM's operands are not all tensors of the graph")
    out = shape_of(like)
    if out is not None and shape_of(lin.x) is not None and len(shape_of(lin.x)) != len(out):
        # x flattened by hand before the GEMM and viewed back after it: the view back is part of the value replaced
        y = emit_traced(g, lambda *a: fn(*a).reshape(out), [lin.x, operand, lin.bias], before=like)
    else:
        y = emit_traced(g, fn, [lin.x, operand, lin.bias], before=like)
    if shape_of(y) != shape_of(like):
        raise NotApplicable(f"the fused GEMM gives shape {shape_of(y)}, not the {shape_of(like)} it replaces")
    return y


def rewrite_addmm(gm, nodes, group):
    lin = _parse_linear(nodes, *_read(group))
    if lin.bias is None:
        raise NotApplicable("the GEMM has no bias for addmm to take")
    return lin.head, _emit(gm.graph, lin, lin.head)


def _read(group) -> tuple[dict, frozenset]:
    """What the matcher recorded on a site (a Site or a plan's FusionGroup; a bare rewrite call may pass None)."""
    return getattr(group, "roles", None) or {}, getattr(group, "flags", frozenset())


# torch._addmm_activation's GELU is the tanh approximation: only that GELU (and ReLU) may use the epilogue.
def _epilogue_gelu(act: fx.Node | None, roles: dict | None = None, flags: frozenset = frozenset()) -> bool:
    written = Flag.ACT_WRITTEN in flags  # recognised by value by the matcher, which named it
    name = (roles or {}).get("act") if written else (activation(act) if act is not None else None)
    flag = ACTIVATIONS[name].epilogue_gelu if name in ACTIVATIONS else None
    if act is not None and flag is not None:
        return flag
    raise NotApplicable("the cuBLASLt epilogue computes only ReLU and GELU(tanh), not this activation")


def rewrite_addmm_epilogue(gm, nodes, group):
    lin = _parse_linear(nodes, *_read(group))
    if lin.bias is None:
        raise NotApplicable("the GEMM has no bias: its epilogue rewrite is addmm_epilogue of a linear_<act> site")
    use_gelu = _epilogue_gelu(lin.act, *_read(group))
    if device_of(lin.x) != "cuda":
        raise NotApplicable("the fused GEMM epilogue exists only in cuBLASLt (CUDA)")
    return lin.act, _emit(gm.graph, lin, lin.act, use_gelu)


def rewrite_epilogue_zero_bias(gm, nodes, group):
    """act(x @ W^T) without a bias -> ``_addmm_activation`` with a zero bias, made once at rewrite time (cuBLASLt's
    epilogue takes a bias; adding zeros changes no value)."""
    lin = _parse_linear(nodes, *_read(group))
    if lin.bias is not None:
        raise NotApplicable("the GEMM has a bias: the epilogue takes it, not a zero one")
    use_gelu = _epilogue_gelu(lin.act, *_read(group))
    if device_of(lin.x) != "cuda":
        raise NotApplicable("the fused GEMM epilogue exists only in cuBLASLt (CUDA); on CPU _addmm_activation runs "
                            "addmm then the activation")
    operand = value_of(lin.weight if lin.weight is not None else lin.rhs)
    if operand is None:
        raise NotApplicable("the GEMM's weight has no recorded value to size the zero bias by")
    n_out = operand.shape[0] if lin.weight is not None else operand.shape[-1]
    zero = torch.zeros(int(n_out), dtype=operand.dtype, device=operand.device)
    with gm.graph.inserting_before(lin.act):
        lin.bias = add_constant(gm, getattr(group, "site_id", "site"), "zero_bias", zero, like=lin.x)
    return lin.act, _emit(gm.graph, lin, lin.act, use_gelu)
