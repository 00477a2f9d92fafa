"""Conv (+ BatchNorm) (+ activation): BatchNorm folded into new weight/bias buffers, optionally with the activation
fused into the same oneDNN/cuDNN call (:mod:`fxfusion.fusions.conv.fused`, where those computations are written).

Legality, checked here before anything is inserted: the BatchNorm runs in inference mode; its statistics and the
conv's weights are constants (get_attr, or parameters lifted to placeholders of a Dynamo subgraph and bound to the
model's tensors by :func:`fxfusion.graph.edit.bind_constants`); the conv's weight parameter is read by no other node
of the graph (a module reused on two paths is not folded: see :mod:`fxfusion.fusions.conv.match`); the conv's output
feeds only the BatchNorm.  The folded tensors are new buffers on the planned module, so the original parameters --
and any other path that reads them -- are untouched.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import torch
from torch import fx

from fxfusion.fusions.activations import activation
from fxfusion.fusions.conv.fused import fold_batchnorm, fused_conv_call, fused_unsupported
from fxfusion.graph.edit import NotApplicable, arg, constant, is_call, aten, parameter_name, readers


CONVS = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default,
         aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding)
# Ops that only move elements, which an elementwise activation commutes with (the conv matcher's layout chain)
LAYOUT_OPS = (aten.flatten.using_ints, aten.transpose.int, aten.permute.default, aten.view.default,
              aten.reshape.default, aten._unsafe_view.default)
BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default,
               aten.native_batch_norm.default, aten._native_batch_norm_legit.default)


@dataclass
class _Conv:
    conv: fx.Node
    bn: fx.Node | None
    bn_out: fx.Node | None  # the BN's tensor output (a getitem for the tuple-returning BN ops)
    act: fx.Node | None  # the activation node of the site, when it has one
    act_name: str | None  # its name in fxfusion.fusions.activations ("relu", "silu", ...)
    between: list  # layout ops (flatten, transpose) of the site between the conv (or BN) and the activation


def _parse_conv(nodes: list[fx.Node]) -> _Conv:
    inside = set(nodes)
    conv = next((n for n in nodes if is_call(n, *CONVS)), None)
    if conv is None:
        raise NotApplicable("no convolution node in the site")
    if conv.target == aten.convolution.default and conv.args[6]:
        raise NotApplicable("transposed convolutions scale the weight along another axis; not folded")
    bn = next((n for n in nodes if is_call(n, *BATCH_NORMS)), None)
    bn_out = bn
    if bn is not None and bn.target != aten.batch_norm.default:
        bn_out = next((u for u in bn.users if is_call(u, operator.getitem) and u.args[1] == 0), None)
    tail = bn_out if bn is not None else conv
    between = []
    while tail is not None and len(tail.users) == 1 and next(iter(tail.users)) in inside \
            and is_call(next(iter(tail.users)), *LAYOUT_OPS):
        tail = next(iter(tail.users))
        between.append(tail)
    act = next((u for u in tail.users if u in inside and activation(u)), None) if tail is not None else None
    return _Conv(conv, bn, bn_out, act, activation(act) if act is not None else None, between)


def _bn_training(bn: fx.Node) -> bool:
    if bn.target == aten._native_batch_norm_legit_no_training.default:
        return False
    if bn.target == aten._native_batch_norm_legit.default:
        return bool(bn.args[5]) if len(bn.args) == 8 else True
    return bool(bn.args[5])


def _check_conv_not_reused(gm: fx.GraphModule, conv: fx.Node) -> None:
    """The conv's weight parameter feeds this conv alone (however many nodes of the graph stand for it), and the
    conv's output feeds the BatchNorm alone."""
    w = conv.args[1]
    if not isinstance(w, fx.Node):
        raise NotApplicable("the conv weight is not a graph value")
    others = [u.name for u in readers(gm, w) if u is not conv]
    if others:
        raise NotApplicable(f"the conv's weight {parameter_name(gm, w) or w.name} is also read by "
                            f"{', '.join(others)} (a conv reused on two paths): fxfusion does not fold BatchNorm into "
                            "a shared conv (folding in place, as torch.fx's fuse does, changes the other path: "
                            "PyTorch issue 104593)")
    if len(conv.users) != 1:
        raise NotApplicable("the conv's output is used outside the BatchNorm, which needs the unfolded value")


def _fold(gm: fx.GraphModule, c: _Conv) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conv's weight and bias with the BatchNorm folded in (the conv's own when there is no BN)."""

    weight = constant(gm, c.conv.args[1], "conv weight")
    bias = constant(gm, arg(c.conv, 2, "bias", None), "conv bias")
    if c.bn is None:
        return weight, bias
    if _bn_training(c.bn):
        raise NotApplicable("the BatchNorm runs in training mode (batch statistics): nothing to fold")
    _check_conv_not_reused(gm, c.conv)
    a = c.bn.args
    bn_w = constant(gm, a[1], "BatchNorm weight")
    bn_b = constant(gm, a[2], "BatchNorm bias")
    mean, var = constant(gm, a[3], "running mean"), constant(gm, a[4], "running variance")
    if mean is None or var is None:
        raise NotApplicable("the BatchNorm keeps no running statistics")
    eps = a[6] if c.bn.target == aten._native_batch_norm_legit_no_training.default else a[7]
    cout = weight.shape[0]
    bn_w = torch.ones(cout, dtype=weight.dtype, device=weight.device) if bn_w is None else bn_w
    bn_b = torch.zeros(cout, dtype=weight.dtype, device=weight.device) if bn_b is None else bn_b
    # fold_batchnorm scales a 4-d weight per output channel; any conv weight is (Cout, ...), so flatten the rest
    w4 = weight.reshape(cout, -1, 1, 1)
    folded_w, folded_b = fold_batchnorm(w4, bias, mean, var, bn_w, bn_b, eps=float(eps))
    return folded_w.reshape(weight.shape), folded_b


def _register(gm: fx.GraphModule, site_id: str, name: str, tensor: torch.Tensor) -> fx.Node:
    attr = f"_fxfusion_{re.sub(r'[^0-9a-zA-Z]', '_', site_id)}_{name}"
    gm.register_buffer(attr, tensor.contiguous() if name != "weight_cl" else tensor)
    return gm.graph.get_attr(attr)


def _conv_with(g: fx.Graph, conv: fx.Node, x: fx.Node, w: fx.Node, b: fx.Node | None) -> fx.Node:
    args = list(conv.args)
    if len(args) < 3:
        args += [None] * (3 - len(args))
    args[0], args[1], args[2] = x, w, b
    kwargs = {k: v for k, v in conv.kwargs.items() if k != "bias"}
    return g.call_function(conv.target, tuple(args), kwargs)


def rewrite_bn_folded(gm, nodes, group):
    c = _parse_conv(nodes)
    if c.bn is None:
        raise NotApplicable("no BatchNorm in the site to fold")
    folded_w, folded_b = _fold(gm, c)
    g = gm.graph
    with g.inserting_before(c.bn_out):
        w = _register(gm, group.site_id, "weight", folded_w)
        b = _register(gm, group.site_id, "bias", folded_b)
        y = _conv_with(g, c.conv, c.conv.args[0], w, b)
    return c.bn_out, y


def _conv_geometry(conv: fx.Node, dims: int) -> tuple[list[int], list[int], list[int], int]:
    """(stride, padding, dilation, groups) of a 1-d or 2-d conv, one entry per spatial dim."""
    if dims not in (1, 2) or conv.target not in (aten.conv1d.default, aten.conv2d.default, aten.convolution.default):
        raise NotApplicable("the fused conv+activation kernels take 1-d and 2-d convolutions with explicit padding "
                            "only")
    if conv.target == aten.convolution.default:
        stride, padding, dilation, groups = conv.args[3], conv.args[4], conv.args[5], conv.args[8]
    else:
        stride, padding = arg(conv, 3, "stride", [1] * dims), arg(conv, 4, "padding", [0] * dims)
        dilation, groups = arg(conv, 5, "dilation", [1] * dims), arg(conv, 6, "groups", 1)

    def per_dim(v):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v * dims if len(v) == 1 else v

    return per_dim(stride), per_dim(padding), per_dim(dilation), int(groups)


def rewrite_conv_act_fused(gm, nodes, group):
    """conv (+ BN folded) + activation -> one oneDNN/cuDNN call (fused.fused_conv_call); a 1-d conv runs as a 2-d
    conv of height 1, as the measured variant does (its input unsqueezed, its output squeezed back)."""
    c = _parse_conv(nodes)
    if c.act is None:
        raise NotApplicable("no activation in the site to fuse")
    weight, bias = _fold(gm, c)
    dims = weight.dim() - 2
    stride, padding, dilation, groups = _conv_geometry(c.conv, dims)
    device = weight.device.type
    why = fused_unsupported(c.act_name, weight.dtype, device)
    if why is not None:
        raise NotApplicable(why)
    if dims == 1:
        weight, stride, padding, dilation = weight.unsqueeze(2), [1] + stride, [0] + padding, [1] + dilation
    if c.between and c.bn is not None:
        raise NotApplicable("a layout change between a BatchNorm and the activation: not fused")
    g = gm.graph
    with g.inserting_before(c.between[0] if c.between else c.act):  # the conv's value is read from there on
        w = _register(gm, group.site_id, "weight", weight)
        b = _register(gm, group.site_id, "bias", bias) if bias is not None else None
        x = c.conv.args[0] if dims == 2 else g.call_function(aten.unsqueeze.default, (c.conv.args[0], 2))
        op, args = fused_conv_call(x, w, b, stride, padding, dilation, groups, c.act_name, cuda=device == "cuda")
        y = g.call_function(op, args)
        if dims == 1:
            y = g.call_function(aten.squeeze.dim, (y, 2))
    if c.between:  # act(layout(conv(x))) = layout(act(conv(x))): the layout ops read the fused conv, the act goes
        return [(c.conv, y), (c.act, c.between[-1])]
    return c.act, y


def rewrite_channels_last(gm, nodes, group):
    c = _parse_conv(nodes)
    if c.bn is None:
        raise NotApplicable("channels_last is applied on top of BN folding; the site has no BatchNorm")
    folded_w, folded_b = _fold(gm, c)
    if folded_w.dim() != 4:
        raise NotApplicable("channels_last is a 4-d (NHWC) layout")
    g = gm.graph
    with g.inserting_before(c.bn_out):
        w = _register(gm, group.site_id, "weight_cl", folded_w.contiguous(memory_format=torch.channels_last))
        b = _register(gm, group.site_id, "bias", folded_b)
        # contiguous, not clone: a no-op on an input already NHWC (the output of the previous channels_last conv),
        # so a chain of such convs converts once, as the measured variant (input converted ahead of time) assumes
        x = g.call_function(aten.contiguous.default, (c.conv.args[0],), {"memory_format": torch.channels_last})
        y = _conv_with(g, c.conv, x, w, b)
    return c.bn_out, y
