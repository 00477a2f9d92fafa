"""Applying a plan: rewrite a copy of the captured aten graph so each fusion group runs its winning variant.

:func:`apply` never touches the user's model or the plan's captured graphs; it deep-copies the captured graph and
rewrites the copy, one group at a time:

  1. look the group's nodes up by name in the copy and read the site's structure from the nodes themselves (which
     node is the GEMM, the bias add, the BatchNorm, the softmax...), so a rewrite never trusts a name it cannot see;
  2. check the rewrite's legality where it lives (a conv whose weight feeds another conv is never folded; an
     intermediate used outside the group is never removed) -- a group that fails a check is skipped, with its reason;
  3. insert the variant's nodes just before the node they replace (all their inputs precede it), redirect that
     node's users, erase the site nodes left without users, ``graph.lint()`` and recompile.

The rewrites, by variant name (the names of :mod:`fxfusion.patterns` and :mod:`fxfusion.variants`):

  addmm                 linear chain -> one ``addmm`` (bias in the GEMM); the activation stays as it was
  addmm_epilogue        linear chain + ReLU/GELU(tanh) -> ``_addmm_activation`` (cuBLASLt epilogue; CUDA only)
  bn_folded             conv + BatchNorm -> conv with the BatchNorm folded into new weight and bias buffers
  conv_relu_fused       conv (+ folded BN) + ReLU -> one oneDNN (CPU) / cuDNN (CUDA) conv+ReLU call
  channels_last         conv + BN folded, NHWC input and weights (CUDA only, as measured)
  sdpa                  QK^T -> scale -> mask -> softmax -> PV  ->  ``scaled_dot_product_attention``
  baddbmm_scale         QK^T / sqrt(d) -> ``baddbmm`` with alpha (the scale applied by the GEMM)
  rms_norm_op           x * rsqrt(mean(x^2) + eps) * w -> ``rms_norm``
  triton_add_layernorm  add + LayerNorm -> the Triton kernel (CUDA only)
  compile, compile_*    the group's nodes become a submodule run through ``torch.compile``
"""

from __future__ import annotations

import copy
import math
import operator
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn

from fxfusion.errors import FxFusionError

aten = torch.ops.aten

COMPILE_MODES = {"compile": None, "compile_reduce_overhead": "reduce-overhead"}


class NotApplicable(Exception):
    """A group this rewrite cannot (or must not) apply; the message is the reason, one sentence."""


@dataclass
class RewriteRecord:
    site_id: str
    pattern: str
    variant: str
    applied: bool
    detail: str  # what was done, or why it was not
    new_nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- small graph helpers -------------------------------------------------------------------------------------------

def _is(node: Any, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _val(node: Any):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    v = _val(node)
    return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None


def _attr_tensor(gm: fx.GraphModule, node: Any, what: str) -> torch.Tensor | None:
    """The constant tensor behind a get_attr node (None for a None argument)."""
    if node is None:
        return None
    constants = gm.__dict__.get("_fxfusion_constants", {})
    if isinstance(node, fx.Node) and node.op == "placeholder" and node.name in constants:
        return constants[node.name].detach()
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise NotApplicable(f"the {what} is not a constant of the module (it is {getattr(node, 'op', node)!r}), "
                            "so it cannot be folded at load time")
    obj: Any = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj.detach()


def _scalar(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _device_of(*nodes) -> str:
    for n in nodes:
        v = _val(n)
        if isinstance(v, torch.Tensor):
            return v.device.type
    return "cpu"


# -- linear ---------------------------------------------------------------------------------------------------------

LINEAR_GEMMS = (aten.linear.default, aten.matmul.default, aten.mm.default)
TRANSPOSES = (aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default)


def _is_matrix_transpose(node: fx.Node) -> bool:
    if _is(node, aten.t.default, aten.numpy_T.default):
        return True
    if _is(node, aten.transpose.int):
        dims = {d % 2 for d in node.args[1:3]} if _shape(node.args[0]) and len(_shape(node.args[0])) == 2 else None
        return dims == {0, 1}
    return _is(node, aten.permute.default) and list(node.args[1]) in ([1, 0], [-1, -2], [-1, 0], [1, -2])


@dataclass
class _Linear:
    x: fx.Node
    weight: fx.Node | None  # (N, K), when the site transposes it
    rhs: fx.Node | None  # (K, N), when the site multiplies by it directly
    bias: Any
    head: fx.Node  # the node whose value is x @ W^T + b
    act: fx.Node | None  # the activation applied to head, when it is in the site


def _parse_linear(nodes: list[fx.Node]) -> _Linear:
    gemm = next((n for n in nodes if _is(n, *LINEAR_GEMMS)), None)
    if gemm is None:
        raise NotApplicable("no linear/matmul node in the site")
    inside = set(nodes)
    x, other = gemm.args[0], gemm.args[1]
    weight = rhs = None
    bias = None
    if gemm.target == aten.linear.default:
        weight = other
        bias = _arg(gemm, 2, "bias", None)
    elif isinstance(other, fx.Node) and other in inside and _is_matrix_transpose(other):
        weight = other.args[0]
    else:
        rhs = other
    head = gemm
    if bias is None:
        add = next((u for u in gemm.users if _is(u, aten.add.Tensor) and u in inside), None)
        if add is None:
            raise NotApplicable("the site has no bias add after its GEMM")
        if _scalar(add.kwargs.get("alpha", 1)) != 1.0:
            raise NotApplicable("the bias add has alpha != 1")
        bias = add.args[1] if add.args[0] is gemm else add.args[0]
        head = add
    n_out = (_shape(weight) or (0,))[0] if weight is not None else (_shape(rhs) or (0, 0))[-1]
    if _shape(bias) not in ((n_out,), (1, n_out)):
        raise NotApplicable(f"the bias has shape {_shape(bias)}, not ({n_out},): addmm cannot broadcast it")
    users = [u for u in head.users if u in inside]
    act = users[0] if len(users) == 1 else None
    return _Linear(x, weight, rhs, bias, head, act)


def _emit_addmm(g: fx.Graph, lin: _Linear) -> tuple[fx.Node, fx.Node, tuple[int, ...]]:
    """x as a matrix and the (K, N) right-hand side; the caller reshapes the result back."""
    xs = _shape(lin.x)
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
    if _is(act, aten.relu.default):
        return False
    if _is(act, aten.gelu.default) and act.kwargs.get("approximate", act.args[1] if len(act.args) > 1 else "none") == "tanh":
        return True
    raise NotApplicable("the cuBLASLt epilogue computes only ReLU and GELU(tanh), not this activation")


def rewrite_addmm_epilogue(gm, nodes, group):
    lin = _parse_linear(nodes)
    use_gelu = _epilogue_gelu(lin.act)
    if _device_of(lin.x) != "cuda":
        raise NotApplicable("the fused GEMM epilogue exists only in cuBLASLt (CUDA)")
    g = gm.graph
    with g.inserting_before(lin.act):
        x2, rhs, xs = _emit_addmm(g, lin)
        y = g.call_function(aten._addmm_activation.default, (lin.bias, x2, rhs), {"use_gelu": use_gelu})
        if len(xs) != 2:
            y = g.call_function(aten.reshape.default, (y, [*xs[:-1], -1]))
    return lin.act, y


# -- conv (+ BatchNorm) (+ ReLU) ----------------------------------------------------------------------------------

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
    conv = next((n for n in nodes if _is(n, *CONVS)), None)
    if conv is None:
        raise NotApplicable("no convolution node in the site")
    if conv.target == aten.convolution.default and conv.args[6]:
        raise NotApplicable("transposed convolutions scale the weight along another axis; not folded")
    bn = next((n for n in nodes if _is(n, *BATCH_NORMS)), None)
    bn_out = bn
    if bn is not None and bn.target != aten.batch_norm.default:
        bn_out = next((u for u in bn.users if _is(u, operator.getitem) and u.args[1] == 0), None)
    tail = bn_out if bn is not None else conv
    relu = next((u for u in tail.users if _is(u, aten.relu.default, aten.relu_.default) and u in inside), None) \
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
    from fxfusion.patterns.conv import fold_batchnorm

    weight = _attr_tensor(gm, c.conv.args[1], "conv weight")
    bias = _attr_tensor(gm, _arg(c.conv, 2, "bias", None), "conv bias")
    if c.bn is None:
        return weight, bias
    if _bn_training(c.bn):
        raise NotApplicable("the BatchNorm runs in training mode (batch statistics): nothing to fold")
    _check_conv_not_reused(gm, c.conv)
    a = c.bn.args
    bn_w = _attr_tensor(gm, a[1], "BatchNorm weight")
    bn_b = _attr_tensor(gm, a[2], "BatchNorm bias")
    mean, var = _attr_tensor(gm, a[3], "running mean"), _attr_tensor(gm, a[4], "running variance")
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
        stride, padding = _arg(conv, 3, "stride", [1, 1]), _arg(conv, 4, "padding", [0, 0])
        dilation, groups = _arg(conv, 5, "dilation", [1, 1]), _arg(conv, 6, "groups", 1)

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
        x = g.call_function(aten.clone.default, (c.conv.args[0],), {"memory_format": torch.channels_last})
        y = _conv_with(g, c.conv, x, w, b)
    return c.bn_out, y


# -- attention -----------------------------------------------------------------------------------------------------

SOFTMAXES = (aten.softmax.int, aten._softmax.default)
BMMS = (aten.matmul.default, aten.bmm.default)


def _last_two_swapped(node: fx.Node) -> bool:
    shape = _shape(node.args[0])
    if shape is None:
        return False
    nd = len(shape)
    if _is(node, aten.transpose.int):
        return {node.args[1] % nd, node.args[2] % nd} == {nd - 2, nd - 1}
    if _is(node, aten.permute.default):
        perm = [d % nd for d in node.args[1]]
        return perm == list(range(nd - 2)) + [nd - 1, nd - 2]
    return nd == 2 and _is(node, aten.t.default)


@dataclass
class _Attention:
    q: fx.Node
    kt: fx.Node  # K^T as the site multiplies by it: (..., E, S)
    k: fx.Node | None  # K itself (..., S, E) when the site transposes it
    scale: float
    scaled: fx.Node  # the scores after the scale (what qk_scores returns)
    mask: tuple | None  # ("keep", bool node) | ("fill", bool node, value) | ("add", float node)
    softmax: fx.Node | None
    out: fx.Node | None  # probs @ v
    v: fx.Node | None


def _scale_of(node: fx.Node, inside: set) -> tuple[float, fx.Node] | None:
    """(factor, operand) when node multiplies/divides a site value by a Python scalar."""
    if node not in inside:
        return None
    if _is(node, aten.div.Tensor, aten.div.Scalar) and _scalar(node.args[1]) is not None:
        return 1.0 / _scalar(node.args[1]), node.args[0]
    if _is(node, aten.mul.Tensor, aten.mul.Scalar):
        a, b = node.args[:2]
        if _scalar(b) is not None:
            return _scalar(b), a
        if _scalar(a) is not None:
            return _scalar(a), b
    return None


def _parse_scores(head: fx.Node, inside: set) -> tuple[fx.Node, fx.Node, float, tuple | None]:
    """Walk back from the value softmax reads: [mask] [scale]* QK^T.  Returns q, kt, scale, mask."""
    mask, scale, node, seen_scale = None, 1.0, head, False
    while True:
        if _is(node, *BMMS) and node in inside:
            q, kt = node.args[0], node.args[1]
            break
        s = _scale_of(node, inside)
        if s is not None:
            scale *= s[0]
            node, seen_scale = s[1], True
            continue
        if _is(node, aten.masked_fill.Scalar) and node in inside and mask is None and not seen_scale:
            value = _scalar(node.args[2])
            if value is None:
                raise NotApplicable("the mask fill value is not a number")
            mask = ("keep", node.args[1]) if value == -math.inf else ("fill", node.args[1], value)
            node = node.args[0]
            continue
        if _is(node, aten.add.Tensor) and node in inside and mask is None and not seen_scale:
            if _scalar(node.kwargs.get("alpha", 1)) != 1.0:
                raise NotApplicable("the additive mask has alpha != 1")
            a, b = node.args[:2]
            scores, m = (a, b) if isinstance(a, fx.Node) and a in inside else (b, a)
            if not isinstance(m, fx.Node) or _val(m) is None or not _val(m).is_floating_point():
                raise NotApplicable("the additive mask is not a floating-point tensor")
            mask, node = ("add", m), scores
            continue
        raise NotApplicable(f"cannot read the attention scores at node {getattr(node, 'name', node)!r} "
                            "(expected mask, scale or QK^T, in that order from the softmax back)")
    for side in ("q", "kt"):  # a scale applied to q (or K^T) before the GEMM is the same scale
        operand = q if side == "q" else kt
        s = _scale_of(operand, inside) if isinstance(operand, fx.Node) else None
        if s is not None:
            scale *= s[0]
            q, kt = (s[1], kt) if side == "q" else (q, s[1])
    return q, kt, scale, mask


def _parse_attention(nodes: list[fx.Node], need_pv: bool) -> _Attention:
    inside = set(nodes)
    softmax = next((n for n in nodes if _is(n, *SOFTMAXES)), None)
    out = v = None
    if softmax is not None:
        dim, ndim = softmax.args[1], len(_shape(softmax) or (0, 0))
        if dim % ndim != ndim - 1:
            raise NotApplicable("the softmax is not over the last dimension")
        if softmax.target == aten.softmax.int and _arg(softmax, 2, "dtype", None) is not None:
            raise NotApplicable("the softmax changes dtype")
        if softmax.target == aten._softmax.default and softmax.args[2]:
            raise NotApplicable("the softmax converts half to float")
        probs, seen = softmax, set()
        for n in nodes:  # PV: a matmul reading the probabilities (through eval-mode dropout at most)
            if _is(n, *BMMS) and n.args[0] in (softmax, *seen):
                out, v = n, n.args[1]
            if _is(n, aten.dropout.default) and n.args[0] is probs and (n.args[1] == 0 or not n.args[2]):
                seen.add(n)
                probs = n
        scores = softmax.args[0]
    else:
        scores = nodes[-1]
    if need_pv and out is None:
        raise NotApplicable("no probabilities @ V matmul in the site")
    q, kt, scale, mask = _parse_scores(scores, inside)
    if not need_pv and mask is not None:
        raise NotApplicable("a masked site is rewritten only as a whole attention (SDPA)")
    k = kt.args[0] if isinstance(kt, fx.Node) and kt in inside and _last_two_swapped(kt) else None
    scaled = scores
    return _Attention(q, kt, k, scale, scaled, mask, softmax, out, v)


def rewrite_sdpa(gm, nodes, group):
    a = _parse_attention(nodes, need_pv=True)
    g = gm.graph
    qv = _val(a.q)
    if a.mask is not None and a.mask[0] == "add" and _val(a.mask[1]).dtype != qv.dtype:
        raise NotApplicable("the additive mask's dtype differs from q's; SDPA needs them equal")
    with g.inserting_before(a.out):
        k = a.k if a.k is not None else g.call_function(aten.transpose.int, (a.kt, -2, -1))
        mask = None
        if a.mask is not None:
            kind, m = a.mask[0], a.mask[1]
            if kind == "keep":  # masked_fill(True -> -inf) drops those scores; SDPA's boolean mask keeps True
                mask = g.call_function(aten.logical_not.default, (m,))
            elif kind == "fill":  # a finite fill value: the same softmax as adding it where the mask is True
                as_float = g.call_function(aten._to_copy.default, (m,), {"dtype": qv.dtype})
                mask = g.call_function(aten.mul.Tensor, (as_float, a.mask[2]))
            else:
                mask = m
        y = g.call_function(aten.scaled_dot_product_attention.default, (a.q, k, a.v, mask, 0.0, False),
                            {"scale": a.scale})
    return a.out, y


def rewrite_baddbmm_scale(gm, nodes, group):
    a = _parse_attention(nodes, need_pv=False)
    qs, ks = _shape(a.q), _shape(a.kt)
    if qs is None or ks is None or qs[:-2] != ks[:-2]:
        raise NotApplicable("q and K^T must have the same batch dimensions for one baddbmm")
    if a.scaled is a.kt or _is(a.scaled, *BMMS):
        raise NotApplicable("the scores are not scaled: nothing for alpha to fold")
    *batch, L, E = qs
    S = ks[-1]
    bh = math.prod(batch)
    qv = _val(a.q)
    g = gm.graph
    with g.inserting_before(a.scaled):
        q3 = g.call_function(aten.reshape.default, (a.q, [bh, L, E]))
        kt3 = g.call_function(aten.reshape.default, (a.kt, [bh, E, S]))
        empty = g.call_function(aten.empty.memory_format, ([bh, L, S],), {"dtype": qv.dtype, "device": qv.device})
        y = g.call_function(aten.baddbmm.default, (empty, q3, kt3), {"beta": 0.0, "alpha": a.scale})
        y = g.call_function(aten.reshape.default, (y, [*batch, L, S]))
    return a.scaled, y


# -- norms ---------------------------------------------------------------------------------------------------------

def rewrite_rms_norm(gm, nodes, group):
    inside = set(nodes)
    pow_ = next((n for n in nodes if _is(n, aten.pow.Tensor_Scalar) and n.args[1] == 2), None)
    add = next((n for n in nodes if _is(n, aten.add.Tensor, aten.add.Scalar) and _scalar(n.args[1]) is not None),
               None)
    if pow_ is None or add is None:
        raise NotApplicable("cannot find x.pow(2) and the + eps of the RMSNorm")
    x, eps, last = pow_.args[0], _scalar(add.args[1]), nodes[-1]
    if not _is(last, aten.mul.Tensor):
        raise NotApplicable("the RMSNorm does not end with the weight multiply")
    weight = next((a for a in last.args[:2] if isinstance(a, fx.Node) and a not in inside), None)
    n = (_shape(x) or (0,))[-1]
    if weight is None or _shape(weight) != (n,):
        raise NotApplicable("the RMSNorm weight is not a ({n},) tensor")
    with gm.graph.inserting_before(last):
        y = gm.graph.call_function(aten.rms_norm.default, (x, [n], weight, eps))
    return last, y


def rewrite_triton_add_layernorm(gm, nodes, group):
    from fxfusion.kernels import add_layernorm, triton_unavailable

    ln = next((n for n in nodes if _is(n, aten.layer_norm.default)), None)
    if ln is None or not _is(ln.args[0], aten.add.Tensor) or ln.args[0] not in set(nodes):
        raise NotApplicable("no add -> layer_norm chain in the site")
    if _device_of(ln) != "cuda" or triton_unavailable():
        raise NotApplicable("the fused add+LayerNorm is a Triton kernel, for CUDA only")
    add = ln.args[0]
    x, r = add.args[:2]
    with gm.graph.inserting_before(ln):
        y = gm.graph.call_function(add_layernorm, (x, r, _arg(ln, 2, "weight", None), _arg(ln, 3, "bias", None),
                                                   _arg(ln, 4, "eps", 1e-5)))
    return ln, y


# -- torch.compile regions -----------------------------------------------------------------------------------------

class CompiledRegion(nn.Module):
    """A fusion group lifted into its own GraphModule and run through torch.compile (compiled on first call)."""

    def __init__(self, region: fx.GraphModule, mode: str | None) -> None:
        super().__init__()
        self.region = region
        self.mode = mode
        self.__dict__["_compiled"] = None  # not a submodule: the region's parameters are registered once

    def forward(self, *args):
        if self.__dict__["_compiled"] is None:
            self.__dict__["_compiled"] = torch.compile(self.region, mode=self.mode, dynamic=False)
        return self.__dict__["_compiled"](*args)

    def __deepcopy__(self, memo):
        return CompiledRegion(copy.deepcopy(self.region, memo), self.mode)


def rewrite_compiled(gm, nodes, group):
    from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

    mode = COMPILE_MODES[group.variant]
    device = _device_of(*nodes)
    if mode == "reduce-overhead" and device != "cuda":
        raise NotApplicable("reduce-overhead captures CUDA graphs, which exist only on CUDA")
    prefix = f"fxfusion_region_{re.sub(r'[^0-9a-zA-Z]', '_', group.site_id)}_"
    fuse_by_partitions(gm, [dict.fromkeys(nodes)], prefix=prefix)
    name = prefix + "0"
    gm.add_submodule(name, CompiledRegion(getattr(gm, name), mode))
    return None


REWRITES: dict[str, Callable] = {
    "addmm": rewrite_addmm,
    "addmm_epilogue": rewrite_addmm_epilogue,
    "bn_folded": rewrite_bn_folded,
    "conv_relu_fused": rewrite_conv_relu_fused,
    "channels_last": rewrite_channels_last,
    "sdpa": rewrite_sdpa,
    "baddbmm_scale": rewrite_baddbmm_scale,
    "rms_norm_op": rewrite_rms_norm,
    "triton_add_layernorm": rewrite_triton_add_layernorm,
    "compile": rewrite_compiled,
    "compile_reduce_overhead": rewrite_compiled,
}


# -- the driver ----------------------------------------------------------------------------------------------------

def _erase_dead(g: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase the site nodes left without users (and constants only they read), last first."""
    feeders = set()
    for n in reversed(nodes):
        if n.graph is g and not n.users and n.op != "output":
            feeders.update(a for a in n.all_input_nodes if a.op == "get_attr")
            g.erase_node(n)
    for a in feeders:
        if not a.users:
            g.erase_node(a)


def rewrite_group(gm: fx.GraphModule, group) -> RewriteRecord:
    """Apply one group's variant to ``gm`` in place; a group that cannot be applied leaves ``gm`` as it was."""
    record = RewriteRecord(group.site_id, group.pattern, group.variant, False, "")
    rewrite = REWRITES.get(group.variant)
    if rewrite is None:
        record.detail = f"no rewrite for variant {group.variant!r}"
        return record
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [name for name in group.nodes if name not in by_name]
    if missing:
        record.detail = f"nodes {', '.join(missing)} are not in the graph"
        return record
    nodes = [by_name[name] for name in group.nodes]
    before = {n.name for n in gm.graph.nodes}
    buffers_before = set(gm._buffers)
    try:
        replaced = rewrite(gm, nodes, group)
        if replaced is not None:
            old, new = replaced
            new.meta.update({k: v for k, v in old.meta.items() if k in ("val", "tensor_meta", "stack_trace",
                                                                          "nn_module_stack")})
            old.replace_all_uses_with(new)
            _erase_dead(gm.graph, nodes)
        gm.graph.lint()
    except NotApplicable as exc:
        for n in reversed([n for n in gm.graph.nodes if n.name not in before]):
            gm.graph.erase_node(n)
        for name in set(gm._buffers) - buffers_before:
            del gm._buffers[name]
        record.detail = str(exc)
        return record
    gm.recompile()
    record.applied = True
    record.new_nodes = [n.name for n in gm.graph.nodes if n.name not in before]
    record.detail = f"{group.variant}: {len(nodes)} nodes -> {len(record.new_nodes)}"
    return record


def _runnable_graph(plan, index: int, model: nn.Module) -> fx.GraphModule | None:
    """A fresh, runnable copy of captured graph ``index``: the exported program's module (parameters as get_attr
    constants, same compute node names as the captured graph), or the captured graph itself when it has no program.
    """
    captured = plan.captured
    program = captured.programs[index] if index < len(captured.programs) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree spec deprecation notes on deepcopy
        if program is not None:
            gm = copy.deepcopy(program.module())
        else:
            gm = copy.deepcopy(captured.graphs[index])
            if any(n.op == "placeholder" and n.name in (captured.parameters[index] if index < len(
                    captured.parameters) else {}) for n in gm.graph.nodes) and captured.method == "export":
                return None  # lifted parameters and no program to run them with
    # Parameters passed to the graph as inputs (Dynamo subgraphs): their values, so BatchNorm can be folded.
    names = captured.parameters[index] if index < len(captured.parameters) else {}
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    gm.__dict__["_fxfusion_constants"] = {ph: tensors[p] for ph, p in names.items() if p in tensors}
    return gm


def _check_model(model, plan) -> None:
    from fxfusion.plan import FusionPlan

    if not isinstance(plan, FusionPlan):
        raise FxFusionError(f"apply() takes a FusionPlan, got {type(plan).__name__}; make one with fxfusion.plan()")
    if not isinstance(model, nn.Module):
        raise FxFusionError(f"apply() takes the nn.Module the plan was made for, got {type(model).__name__}")


def _planned(model: nn.Module, plan, groups) -> nn.Module:
    captured = plan.captured
    if captured.method == "export":
        gm = _runnable_graph(plan, 0, model)
        if gm is None:
            raise FxFusionError("the captured graph has its parameters lifted to inputs and no exported program to "
                                "run it with; capture the model with fxfusion.capture.capture")
        gm.fxfusion_rewrites = [rewrite_group(gm, g) for g in groups]
        return gm
    return _planned_dynamo(model, plan, groups)


def apply(model: nn.Module, plan) -> nn.Module:
    """The planned model: a rewritten copy of the plan's captured graph(s).  ``model`` and the plan are unchanged.

    The returned module carries ``fxfusion_rewrites``: one :class:`RewriteRecord` per group, applied or not (and
    why not).  For a Dynamo capture (graph breaks) it is the model run under torch.compile with a backend that
    hands Dynamo the rewritten subgraphs in capture order.
    """
    _check_model(model, plan)
    return _planned(model, plan, plan.groups)


def captured_module(model: nn.Module, plan) -> nn.Module:
    """The captured model with no group applied: what the planned model runs, minus the rewrites."""
    _check_model(model, plan)
    return _planned(model, plan, [])


class _ReplayBackend:
    """A Dynamo backend that returns, for the i-th subgraph Dynamo compiles, the i-th rewritten captured graph.

    Dynamo compiles the subgraphs of one model in the order they run, as it did during capture; a subgraph whose
    inputs do not match the captured one's shapes and dtypes (a recompile, another path) runs unchanged.
    """

    def __init__(self, modules: list[nn.Module | None], expected: list[tuple]) -> None:
        self.modules, self.expected, self.calls, self.mismatches = modules, expected, 0, []

    @staticmethod
    def _signature(inputs) -> list:
        return [(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x) for x in inputs]

    def __call__(self, gm: fx.GraphModule, example_inputs):
        i, self.calls = self.calls, self.calls + 1
        if i < len(self.modules) and self.modules[i] is not None:
            if self._signature(example_inputs) == self._signature(self.expected[i]):
                module = self.modules[i]
                return lambda *args: module(*args)
            self.mismatches.append(f"subgraph {i} does not match the captured one; it runs unchanged")
        return gm.forward


def _planned_dynamo(model: nn.Module, plan, groups) -> nn.Module:
    captured = plan.captured
    modules, records = [], []
    for i in range(len(captured.graphs)):
        mine = [g for g in groups if g.graph_index == i]
        gm = _runnable_graph(plan, i, model) if captured.programs and captured.programs[i] is not None else None
        if gm is None:
            records += [RewriteRecord(g.id, g.pattern, g.variant, False, f"subgraph {i} did not export; "
                                      "it runs unchanged") for g in mine]
        else:
            records += [rewrite_group(gm, g) for g in mine]
        modules.append(gm)
    backend = _ReplayBackend(modules, list(captured.graph_inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        copy_of_model = copy.deepcopy(model)
    planned = torch.compile(copy_of_model, backend=backend, dynamic=False)
    planned.fxfusion_rewrites = records
    planned.fxfusion_backend = backend
    return planned
