"""A fusion family added the way docs/architecture.md walks through it: Linear + bias + tanh.

Everything the library needs is in this one module -- the pattern (inputs, eager, the fused variant, FLOP and byte
model), the matcher and the rewrite -- and one registration (``fxfusion.fusions.registry.register``, or a line in
``BUILTIN``).  The fused computation is written once (:func:`fused`): the variant calls it to be measured, the
rewrite traces it into the graph.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from fxfusion.fusions.base import Candidate, Context, Family, ManualVariant, Matcher, Pattern, randn, shapes
from fxfusion.graph.edit import NotApplicable, aten, emit_traced, is_call
from fxfusion.graph.nodes import dtype_name, kind, shape, val


def eager(x, weight, bias):  # x (M, K), weight (N, K), bias (N) -> (M, N), as the user writes it
    return torch.tanh(x @ weight.t() + bias)


def fused(x, weight, bias):  # the bias in the GEMM; then tanh
    return torch.tanh(torch.addmm(bias, x, weight.t()))


def _inputs(shape, dtype, device, gen):
    M, K, N = shape["M"], shape["K"], shape["N"]
    return {"x": randn(gen, M, K, dtype=dtype, device=device),
            "weight": randn(gen, N, K, dtype=dtype, device=device, scale=K ** -0.5),
            "bias": randn(gen, N, dtype=dtype, device=device)}


def rewrite_addmm_tanh(gm, nodes, group):
    gemm = next((n for n in nodes if kind(n) == "matmul"), None)
    add = next((n for n in nodes if kind(n) == "add"), None)
    act = next((n for n in nodes if is_call(n, aten.tanh.default)), None)
    if gemm is None or add is None or act is None or len(shape(gemm.args[0]) or ()) != 2:
        raise NotApplicable("not a 2-d x @ W.t() + b followed by tanh")
    x, weight, bias = gemm.args[0], gemm.args[1].args[0], add.args[1]
    return act, emit_traced(gm.graph, fused, [x, weight, bias], before=act)


PATTERN = Pattern(
    name="linear_bias_tanh", family="toy_tanh", title="Linear+Bias+Tanh", legacy_name="Linear_Bias_Tanh",
    shape_keys=("M", "K", "N"), make_inputs=_inputs, eager=eager,
    manual=(ManualVariant("addmm_tanh", lambda inp: lambda: fused(**inp), "bias in the GEMM, then tanh",
                          rewrite=rewrite_addmm_tanh),),
    # bytes: unfused, the GEMM writes y, the bias add reads and writes it, tanh reads and writes it; fused drops one
    # write and one read of y (the bias add happens in the GEMM's epilogue)
    flops=lambda s: 2 * s["M"] * s["K"] * s["N"] + 2 * s["M"] * s["N"],
    bytes=lambda s, i, fused_: i * (s["M"] * s["K"] + s["N"] * s["K"] + s["N"]
                                   + (3 if fused_ else 5) * s["M"] * s["N"]),
    shapes={"quick": shapes(dict(M=8, K=16, N=32)), "full": shapes(dict(M=8, K=16, N=32)),
            "gpu": shapes(dict(M=1024, K=1024, N=1024))},
)


def match_linear_tanh(ctx: Context, act: Node) -> Candidate | None:
    """tanh(x @ W.t() + b) with W and b parameters: anchored at the tanh, three steps back."""
    add = act.args[0]
    if kind(add) != "add" or not isinstance(add.args[0], Node) or kind(add.args[0]) != "matmul":
        return None
    gemm, bias = add.args[0], add.args[1]
    t = gemm.args[1]
    if kind(t) != "transpose" or not ctx.graph.param(t.args[0]) or not ctx.graph.param(bias):
        return None
    x, weight = gemm.args[0], t.args[0]
    ws = shape(weight)
    if ws is None or val(x) is None or len(ws) != 2:
        return None
    return Candidate("linear_bias_tanh", [gemm, t, add, act], act, {"M": val(x).numel() // ws[1], "K": ws[1],
                     "N": ws[0]}, dtype_name(act) or "float32", {"gemm": gemm.name, "activation": act.name},
                     "x @ W.t() + b, tanh", boundary=[x, weight, bias])


FAMILY = Family("toy_tanh", (PATTERN,), (
    # Legal when the linear's output is read only by the tanh: the fused kernel never writes it.
    Matcher(("tanh",), match_linear_tanh, "legal when the linear's output is read only by the tanh"),
))
