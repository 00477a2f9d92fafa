"""The conv family's fused computations, written once: the patterns' variants call them on tensors, the rewrites put
the very same calls into graphs.

  fold_batchnorm   BN(conv(x, W, b)) = conv(x, W * s, (b - mean) * s + beta) with s = gamma / sqrt(var + eps), per
                   output channel: computed once, when the model is loaded (or the graph rewritten), never per forward.
  fused_conv_call  conv + bias + activation as one library call: on CPU oneDNN's convolution with the activation as
                   a post-op (``torch.ops.mkldnn._convolution_pointwise``; the post-op of each activation is declared
                   with it in :mod:`fxfusion.fusions.activations`: ReLU, SiLU as "swish", ReLU6 as "hardtanh" 0..6,
                   Hardswish, GELU); on CUDA cuDNN's conv + bias + ReLU (``aten.cudnn_convolution_relu``), for ReLU
                   only -- PyTorch exposes no other fused cuDNN convolution epilogue (cuDNN's runtime fusion engine is
                   not reachable from it), so on CUDA the other activations have no one-kernel variant.

``fused_conv_call`` returns the op and its arguments instead of running them: the variant calls ``op(*args)`` with
tensors, the rewrite inserts ``call_function(op, args)`` with graph nodes.  (It is not traced with
:func:`fxfusion.graph.edit.emit_traced`: cuDNN's fused op has no fake-tensor kernel, so it cannot be traced under the
capture's fake mode.)
"""

from __future__ import annotations

from typing import Any

import torch

from fxfusion.fusions.activations import ACTIVATIONS, title
from fxfusion.measure.devices import is_cuda

BN_EPS = 1e-5
ONEDNN_CONV = torch.ops.mkldnn._convolution_pointwise.default
CUDNN_CONV_RELU = torch.ops.aten.cudnn_convolution_relu.default
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def fold_batchnorm(weight, bias, running_mean, running_var, bn_weight, bn_bias, eps=BN_EPS):
    """Conv (or linear) weights and bias with an inference-mode BatchNorm folded in, per output channel (computed in
    float32 for accuracy, float64 for a float64 model: its tolerance is 1e-9)."""
    dtype = weight.dtype
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    scale = bn_weight.to(wide) * torch.rsqrt(running_var.to(wide) + eps)
    folded_w = weight.to(wide) * scale.reshape(-1, *[1] * (weight.dim() - 1))
    conv_b = bias.to(wide) if bias is not None else torch.zeros_like(scale)
    folded_b = (conv_b - running_mean.to(wide)) * scale + bn_bias.to(wide)
    return folded_w.to(dtype), folded_b.to(dtype)


def fused_conv_call(x: Any, weight: Any, bias: Any, stride: list[int], padding: list[int], dilation: list[int],
                    groups: int, act: str, cuda: bool) -> tuple[Any, tuple]:
    """(op, args): act(conv2d(x, weight, bias)) as one cuDNN (``cuda``) or oneDNN call.  x, weight, bias are tensors
    (a variant) or graph nodes (a rewrite); 2-d convolutions, explicit padding."""
    if cuda:
        if act != "relu":
            raise ValueError(fused_unsupported(act, torch.float32, "cuda"))
        return CUDNN_CONV_RELU, (x, weight, bias, list(stride), list(padding), list(dilation), int(groups))
    name, scalars, algorithm = ACTIVATIONS[act].onednn
    return ONEDNN_CONV, (x, weight, bias, list(padding), list(stride), list(dilation), int(groups), name,
                         list(scalars), algorithm)


def fused_unsupported(act: str, dtype: torch.dtype, device) -> str | None:
    """Why conv + bias + ``act`` has no one-kernel call for this dtype and device (None when it has)."""
    what = f"conv+{title(act)}"
    if is_cuda(device):
        if act != "relu":
            return (f"PyTorch exposes no fused cuDNN {what} (cudnn_convolution_relu takes ReLU only; cuDNN's runtime "
                    "fusion engine is not reachable from PyTorch)")
        return None if dtype != torch.float64 else "cuDNN's fused conv+ReLU does not take float64"
    if not torch.backends.mkldnn.is_available():
        return f"this torch build has no oneDNN (mkldnn), which provides the fused {what} on CPU"
    if ACTIVATIONS[act].onednn is None:
        return f"oneDNN has no convolution post-op for {title(act)}"
    if dtype not in ONEDNN_DTYPES:
        return f"oneDNN's fused {what} does not take {dtype}"
    return None
