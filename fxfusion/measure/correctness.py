"""The correctness gate: every variant's output against a float64 reference of the unfused computation.

Error is the relative L2 norm ||out - ref|| / ||ref||; NaN or Inf where the reference is finite always fails.
Tolerances are per dtype, with the reason for each; float32 on CUDA gets the TF32 tolerance when TF32 is enabled for
the op family (cuDNN convolutions use TF32 by default, matmuls do not).
"""

from __future__ import annotations

import math

import torch

# float32 accumulations reorder freely across variants and compilers: 1e-6 is typical, 1e-4 leaves room for
# reductions over ~1e5 terms.  TF32 keeps 10 mantissa bits (~5e-4 per product).  bfloat16 keeps 8 bits
# (eps 7.8e-3) and eager rounds every intermediate, so 2e-2.  float16 keeps 11 bits (eps 9.8e-4): 5e-3.
TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.bfloat16: 2e-2,
    torch.float16: 5e-3,
}
TF32_TOLERANCE = 5e-3


def tolerance(dtype: torch.dtype, tf32: bool = False) -> float:
    if dtype == torch.float32 and tf32:
        return TF32_TOLERANCE
    return TOLERANCE[dtype]


def to_reference(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same inputs on the CPU in float64 (boolean and integer tensors keep their dtype)."""
    return {k: (v.detach().to("cpu", torch.float64) if v.is_floating_point() else v.detach().cpu())
            for k, v in inputs.items()}


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; inf when shapes differ or out has non-finite values ref has not.  A tuple
    of outputs (a fused kernel that writes the residual sum and the normalised value) is checked output by output:
    the largest error, inf when the counts differ."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            return math.inf
        return max((relative_error(o, r) for o, r in zip(out, ref)), default=0.0)
    if isinstance(out, (tuple, list)) or tuple(out.shape) != tuple(ref.shape):
        return math.inf
    got = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)  # a reference made on the GPU is compared on the CPU all the same
    finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(got), finite):
        return math.inf
    if not finite.all() and not torch.equal(got[~finite], ref[~finite]):
        return math.inf
    diff = torch.linalg.vector_norm((got - ref)[finite])
    norm = torch.linalg.vector_norm(ref[finite])
    return float(diff / norm) if norm > 0 else float(diff)
