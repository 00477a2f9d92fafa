"""Linear + bias (+ activation), and bias-free Linear + activation.  Shape keys: M rows, K inputs, N outputs; x is
(M, K), weight (N, K), bias (N).

Bytes (itemsize s), every op reading its inputs and writing its output:
  matmul   reads x (MK) and W (NK), writes y (MN)
  + bias   reads y (MN) and b (N), writes y (MN)                (linear_bias*)
  act      reads y (MN), writes y (MN)                           (only with an activation)
  linear_bias[_act]: unfused = s(MK + NK + N + 3MN) [+ 2MN with an activation]
                     fused   = s(MK + NK + N + MN): the GEMM epilogue adds the bias (and applies the activation)
  linear_<act>:      unfused = s(MK + NK + 3MN)
                     fused   = s(MK + NK + MN): the activation in the GEMM's epilogue.  (cuBLASLt's epilogue takes a
                     bias: its variant reads an N-vector of zeros as well, s*N more, which the model leaves out.)
FLOPs: 2MKN for the GEMM, one per output element for the bias and one for the activation (a convention: GELU's
transcendental work is counted as one op, like ReLU's max).
"""

from __future__ import annotations

import torch
from fxfusion.fusions.activations import ACTIVATIONS
from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes
from fxfusion.fusions.linear.rewrite import (addmm_linear, epilogue_linear, rewrite_addmm, rewrite_addmm_epilogue,
                                             rewrite_epilogue_zero_bias)
from fxfusion.measure.devices import is_cuda


QUICK = shapes(dict(M=64, K=256, N=256), dict(M=512, K=1024, N=1024))
FULL = shapes(dict(M=32, K=256, N=256), dict(M=512, K=1024, N=1024), dict(M=2048, K=2048, N=2048))
GPU = shapes(
    dict(M=32, K=256, N=256),
    dict(M=512, K=1024, N=1024),
    dict(M=4096, K=4096, N=4096),
    dict(M=8192, K=8192, N=8192),
)


def _inputs(shape, dtype, device, gen):
    M, K, N = shape["M"], shape["K"], shape["N"]
    return {
        "x": randn(gen, M, K, dtype=dtype, device=device),
        "weight": randn(gen, N, K, dtype=dtype, device=device, scale=K**-0.5),
        "bias": randn(gen, N, dtype=dtype, device=device),
    }


def _flops(act: str | None):
    def flops(s):
        return 2 * s["M"] * s["K"] * s["N"] + s["M"] * s["N"] * (2 if act else 1)

    return flops


def _bytes(act: str | None):
    def nbytes(s, itemsize, fused):
        M, K, N = s["M"], s["K"], s["N"]
        params_and_input = M * K + N * K + N
        if fused:
            return itemsize * (params_and_input + M * N)
        return itemsize * (params_and_input + 3 * M * N + (2 * M * N if act else 0))

    return nbytes


def _addmm_bytes(s, itemsize):
    """A site that already runs as addmm (bias in the GEMM): the fused GEMM, then the activation's read and write."""
    return _bytes(None)(s, itemsize, True) + 2 * itemsize * s["M"] * s["N"]


def _pattern(act: str | None) -> Pattern:
    fn = ACTIVATIONS[act].fn if act else None

    def eager(x, weight, bias):
        y = torch.matmul(x, weight.t())
        y = y + bias
        return fn(y) if fn else y

    def build_addmm(inp):
        x, w, b = inp["x"], inp["weight"], inp["bias"]
        if fn is None:
            return lambda: addmm_linear(x, w, b)
        return lambda: fn(addmm_linear(x, w, b))

    manual = [ManualVariant("addmm", build_addmm, "bias folded into the GEMM (torch.addmm)", rewrite=rewrite_addmm)]
    use_gelu = ACTIVATIONS[act].epilogue_gelu if act else None
    if use_gelu is not None:

        def build_epilogue(inp):
            x, w, b = inp["x"], inp["weight"], inp["bias"]
            return lambda: epilogue_linear(x, w, b, use_gelu)

        manual.append(
            ManualVariant(
                "addmm_epilogue",
                build_epilogue,
                "bias and activation in the cuBLASLt GEMM epilogue (torch._addmm_activation)",
                rewrite=rewrite_addmm_epilogue,
                unsupported=lambda shape, dtype, device: None
                if is_cuda(device)
                else "the fused epilogue exists only in cuBLASLt; on CPU it runs addmm then the activation",
            )
        )
    suffix = f"_{act}" if act else ""
    title_act = f"+{ACTIVATIONS[act].title}" if act else ""
    legacy_act = f"_{ACTIVATIONS[act].legacy}" if act else ""
    return Pattern(
        name=f"linear_bias{suffix}",
        family="linear",
        title=f"Linear+Bias{title_act}",
        legacy_name=f"Linear_Bias{legacy_act}",
        shape_keys=("M", "K", "N"),
        make_inputs=_inputs,
        eager=eager,
        manual=tuple(manual),
        flops=_flops(act),
        bytes=_bytes(act),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
        baseline_bytes={"addmm": _addmm_bytes},
    )


def _bias_free_inputs(shape, dtype, device, gen):
    inputs = _inputs(shape, dtype, device, gen)
    del inputs["bias"]
    return inputs


def _bias_free_pattern(act: str) -> Pattern:
    """act(x @ W^T): a GEMM without a bias, then an activation (nn.Linear(bias=False) + act)."""
    a = ACTIVATIONS[act]

    def eager(x, weight):
        return a.fn(torch.matmul(x, weight.t()))

    manual = []
    if a.epilogue_gelu is not None:  # cuBLASLt's epilogue computes ReLU and GELU(tanh), and takes a bias

        def build_epilogue(inp):
            x, w = inp["x"], inp["weight"]
            zero = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)  # made once, as the rewrite does at load
            return lambda: epilogue_linear(x, w, zero, a.epilogue_gelu)

        manual.append(ManualVariant(
            "addmm_epilogue", build_epilogue,
            "the activation in the cuBLASLt GEMM epilogue (torch._addmm_activation), with a zero bias",
            rewrite=rewrite_epilogue_zero_bias,
            unsupported=lambda shape, dtype, device: None if is_cuda(device) else
            "the fused epilogue exists only in cuBLASLt; on CPU _addmm_activation runs addmm then the activation, "
            "the same kernels as eager plus a bias add"))
    return Pattern(
        name=f"linear_{act}", family="linear", title=f"Linear+{a.title}", legacy_name=f"Linear_{a.legacy}",
        shape_keys=("M", "K", "N"), make_inputs=_bias_free_inputs, eager=eager, manual=tuple(manual),
        flops=lambda s: 2 * s["M"] * s["K"] * s["N"] + s["M"] * s["N"],
        bytes=lambda s, i, fused: i * (s["M"] * s["K"] + s["N"] * s["K"] + (1 if fused else 3) * s["M"] * s["N"]),
        shapes={"quick": QUICK, "full": FULL, "gpu": GPU},
    )


ACTS = ("relu", "gelu", "silu", "gelu_tanh", "relu6", "quick_gelu")  # quick_gelu: CLIP's MLP
PATTERNS = [_pattern(act) for act in (None,) + ACTS] + [_bias_free_pattern(act) for act in ACTS]
