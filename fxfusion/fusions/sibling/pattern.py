"""Sibling GEMMs and gated MLPs: the patterns, their variants and their cost models.

``sibling_gemm{G}[_bias]`` -- G linears reading one input x (M, K): attention's q/k/v (G=3; k and v narrower than q
under grouped-query attention), an MLP's gate/up (G=2).  Shape keys M, K, N1..NG (each sibling's width, in graph
order); weights w_i (N_i, K), biases b_i (N_i).  N = N1 + ... + NG.
  eager (G GEMMs, as nn.Linear runs them): each reads x (MK) and w_i (N_i K) [and b_i (N_i)], writes y_i (M N_i)
    unfused = s(G*MK + NK [+ N] + MN)
  merged (one GEMM on [w_1; ...; w_G], concatenated at load, then slices, which are views):
    fused   = s(MK + NK [+ N] + MN): x is read once instead of G times.
  The gain is rarely the bytes (MK is small next to NK for few rows): it is G-1 fewer launches and one wider GEMM,
  which fills the GPU better at small M.  FLOPs: 2MKN [+ MN for the biases], the same fused or not.

``gated_mlp_<act>`` -- act(x W_g^T) * (x W_u^T) (SwiGLU with SiLU, GeGLU with GELU or GELU(tanh)).  Shape keys M, K,
N (the hidden width of each projection); W_g and W_u are (N, K), bias-free (a gated MLP with biases is merged as
plain siblings).  The down projection W_2 is not in the pattern: it reads the product, and nothing in a GEMM can take
the product in as a prologue, so it would add the same GEMM to both sides.
  eager: gate GEMM MK + NK + MN, up GEMM MK + NK + MN, act 2MN, product 3MN
    unfused = s(2MK + 2NK + 7MN)
  fused (intermediates never reach memory: a GEMM whose epilogue computes act(gate) * up, as TensorRT-LLM's fused
  gated GEMM does)
    fused   = s(MK + 2NK + MN)
  The ``merged`` variant measured here is one GEMM on [W_g; W_u] then act and product as separate ops:
  s(MK + 2NK + 7MN), one read of x and one launch fewer than eager; ``compile`` fuses act and product (Inductor does
  not merge the GEMMs by default).  FLOPs: 4MKN + 2MN.
  A site whose projections are pre-fused in the checkpoint (Phi-3's ``gate_up_proj``, split after the GEMM) already
  runs as ``merged``: its baseline moves s(MK + 2NK + 7MN) (``Pattern.baseline_bytes``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxfusion.fusions.activations import ACTIVATIONS
from fxfusion.fusions.base import ManualVariant, Pattern, randn, shapes
from fxfusion.fusions.sibling.rewrite import gated, rewrite_gated_merged, rewrite_siblings_merged, siblings

SIBLING_COUNTS = (2, 3)
GATED = ("silu", "gelu", "gelu_tanh")

# (M, K, widths): a square pair and GQA-shaped triples (q as wide as the model, k and v a quarter of it).
SIBLING_SIZES = {
    "quick": ((64, 256, (256, 64, 64)), (512, 512, (512, 128, 128))),
    "full": ((32, 256, (256, 64, 64)), (512, 1024, (1024, 256, 256)), (2048, 2048, (2048, 512, 512))),
    # a decode-sized and a prefill-sized batch of a Llama-3-8B-like layer (hidden 4096, 8 kv heads of 128)
    "gpu": ((32, 4096, (4096, 1024, 1024)), (2048, 4096, (4096, 1024, 1024)), (8192, 4096, (4096, 1024, 1024))),
}
GATED_SIZES = {
    "quick": shapes(dict(M=64, K=256, N=512), dict(M=512, K=512, N=1024)),
    "full": shapes(dict(M=32, K=256, N=512), dict(M=512, K=1024, N=2048), dict(M=2048, K=2048, N=4096)),
    "gpu": shapes(dict(M=32, K=4096, N=14336), dict(M=2048, K=4096, N=14336), dict(M=8192, K=4096, N=14336)),
}


def _widths(shape, count: int) -> list[int]:
    return [shape[f"N{i}"] for i in range(1, count + 1)]


def _sibling_shapes(count: int) -> dict:
    def one(M, K, widths):
        ws = widths if count == len(widths) else (widths[0],) * count  # pairs: two equal widths (gate/up-like)
        return {"M": M, "K": K, **{f"N{i + 1}": w for i, w in enumerate(ws)}}

    return {size: tuple(one(*row) for row in rows) for size, rows in SIBLING_SIZES.items()}


def _sibling_pattern(count: int, bias: bool) -> Pattern:
    names = [f"w{i}" for i in range(1, count + 1)]
    bias_names = [f"b{i}" for i in range(1, count + 1)] if bias else []

    def make_inputs(shape, dtype, device, gen):
        M, K = shape["M"], shape["K"]
        inputs = {"x": randn(gen, M, K, dtype=dtype, device=device)}
        for name, n in zip(names, _widths(shape, count)):
            inputs[name] = randn(gen, n, K, dtype=dtype, device=device, scale=K ** -0.5)
        for name, n in zip(bias_names, _widths(shape, count)):
            inputs[name] = randn(gen, n, dtype=dtype, device=device)
        return inputs

    def eager(x, **params):  # G linears, as nn.Linear runs each
        return tuple(F.linear(x, params[f"w{i}"], params.get(f"b{i}")) for i in range(1, count + 1))

    def build_merged(inputs):
        weight = torch.cat([inputs[w] for w in names], 0)  # concatenated once, as the rewrite does at load
        b = torch.cat([inputs[b] for b in bias_names], 0) if bias else None
        widths = [inputs[w].shape[0] for w in names]
        x = inputs["x"]
        return lambda: siblings(x, weight, b, widths)

    def nbytes(s, itemsize, fused):
        M, K, N = s["M"], s["K"], sum(_widths(s, count))
        reads_of_x = 1 if fused else count
        return itemsize * (reads_of_x * M * K + N * K + (N if bias else 0) + M * N)

    suffix = "_bias" if bias else ""
    return Pattern(
        name=f"sibling_gemm{count}{suffix}", family="sibling",
        title=f"{count} sibling Linears{' +Bias' if bias else ''} (one input)",
        legacy_name=f"Sibling_GEMM{count}{'_Bias' if bias else ''}",
        shape_keys=("M", "K") + tuple(f"N{i}" for i in range(1, count + 1)),
        make_inputs=make_inputs, eager=eager,
        manual=(ManualVariant("merged", build_merged, "one GEMM on the weights concatenated at load, then a slice "
                              "(a view) per sibling", rewrite=rewrite_siblings_merged),),
        flops=lambda s: 2 * s["M"] * s["K"] * sum(_widths(s, count)) + (s["M"] * sum(_widths(s, count)) if bias else 0),
        bytes=nbytes, shapes=_sibling_shapes(count),
    )


def _gated_inputs(shape, dtype, device, gen):
    M, K, N = shape["M"], shape["K"], shape["N"]
    return {"x": randn(gen, M, K, dtype=dtype, device=device),
            "w_gate": randn(gen, N, K, dtype=dtype, device=device, scale=K ** -0.5),
            "w_up": randn(gen, N, K, dtype=dtype, device=device, scale=K ** -0.5)}


def _gated_pattern(act: str) -> Pattern:
    a = ACTIVATIONS[act]

    def eager(x, w_gate, w_up):
        return a.fn(F.linear(x, w_gate)) * F.linear(x, w_up)

    def build_merged(inputs):
        weight = torch.cat([inputs["w_gate"], inputs["w_up"]], 0)  # [W_g; W_u], once, as at load
        x, width = inputs["x"], inputs["w_gate"].shape[0]
        return lambda: gated(x, weight, act, width)

    def nbytes(s, itemsize, fused):
        M, K, N = s["M"], s["K"], s["N"]
        return itemsize * ((M * K + 2 * N * K + M * N) if fused else (2 * M * K + 2 * N * K + 7 * M * N))

    return Pattern(
        name=f"gated_mlp_{act}", family="sibling", title=f"Gated MLP ({a.title}(x Wg) * x Wu)",
        legacy_name=f"Gated_MLP_{a.legacy}", shape_keys=("M", "K", "N"), make_inputs=_gated_inputs, eager=eager,
        manual=(ManualVariant("merged", build_merged, "gate and up projections as one GEMM on [Wg; Wu] concatenated "
                              "at load, then act(first half) * second half", rewrite=rewrite_gated_merged),),
        flops=lambda s: 4 * s["M"] * s["K"] * s["N"] + 2 * s["M"] * s["N"],
        bytes=nbytes, shapes=GATED_SIZES,
        # pre-fused in the checkpoint: one GEMM reads x once and writes both halves, then act and product
        baseline_bytes={"merged": lambda s, itemsize: itemsize * (s["M"] * s["K"] + 2 * s["N"] * s["K"]
                                                                   + 7 * s["M"] * s["N"])},
    )


PATTERNS = ([_gated_pattern(act) for act in GATED]
            + [_sibling_pattern(count, bias) for count in SIBLING_COUNTS for bias in (False, True)])
