"""Conv1d (+ BatchNorm) (+ ReLU).  Shape keys: B, Cin, Cout, L, k (stride 1, 'same' padding), G.

Bytes (itemsize s), every op reading its inputs and writing its output, as for conv2d with H W -> L:
  conv     reads x (B Cin L), weight (Cout Cin/G k) [+ bias Cout], writes y (B Cout L)
  BN       reads y and 4 Cout statistics/affine params, writes y
  ReLU     reads y, writes y
  fused    = conv only, with the folded bias: x + weight + Cout + y (BN is folded once, at load time).
FLOPs: 2 B Cout L (Cin/G) k for the conv, one per output element for the bias, two for BN and one for ReLU.
The fused conv+ReLU runs the 1-D conv as a 2-D one of height 1 (cuDNN's fused op on CUDA, oneDNN's post-op on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxfusion.patterns.base import ManualVariant, Pattern, randn, shapes
from fxfusion.patterns.conv import BN_EPS, _fused_conv_relu_unsupported, fold_batchnorm

QUICK = shapes(dict(B=1, Cin=16, Cout=16, L=128, k=3, G=1), dict(B=4, Cin=128, Cout=128, L=1024, k=3, G=1))
FULL = shapes(
    dict(B=1, Cin=16, Cout=16, L=128, k=3, G=1),
    dict(B=4, Cin=128, Cout=128, L=1024, k=3, G=1),
    dict(B=8, Cin=256, Cout=256, L=4096, k=3, G=1),
    dict(B=8, Cin=256, Cout=256, L=4096, k=3, G=256),
)
GPU = shapes(
    dict(B=1, Cin=16, Cout=16, L=128, k=3, G=1),
    dict(B=4, Cin=128, Cout=128, L=1024, k=3, G=1),
    dict(B=32, Cin=512, Cout=512, L=4096, k=3, G=1),
    dict(B=32, Cin=512, Cout=512, L=4096, k=3, G=512),
)


def _inputs(bn: bool, bias: bool):
    def make(shape, dtype, device, gen):
        B, Cin, Cout, L, k, G = (shape[key] for key in ("B", "Cin", "Cout", "L", "k", "G"))
        fan_in = Cin // G * k
        inputs = {"x": randn(gen, B, Cin, L, dtype=dtype, device=device),
                  "weight": randn(gen, Cout, Cin // G, k, dtype=dtype, device=device, scale=fan_in**-0.5)}
        if bias:
            inputs["bias"] = randn(gen, Cout, dtype=dtype, device=device)
        if bn:
            inputs["running_mean"] = randn(gen, Cout, dtype=dtype, device=device, scale=0.1)
            inputs["running_var"] = (torch.rand(Cout, generator=gen) + 0.5).to(device=device, dtype=dtype)
            inputs["bn_weight"] = (torch.rand(Cout, generator=gen) + 0.5).to(device=device, dtype=dtype)
            inputs["bn_bias"] = randn(gen, Cout, dtype=dtype, device=device, scale=0.1)
        return inputs

    return make


def _fused_conv1d_relu(x, w, b, pad, groups):
    """conv1d+bias+ReLU in one kernel: the 1-D conv as a 2-D conv of height 1."""
    x4, w4 = x.unsqueeze(2), w.unsqueeze(2)
    if x.is_cuda:
        y = torch.cudnn_convolution_relu(x4, w4, b, [1, 1], [0, pad], [1, 1], groups)
    else:
        y = torch.ops.mkldnn._convolution_pointwise(x4, w4, b, [0, pad], [1, 1], [1, 1], groups, "relu", [], None)
    return y.squeeze(2)


def _pattern(bn: bool, relu: bool) -> Pattern:
    bias = not bn

    def eager(x, weight, bias=None, running_mean=None, running_var=None, bn_weight=None, bn_bias=None):
        pad, groups = weight.shape[-1] // 2, x.shape[1] // weight.shape[1]
        y = F.conv1d(x, weight, bias, padding=pad, groups=groups)
        if bn:
            y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training=False, eps=BN_EPS)
        return F.relu(y) if relu else y

    def folded(inp):
        if not bn:
            return inp["weight"], inp["bias"]
        w, b = fold_batchnorm(inp["weight"].unsqueeze(-1), None, inp["running_mean"], inp["running_var"],
                              inp["bn_weight"], inp["bn_bias"])
        return w.squeeze(-1), b

    def geometry(inp):
        return inp["weight"].shape[-1] // 2, inp["x"].shape[1] // inp["weight"].shape[1]

    def build_fold(inp):
        (w, b), x, (pad, groups) = folded(inp), inp["x"], geometry(inp)
        if relu:
            return lambda: F.relu(F.conv1d(x, w, b, padding=pad, groups=groups))
        return lambda: F.conv1d(x, w, b, padding=pad, groups=groups)

    def build_conv_relu(inp):
        (w, b), x, (pad, groups) = folded(inp), inp["x"], geometry(inp)
        return lambda: _fused_conv1d_relu(x, w, b, pad, groups)

    manual = []
    if bn:
        manual.append(ManualVariant("bn_folded", build_fold, "BatchNorm folded into the conv weights and bias"))
    if relu:
        manual.append(ManualVariant("conv_relu_fused", build_conv_relu,
                                    ("BN folded, then " if bn else "") + "conv+bias+ReLU in one cuDNN/oneDNN kernel",
                                    unsupported=_fused_conv_relu_unsupported))

    def flops(s):
        out = s["B"] * s["Cout"] * s["L"]
        pointwise = (1 if bias else 0) + (2 if bn else 0) + (1 if relu else 0)
        return 2 * out * (s["Cin"] // s["G"]) * s["k"] + out * pointwise

    def nbytes(s, itemsize, fused):
        x, y = s["B"] * s["Cin"] * s["L"], s["B"] * s["Cout"] * s["L"]
        w = s["Cout"] * (s["Cin"] // s["G"]) * s["k"]
        if fused:
            return itemsize * (x + w + s["Cout"] + y)
        total = x + w + y + (s["Cout"] if bias else 0)
        if bn:
            total += 2 * y + 4 * s["Cout"]
        if relu:
            total += 2 * y
        return itemsize * total

    parts = ["Conv1d"] + (["BN"] if bn else []) + (["ReLU"] if relu else [])
    return Pattern(
        name="_".join(p.lower() for p in parts),
        family="conv",
        title="+".join(parts),
        legacy_name="_".join(parts),
        shape_keys=("B", "Cin", "Cout", "L", "k", "G"),
        make_inputs=_inputs(bn, bias),
        eager=eager,
        manual=tuple(manual),
        flops=flops,
        bytes=nbytes,
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        ops=("conv1d",) + (("batch_norm",) if bn else ()) + (("relu",) if relu else ()),
        extra=lambda s: {"kernel_size": s["k"], "channels": (s["Cin"], s["Cout"]), "groups": s["G"]},
    )


PATTERNS = [_pattern(bn=False, relu=True), _pattern(bn=True, relu=False), _pattern(bn=True, relu=True)]
