"""Is a planned model right?  Its outputs against the original model run in float64 on the CPU.

Every output of the planned model must be within the dtype's tolerance of the reference
(:mod:`fxfusion.measure.correctness`), or within ``ORIGINAL_ERROR_SLACK`` x the original model's own error where the
model itself is further than that from float64: a rewrite may not be measurably less accurate than the model.  The
reference is the original model run in float64 on the CPU where the model allows it, else the original model itself
(and the verification says so).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from fxfusion.calibration.variants import one_line
from fxfusion.measure.correctness import relative_error, tolerance
from fxfusion.measure.devices import dtype_name, is_cuda

# A planned model may be up to this many times further from float64 than the original model is, where the original
# itself misses the dtype tolerance (deep bfloat16 models): a rewrite must not be measurably less accurate.
ORIGINAL_ERROR_SLACK = 2.0


@dataclass
class OutputCheck:
    index: int
    dtype: str
    error: float | None  # relative L2 error of the planned output against the reference
    original_error: float | None  # the original model's own error against the reference
    limit: float
    ok: bool


def to_reference(x: Any) -> Any:
    return x.detach().to("cpu", torch.float64) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def float64_reference(model: torch.nn.Module, inputs: tuple) -> tuple[Any, str | None]:
    """The original model's outputs in float64 on the CPU, or (None, why not)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_model = copy.deepcopy(model).to("cpu", torch.float64)
            with torch.no_grad():
                return tree_map(to_reference, ref_model(*tree_map(to_reference, inputs))), None
    except Exception as exc:  # a model that does not run in float64 (dtype-specific ops, device-only kernels)
        return None, one_line(exc)


def _tf32(device: str) -> bool:
    return is_cuda(device) and bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def check_outputs(planned_out: Any, original_out: Any, reference: Any, device: str) -> tuple[list[OutputCheck], str]:
    got, spec_got = tree_flatten(planned_out)
    orig, spec_orig = tree_flatten(original_out)
    ref, _ = tree_flatten(reference)
    if spec_got != spec_orig or len(got) != len(ref):
        return [], f"the planned model returns {len(got)} outputs in another structure than the original's {len(orig)}"
    checks, failures = [], []
    for i, (g, o, r) in enumerate(zip(got, orig, ref)):
        if not isinstance(g, torch.Tensor) or not g.is_floating_point():
            same = torch.equal(g, o) if isinstance(g, torch.Tensor) and isinstance(o, torch.Tensor) else g == o
            checks.append(OutputCheck(i, str(getattr(g, "dtype", type(g).__name__)), None, None, 0.0, bool(same)))
            if not same:
                failures.append(f"output {i} differs from the original")
            continue
        tol = tolerance(g.dtype, _tf32(device))
        err, orig_err = relative_error(g, r), relative_error(o, r)
        limit = max(tol, ORIGINAL_ERROR_SLACK * orig_err) if math.isfinite(orig_err) else tol
        ok = err <= limit
        checks.append(OutputCheck(i, dtype_name(g.dtype), err, orig_err, limit, ok))
        if not ok:
            failures.append(f"output {i} ({dtype_name(g.dtype)}) has relative error {err:.3g}, "
                            f"over the {limit:.1e} limit")
    return checks, "; ".join(failures)
