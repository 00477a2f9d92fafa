"""Linear + BatchNorm1d -> one linear on weights and bias with the BatchNorm folded in, made once at rewrite time.

  BN(x W^T + b) = x (W * s)^T + (b - mean) * s + beta,   s = gamma / sqrt(var + eps), per output feature

The fold is :func:`fxfusion.fusions.conv.fused.fold_batchnorm` (the conv family's, computed in float32): the same
per-output-channel scale, on a weight (N, K) instead of (Cout, Cin, k...).  The fused computation
(:func:`folded_linear`) is written once: the pattern's variant calls it, the rewrite traces it into the graph.

Legality, checked here before anything is inserted: the BatchNorm runs in inference mode; its statistics, the
linear's weight and bias are constants of the module; the linear's output is (M, N) and feeds only the BatchNorm.
The folded tensors are new buffers (:func:`fxfusion.graph.edit.add_constant`): the model's own parameters, and any
other path that reads them, are untouched.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from fxfusion.fusions.conv.fused import BN_EPS, fold_batchnorm
from fxfusion.fusions.conv.rewrite import BATCH_NORMS
from fxfusion.graph.edit import NotApplicable, add_constant, arg, aten, constant, emit_traced, is_call, value_of


def folded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias (N): the linear with the BatchNorm already in its weight and bias."""
    return F.linear(x, weight, bias)


def bn_arguments(bn: fx.Node) -> dict:
    """bn_weight, bn_bias, running_mean, running_var, eps and training of a BatchNorm node, whatever its aten form."""
    if bn.target == aten._native_batch_norm_legit_no_training.default:
        names, training = ("bn_weight", "bn_bias", "running_mean", "running_var", "momentum", "eps"), False
    else:  # batch_norm / native_batch_norm: (input, w, b, mean, var, training, momentum, eps[, cudnn])
        names, training = ("bn_weight", "bn_bias", "running_mean", "running_var", "training", "momentum", "eps"), None
    found = dict(zip(names, bn.args[1:1 + len(names)]))
    found["training"] = bool(found.get("training", True)) if training is None else training
    found.setdefault("eps", BN_EPS)
    return found


def bn_output(bn: fx.Node) -> fx.Node | None:
    """The node holding the BatchNorm's normalised tensor (a getitem 0 for the tuple-returning forms)."""
    if bn.target == aten.batch_norm.default:
        return bn
    return next((u for u in bn.users if is_call(u, operator.getitem) and u.args[1] == 0), None)


def rewrite_linear_bn_folded(gm, nodes, group):
    """BN(linear(x)) -> linear(x, W*s, (b - mean)*s + beta), shaped as the site's output (a flatten before the
    BatchNorm and a reshape back after it become one reshape of the folded linear's output, or none)."""
    bn = next((n for n in nodes if is_call(n, *BATCH_NORMS)), None)
    lin = next((n for n in nodes if is_call(n, aten.linear.default)), None)
    if bn is None or lin is None:
        raise NotApplicable("the site is not a linear read by a BatchNorm")
    params = bn_arguments(bn)
    if params["training"]:
        raise NotApplicable("the BatchNorm normalises with batch statistics (training mode): nothing to fold")
    inside = set(nodes)
    if any(u not in inside for u in lin.users):
        raise NotApplicable("the linear's output is read outside the site, which needs the unfolded value")
    outs = [n for n in nodes if any(u not in inside for u in n.users)]
    normed, y = value_of(bn.args[0]), value_of(lin)
    if len(outs) != 1 or not isinstance(normed, torch.Tensor) or normed.dim() != 2 or not isinstance(y, torch.Tensor) \
            or normed.shape[1] != y.shape[-1]:
        raise NotApplicable("BatchNorm1d folds into a linear only when it normalises the linear's output features "
                            "on an (M, N) input")
    old = outs[0]
    weight = constant(gm, lin.args[1], "linear weight")
    bias = constant(gm, arg(lin, 2, "bias", None), "linear bias")
    stats = {k: constant(gm, params[k], f"BatchNorm {k}") for k in ("running_mean", "running_var")}
    gamma, beta = constant(gm, params["bn_weight"], "BatchNorm weight"), constant(gm, params["bn_bias"], "BatchNorm bias")
    n = weight.shape[0]
    gamma = gamma if gamma is not None else torch.ones(n, dtype=weight.dtype, device=weight.device)
    beta = beta if beta is not None else torch.zeros(n, dtype=weight.dtype, device=weight.device)
    w, b = fold_batchnorm(weight, bias, stats["running_mean"], stats["running_var"], gamma, beta, float(params["eps"]))
    site = getattr(group, "site_id", "site")
    with gm.graph.inserting_before(lin):
        w_node = add_constant(gm, site, "weight", w, like=lin.args[0])
        b_node = add_constant(gm, site, "bias", b, like=lin.args[0])
    want = tuple(value_of(old).shape)
    fn = folded_linear if want == tuple(y.shape) else (lambda *a: folded_linear(*a).reshape(want))
    return old, emit_traced(gm.graph, fn, [lin.args[0], w_node, b_node], before=lin, pre_dispatch=True)
