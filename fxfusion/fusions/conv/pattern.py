"""Conv1d / Conv2d (+ BatchNorm) (+ activation).  Shape keys: B, Cin, Cout, the spatial sizes (L for 1-D; H, W for
2-D), k (kernel size in every spatial dim, stride 1, 'same' padding), G (groups; G = Cin is depthwise).

The patterns (:data:`PATTERNS`): conv{1,2}d_relu, conv{1,2}d_bn, conv{1,2}d_bn_relu (the original suite's), and for
MobileNetV2/V3- and EfficientNet-style blocks conv2d_bn_<act> with act in SiLU, ReLU6, Hardswish, GELU, plus the convs
of their squeeze-excitation blocks, which have a bias and no BatchNorm: conv2d_silu (EfficientNet's reduce conv),
conv2d_sigmoid and conv2d_hardsigmoid (the expand conv and its gate, EfficientNet and MobileNetV3).

Variants, besides eager and the compile ones:
  bn_folded        BatchNorm folded into the conv's weight and bias at load time; the activation runs after the conv
  conv_<act>_fused (BN folded, then) conv + bias + activation in one call: oneDNN's convolution with the activation
                   as a post-op on CPU, cuDNN's conv+bias+ReLU on CUDA (ReLU only; see fxfusion.fusions.conv.fused)
  channels_last    BN folded, NHWC input and weights (GPU only: a layout change, offered on top of the fold)

Bytes (itemsize s; X = B Cin * spatial, Y = B Cout * spatial, Wt = Cout Cin/G k^d), every op reading its inputs and
writing its output:
  conv     reads x (X), weight (Wt) [+ bias Cout], writes y (Y)
  BN       reads y and 4 Cout statistics/affine params, writes y
  act      reads y, writes y (any activation: elementwise, one read and one write)
  fused    = conv only, with the folded bias: X + Wt + Cout + Y.  BN folding moves BN into the weights once, at
             load time, so its cost is not part of the forward pass; the activation is applied in registers.
FLOPs: 2 Y (Cin/G) k^d for the conv, one per output element for the bias, two for BN (scale and shift) and one for
the activation -- the library's convention for every activation (as in the linear family): SiLU's exp and division,
GELU's erf, Hardswish's clamp and product are counted as one op, like ReLU's max.  A 1-D conv's fused conv+ReLU runs
as a 2-D conv of height 1 (cuDNN and oneDNN fuse 2-D convs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxfusion.fusions.activations import ACTIVATIONS
from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes
from fxfusion.fusions.conv.fused import BN_EPS, fold_batchnorm, fused_conv_call, fused_unsupported
from fxfusion.fusions.conv.rewrite import rewrite_bn_folded, rewrite_channels_last, rewrite_conv_act_fused
from fxfusion.measure.devices import is_cuda


SHAPES_2D = {
    "quick": shapes(dict(B=1, Cin=16, Cout=16, H=16, W=16, k=3, G=1), dict(B=4, Cin=128, Cout=128, H=28, W=28, k=3, G=1)),
    "full": shapes(
        dict(B=1, Cin=16, Cout=16, H=16, W=16, k=3, G=1),
        dict(B=4, Cin=128, Cout=128, H=28, W=28, k=3, G=1),
        dict(B=8, Cin=256, Cout=256, H=56, W=56, k=3, G=1),
        dict(B=8, Cin=128, Cout=128, H=56, W=56, k=3, G=128),
    ),
    "gpu": shapes(
        dict(B=1, Cin=16, Cout=16, H=16, W=16, k=3, G=1),
        dict(B=4, Cin=128, Cout=128, H=28, W=28, k=3, G=1),
        dict(B=32, Cin=256, Cout=256, H=56, W=56, k=3, G=1),
        dict(B=32, Cin=128, Cout=128, H=56, W=56, k=3, G=128),
    ),
}
SHAPES_1D = {
    "quick": shapes(dict(B=1, Cin=16, Cout=16, L=128, k=3, G=1), dict(B=4, Cin=128, Cout=128, L=1024, k=3, G=1)),
    "full": shapes(
        dict(B=1, Cin=16, Cout=16, L=128, k=3, G=1),
        dict(B=4, Cin=128, Cout=128, L=1024, k=3, G=1),
        dict(B=8, Cin=256, Cout=256, L=4096, k=3, G=1),
        dict(B=8, Cin=256, Cout=256, L=4096, k=3, G=256),
    ),
    "gpu": shapes(
        dict(B=1, Cin=16, Cout=16, L=128, k=3, G=1),
        dict(B=4, Cin=128, Cout=128, L=1024, k=3, G=1),
        dict(B=32, Cin=512, Cout=512, L=4096, k=3, G=1),
        dict(B=32, Cin=512, Cout=512, L=4096, k=3, G=512),
    ),
}
SPATIAL = {1: ("L",), 2: ("H", "W")}
CONV = {1: F.conv1d, 2: F.conv2d}


def _spatial_size(shape, nd: int) -> int:
    size = 1
    for key in SPATIAL[nd]:
        size *= shape[key]
    return size


def _inputs(bn: bool, bias: bool, nd: int):
    def make(shape, dtype, device, gen):
        B, Cin, Cout, k, G = (shape[key] for key in ("B", "Cin", "Cout", "k", "G"))
        spatial = [shape[key] for key in SPATIAL[nd]]
        inputs = {
            "x": randn(gen, B, Cin, *spatial, dtype=dtype, device=device),
            "weight": randn(gen, Cout, Cin // G, *[k] * nd, dtype=dtype, device=device,
                            scale=(Cin // G * k**nd) ** -0.5),
        }
        if bias:
            inputs["bias"] = randn(gen, Cout, dtype=dtype, device=device)
        if bn:
            inputs["running_mean"] = randn(gen, Cout, dtype=dtype, device=device, scale=0.1)
            inputs["running_var"] = (torch.rand(Cout, generator=gen) + 0.5).to(device=device, dtype=dtype)
            inputs["bn_weight"] = (torch.rand(Cout, generator=gen) + 0.5).to(device=device, dtype=dtype)
            inputs["bn_bias"] = randn(gen, Cout, dtype=dtype, device=device, scale=0.1)
        return inputs

    return make


def _fused_conv_act(x, w, b, pad: int, groups: int, act: str):
    """act(conv(x, w, b)), stride 1, as the one call of :func:`fxfusion.fusions.conv.fused.fused_conv_call`; a 1-d conv
    runs as a 2-d conv of height 1."""
    if x.dim() == 3:
        return _fused_conv_act(x.unsqueeze(2), w.unsqueeze(2), b, (0, pad), groups, act).squeeze(2)
    padding = list(pad) if isinstance(pad, tuple) else [pad, pad]
    op, args = fused_conv_call(x, w, b, [1, 1], padding, [1, 1], groups, act, cuda=x.is_cuda)
    return op(*args)


def _channels_last_unsupported(shape, dtype, device):
    return None if is_cuda(device) else "channels_last is offered as a GPU variant only"


def _pattern(bn: bool, act: str | None, nd: int = 2) -> Pattern:
    bias = not bn
    conv = CONV[nd]
    fn = ACTIVATIONS[act].fn if act else None

    def eager(x, weight, bias=None, running_mean=None, running_var=None, bn_weight=None, bn_bias=None):
        pad = weight.shape[-1] // 2
        groups = x.shape[1] // weight.shape[1]
        y = conv(x, weight, bias, padding=pad, groups=groups)
        if bn:
            y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training=False, eps=BN_EPS)
        return fn(y) if fn else y

    def folded(inp):
        if not bn:
            return inp["weight"], inp["bias"]
        return fold_batchnorm(inp["weight"], None, inp["running_mean"], inp["running_var"],
                              inp["bn_weight"], inp["bn_bias"])

    def geometry(inp):
        w = inp["weight"]
        return w.shape[-1] // 2, inp["x"].shape[1] // w.shape[1]

    def build_fold(inp):
        w, b = folded(inp)
        x = inp["x"]
        pad, groups = geometry(inp)
        if fn:
            return lambda: fn(conv(x, w, b, padding=pad, groups=groups))
        return lambda: conv(x, w, b, padding=pad, groups=groups)

    def build_fused(inp):
        w, b = folded(inp)
        x = inp["x"]
        pad, groups = geometry(inp)
        return lambda: _fused_conv_act(x, w, b, pad, groups, act)

    def build_channels_last(inp):
        # The weights are converted once (load time); the activation arrives NCHW from the rest of the model, so its
        # conversion is part of every timed call.
        w, b = folded(inp)
        x = inp["x"]
        w = w.contiguous(memory_format=torch.channels_last)
        pad, groups = geometry(inp)

        def run():
            y = conv(x.contiguous(memory_format=torch.channels_last), w, b, padding=pad, groups=groups)
            return fn(y) if fn else y

        return run

    manual = []
    if bn:
        manual.append(ManualVariant("bn_folded", build_fold, "BatchNorm folded into the conv weights and bias",
                                    rewrite=rewrite_bn_folded))
    if act:
        where = "one cuDNN/oneDNN kernel" if act == "relu" else "one oneDNN kernel (CPU; no cuDNN fusion is exposed)"
        what = f"conv+bias+{ACTIVATIONS[act].title} in {where}"
        manual.append(ManualVariant(f"conv_{act}_fused", build_fused, ("BN folded, then " if bn else "") + what,
                                    rewrite=rewrite_conv_act_fused,
                                    unsupported=lambda shape, dtype, device: fused_unsupported(act, dtype, device)))
    if bn and nd == 2:  # channels_last alone is a layout change, not a fusion: offered only on top of BN folding
        manual.append(ManualVariant("channels_last", build_channels_last,
                                    "BN folded, NHWC (channels_last) input and weights",
                                    rewrite=rewrite_channels_last, unsupported=_channels_last_unsupported))

    def flops(s):
        out = s["B"] * s["Cout"] * _spatial_size(s, nd)
        conv_flops = 2 * out * (s["Cin"] // s["G"]) * s["k"] ** nd
        return conv_flops + out * ((1 if bias else 0) + (2 if bn else 0) + (1 if act else 0))

    def nbytes(s, itemsize, fused):
        x = s["B"] * s["Cin"] * _spatial_size(s, nd)
        y = s["B"] * s["Cout"] * _spatial_size(s, nd)
        w = s["Cout"] * (s["Cin"] // s["G"]) * s["k"] ** nd
        if fused:
            return itemsize * (x + w + s["Cout"] + y)
        total = x + w + y + (s["Cout"] if bias else 0)
        if bn:
            total += 2 * y + 4 * s["Cout"]
        if act:
            total += 2 * y
        return itemsize * total

    parts = [f"Conv{nd}d"] + (["BN"] if bn else [])
    return Pattern(
        name=f"conv{nd}d" + ("_bn" if bn else "") + (f"_{act}" if act else ""),
        family="conv",
        title="+".join(parts + ([ACTIVATIONS[act].title] if act else [])),
        legacy_name="_".join(parts + ([ACTIVATIONS[act].legacy] if act else [])),
        shape_keys=("B", "Cin", "Cout", *SPATIAL[nd], "k", "G"),
        make_inputs=_inputs(bn, bias, nd),
        eager=eager,
        manual=tuple(manual),
        flops=flops,
        bytes=nbytes,
        shapes=SHAPES_1D if nd == 1 else SHAPES_2D,
        extra=lambda s: {"kernel_size": s["k"], "channels": (s["Cin"], s["Cout"]), "groups": s["G"]},
    )


# (BatchNorm, activation, dims): the original suite's three per dimension, then the MobileNet/EfficientNet blocks and
# their squeeze-excitation convs, then conv + bias + GELU without BatchNorm (Whisper's and wav2vec2's 1-d audio
# stems, conv MLPs).
KINDS = ([(bn, act, 2) for bn, act in ((False, "relu"), (True, None), (True, "relu"))]
         + [(True, act, 2) for act in ("silu", "relu6", "hardswish", "gelu")]
         + [(False, act, 2) for act in ("silu", "sigmoid", "hardsigmoid")]
         + [(bn, act, 1) for bn, act in ((False, "relu"), (True, None), (True, "relu"))]
         + [(False, "gelu", nd) for nd in (1, 2)])
PATTERNS = [_pattern(bn, act, nd) for bn, act, nd in KINDS]
