"""Conv (+ BatchNorm) (+ ReLU): BatchNorm folded into new weight/bias buffers, optionally with a fused ReLU.

Legality, checked here before anything is inserted: the BatchNorm runs in inference mode; its statistics and the
conv's weights are constants; the conv's weight feeds no other node (a module reused on two paths is never folded:
PyTorch issue 104593); the conv's output feeds only the BatchNorm.  The folded tensors are new buffers on the planned
module, so the original parameters -- and any other path that reads them -- are untouched.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import torch
from torch import fx

from fxfusion.graph.edit import NotApplicable, arg, constant, is_call, aten

BN_EPS = 1e-5


def fold_batchnorm(weight, bias, running_mean, running_var, bn_weight, bn_bias, eps=BN_EPS):
    """Conv weights and bias with an inference-mode BatchNorm folded in (computed in float32 for accuracy)."""
    dtype = weight.dtype
    scale = bn_weight.float() * torch.rsqrt(running_var.float() + eps)
    folded_w = weight.float() * scale.reshape(-1, *[1] * (weight.dim() - 1))
    conv_b = bias.float() if bias is not None else torch.zeros_like(scale)
    folded_b = (conv_b - running_mean.float()) * scale + bn_bias.float()
    return folded_w.to(dtype), folded_b.to(dtype)



CONVS = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default,
         aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding)
BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default,
               aten.native_batch_norm.default, aten._native_batch_norm_legit.default)


@dataclass
class _Conv:
    conv: fx.Node
    bn: fx.Node | None
    bn_out: fx.Node | None  # the BN's tensor output (a getitem for the tuple-returning BN ops)
    relu: fx.Node | None


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
    relu = next((u for u in tail.users if is_call(u, aten.relu.default, aten.relu_.default) and u in inside), None) \
        if tail is not None else None
    return _Conv(conv, bn, bn_out, relu)


def _bn_training(bn: fx.Node) -> bool:
    if bn.target == aten._native_batch_norm_legit_no_training.default:
        return False
    if bn.target == aten._native_batch_norm_legit.default:
        return bool(bn.args[5]) if len(bn.args) == 8 else True
    return bool(bn.args[5])


def _check_conv_not_reused(gm: fx.GraphModule, conv: fx.Node) -> None:
    """PyTorch issue 104593: folding BN into a conv module that runs on two paths changes the other path."""
    w = conv.args[1]
    if not isinstance(w, fx.Node):
        raise NotApplicable("the conv weight is not a graph value")
    same = [n for n in gm.graph.nodes if n is not w and n.op == w.op and n.target == w.target] + [w]
    users = {u for n in same for u in n.users}
    if any(u is not conv for u in users):
        raise NotApplicable("the conv's weight is used by another node (a conv reused on two paths): folding "
                            "BatchNorm into it would change the other path (PyTorch issue 104593)")
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


def _conv_geometry(conv: fx.Node) -> tuple[list[int], list[int], list[int], int]:
    if conv.target != aten.conv2d.default and not (conv.target == aten.convolution.default
                                                  and len(conv.args[1].meta["val"].shape) == 4):
        raise NotApplicable("the fused conv+ReLU kernels take 2-d convolutions with explicit padding only")
    if conv.target == aten.convolution.default:
        stride, padding, dilation, groups = conv.args[3], conv.args[4], conv.args[5], conv.args[8]
    else:
        stride, padding = arg(conv, 3, "stride", [1, 1]), arg(conv, 4, "padding", [0, 0])
        dilation, groups = arg(conv, 5, "dilation", [1, 1]), arg(conv, 6, "groups", 1)

    def pair(v):
        return list(v) * 2 if len(v) == 1 else list(v)

    return pair(stride), pair(padding), pair(dilation), int(groups)


def rewrite_conv_relu_fused(gm, nodes, group):
    c = _parse_conv(nodes)
    if c.relu is None:
        raise NotApplicable("no ReLU in the site to fuse")
    stride, padding, dilation, groups = _conv_geometry(c.conv)
    weight, bias = _fold(gm, c)
    device = weight.device.type
    if device == "cpu" and not torch.backends.mkldnn.is_available():
        raise NotApplicable("this torch build has no oneDNN, which provides the fused conv+ReLU on CPU")
    g = gm.graph
    with g.inserting_before(c.relu):
        w = _register(gm, group.site_id, "weight", weight)
        b = _register(gm, group.site_id, "bias", bias) if bias is not None else None
        x = c.conv.args[0]
        if device == "cuda":
            y = g.call_function(aten.cudnn_convolution_relu.default, (x, w, b, stride, padding, dilation, groups))
        else:
            y = g.call_function(torch.ops.mkldnn._convolution_pointwise.default,
                                (x, w, b, padding, stride, dilation, groups, "relu", [], None))
    return c.relu, y


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
