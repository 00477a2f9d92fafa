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
    """||out - ref|| / ||ref|| in float64; inf when shapes differ or out has non-finite values ref has not.

    ``out`` and ``ref`` may be tuples of tensors (a pattern with several outputs: sibling GEMMs): the error is that
    of all outputs together, as if concatenated, so each part weighs by its size."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            return math.inf
        parts = [_diff_and_norm(o, r) for o, r in zip(out, ref)]
        if any(p is None for p in parts):
            return math.inf
        diff, norm = math.sqrt(sum(d * d for d, _ in parts)), math.sqrt(sum(n * n for _, n in parts))
        return diff / norm if norm > 0 else diff
    found = _diff_and_norm(out, ref)
    if found is None:
        return math.inf
    diff, norm = found
    return diff / norm if norm > 0 else diff


def _diff_and_norm(out, ref: torch.Tensor) -> tuple[float, float] | None:
    """(||out - ref||, ||ref||) over ref's finite values; None when shapes differ or the non-finite values differ."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(ref.shape):
        return None
    got = out.detach().to("cpu", torch.float64)
    finite = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(got), finite):
        return None
    if not finite.all() and not torch.equal(got[~finite], ref[~finite]):
        return None
    return float(torch.linalg.vector_norm((got - ref)[finite])), float(torch.linalg.vector_norm(ref[finite]))
