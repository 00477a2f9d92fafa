"""Conv2d (+ BatchNorm) (+ ReLU).  Shape keys: B, Cin, Cout, H, W, k (square kernel, stride 1, 'same' padding), G.

Bytes (itemsize s), every op reading its inputs and writing its output:
  conv     reads x (B Cin H W), weight (Cout Cin/G k k) [+ bias Cout], writes y (B Cout H W)
  BN       reads y and 4 Cout statistics/affine params, writes y
  ReLU     reads y, writes y
  fused    = conv only, with the folded bias: x + weight + Cout + y.  BN folding moves BN into the weights once, at
             load time, so its cost is not part of the forward pass.
FLOPs: 2 B Cout H W (Cin/G) k k for the conv, one per output element for the bias, two for BN (scale and shift) and
one for ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxfusion.patterns.base import ManualVariant, Pattern, randn, shapes

BN_EPS = 1e-5

QUICK = shapes(dict(B=1, Cin=16, Cout=16, H=16, W=16, k=3, G=1), dict(B=4, Cin=128, Cout=128, H=28, W=28, k=3, G=1))
FULL = shapes(
    dict(B=1, Cin=16, Cout=16, H=16, W=16, k=3, G=1),
    dict(B=4, Cin=128, Cout=128, H=28, W=28, k=3, G=1),
    dict(B=8, Cin=256, Cout=256, H=56, W=56, k=3, G=1),
    dict(B=8, Cin=128, Cout=128, H=56, W=56, k=3, G=128),
)
GPU = shapes(
    dict(B=1, Cin=16, Cout=16, H=16, W=16, k=3, G=1),
    dict(B=4, Cin=128, Cout=128, H=28, W=28, k=3, G=1),
    dict(B=32, Cin=256, Cout=256, H=56, W=56, k=3, G=1),
    dict(B=32, Cin=128, Cout=128, H=56, W=56, k=3, G=128),
)


def _params(shape, bn: bool, bias: bool):
    """Which parameter tensors the unfused pattern reads (conv bias is off before BN, as in ResNets)."""
    return (1 if bias else 0) + (4 if bn else 0)


def _inputs(bn: bool, bias: bool):
    def make(shape, dtype, device, gen):
        B, Cin, Cout, H, W, k, G = (shape[key] for key in ("B", "Cin", "Cout", "H", "W", "k", "G"))
        fan_in = Cin // G * k * k
        inputs = {
            "x": randn(gen, B, Cin, H, W, dtype=dtype, device=device),
            "weight": randn(gen, Cout, Cin // G, k, k, dtype=dtype, device=device, scale=fan_in**-0.5),
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


def fold_batchnorm(weight, bias, running_mean, running_var, bn_weight, bn_bias, eps=BN_EPS):
    """Conv weights and bias with an inference-mode BatchNorm folded in (computed in float32 for accuracy)."""
    dtype = weight.dtype
    scale = bn_weight.float() * torch.rsqrt(running_var.float() + eps)
    folded_w = weight.float() * scale.reshape(-1, 1, 1, 1)
    conv_b = bias.float() if bias is not None else torch.zeros_like(scale)
    folded_b = (conv_b - running_mean.float()) * scale + bn_bias.float()
    return folded_w.to(dtype), folded_b.to(dtype)


def _fused_conv_relu(x, w, b, pad, groups):
    """One kernel for conv+bias+ReLU: cuDNN's fused op on CUDA, oneDNN's post-op on CPU."""
    if x.is_cuda:
        return torch.cudnn_convolution_relu(x, w, b, [1, 1], [pad, pad], [1, 1], groups)
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, [pad, pad], [1, 1], [1, 1], groups, "relu", [], None)


def _fused_conv_relu_unsupported(shape, dtype, device):
    if device.startswith("cuda"):
        return None if dtype != torch.float64 else "cuDNN's fused conv+ReLU does not take float64"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn), which provides the fused conv+ReLU on CPU"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"oneDNN's fused conv+ReLU does not take {dtype}"
    return None


def _channels_last_unsupported(shape, dtype, device):
    return None if device.startswith("cuda") else "channels_last is offered as a GPU variant only"


def _pattern(bn: bool, relu: bool) -> Pattern:
    bias = not bn

    def eager(x, weight, bias=None, running_mean=None, running_var=None, bn_weight=None, bn_bias=None):
        pad = weight.shape[-1] // 2
        groups = x.shape[1] // weight.shape[1]
        y = F.conv2d(x, weight, bias, padding=pad, groups=groups)
        if bn:
            y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training=False, eps=BN_EPS)
        return F.relu(y) if relu else y

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
        if relu:
            return lambda: F.relu(F.conv2d(x, w, b, padding=pad, groups=groups))
        return lambda: F.conv2d(x, w, b, padding=pad, groups=groups)

    def build_conv_relu(inp):
        w, b = folded(inp)
        x = inp["x"]
        pad, groups = geometry(inp)
        return lambda: _fused_conv_relu(x, w, b, pad, groups)

    def build_channels_last(inp):
        w, b = folded(inp)
        x = inp["x"].contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
        pad, groups = geometry(inp)
        if relu:
            return lambda: F.relu(F.conv2d(x, w, b, padding=pad, groups=groups))
        return lambda: F.conv2d(x, w, b, padding=pad, groups=groups)

    manual = []
    if bn:
        manual.append(ManualVariant("bn_folded", build_fold, "BatchNorm folded into the conv weights and bias"))
    if relu:
        manual.append(ManualVariant("conv_relu_fused", build_conv_relu,
                                    ("BN folded, then " if bn else "") + "conv+bias+ReLU in one cuDNN/oneDNN kernel",
                                    unsupported=_fused_conv_relu_unsupported))
    if bn:  # channels_last alone is a layout change, not a fusion: offered only on top of BN folding
        manual.append(ManualVariant("channels_last", build_channels_last,
                                    "BN folded, NHWC (channels_last) input and weights",
                                    unsupported=_channels_last_unsupported))

    def flops(s):
        out = s["B"] * s["Cout"] * s["H"] * s["W"]
        conv = 2 * out * (s["Cin"] // s["G"]) * s["k"] * s["k"]
        return conv + out * ((1 if bias else 0) + (2 if bn else 0) + (1 if relu else 0))

    def nbytes(s, itemsize, fused):
        x = s["B"] * s["Cin"] * s["H"] * s["W"]
        y = s["B"] * s["Cout"] * s["H"] * s["W"]
        w = s["Cout"] * (s["Cin"] // s["G"]) * s["k"] * s["k"]
        if fused:
            return itemsize * (x + w + s["Cout"] + y)
        total = x + w + y + _params(s, False, bias) * s["Cout"]
        if bn:
            total += 2 * y + 4 * s["Cout"]
        if relu:
            total += 2 * y
        return itemsize * total

    parts = ["Conv2d"] + (["BN"] if bn else []) + (["ReLU"] if relu else [])
    legacy = {"Conv2d+ReLU": "Conv2d_ReLU", "Conv2d+BN": "Conv2d_BN", "Conv2d+BN+ReLU": "Conv2d_BN_ReLU"}
    title = "+".join(parts)
    return Pattern(
        name="_".join(p.lower() for p in parts),
        family="conv",
        title=title,
        legacy_name=legacy[title],
        shape_keys=("B", "Cin", "Cout", "H", "W", "k", "G"),
        make_inputs=_inputs(bn, bias),
        eager=eager,
        manual=tuple(manual),
        flops=flops,
        bytes=nbytes,
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        ops=("conv",) + (("batch_norm",) if bn else ()) + (("relu",) if relu else ()),
        extra=lambda s: {"kernel_size": s["k"], "channels": (s["Cin"], s["Cout"]), "groups": s["G"]},
    )


PATTERNS = [_pattern(bn=False, relu=True), _pattern(bn=True, relu=False), _pattern(bn=True, relu=True)]
