"""Is a planned model right?  Its outputs against the original model run in float64.

Every output of the planned model must be within the dtype's tolerance of the reference
(:mod:`fxfusion.measure.correctness`), or within ``ORIGINAL_ERROR_SLACK`` x the original model's own error where the
model itself is further than that from float64: a rewrite may not be measurably less accurate than the model.  The
reference is the original model run in float64 where the model allows it, else the original model itself (and the
verification says so).  It runs on the model's GPU where the model is on one (:func:`reference_device`; float64 on a
Hopper card is tens of TFLOP/s, a host's a fraction of one: tv_resnet50 at 32x224x224 took 9.3 s in float64 on this
project's 2-core CPU, 2026-12-07), on the CPU where that fails (memory, an op without a float64 kernel) and for a
model on the CPU; the reference's tensors are float64 on the CPU either way.

The reference computes in float64 throughout (:class:`KeepFloat64`): a model that casts to float32 on purpose --
Hugging Face's eager attention takes its softmax in float32, its RMSNorm upcasts to float32 -- would otherwise run
those steps in float32 inside the reference, and worse: a mask filled with ``finfo(float64).min`` becomes -inf when
cast to float32, so a fully masked row (every pad query of a left-padded batch) gives NaN, which then spreads through
the whole sequence.  Where the reference is still not finite but the original model's output is, those elements are
compared against the original model instead, and the check counts them (``OutputCheck.from_original``): a real error
there is still seen, at the dtype's tolerance.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
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
    # Elements compared against the original model because the float64 reference is not finite there (see module doc)
    from_original: int = 0
    # How far the reference moves when the inputs change, and when every weight is off by planning.sensitivity's
    # WEIGHT_ERROR (relative L2); None: not measured.  Below ``limit``, this check could not see such an error.
    input_moves: float | None = None
    weight_error_moves: float | None = None
    # Where this output does not depend on the inputs: the earlier tensor checked in its place (node, op, shape,
    # dtype, error, original_error, limit, ok, input_moves, weight_error_moves; planning.sensitivity.check_earlier)
    earlier: dict | None = None


def to_reference(x: Any, device: torch.device | str = "cpu") -> Any:
    """A tensor as the float64 reference takes or gives it: on ``device`` (the CPU unless it runs on a GPU), floats
    in float64.  Integer tensors move too: token ids left on a GPU beside the CPU copy failed every Hugging Face LM's
    float64 run on CUDA (BERT, Llama, ...: "index is on cuda:0, different from other tensors on cpu"), and
    verification fell back to the original model."""
    if not isinstance(x, torch.Tensor):
        return x
    return x.detach().to(device, torch.float64) if x.is_floating_point() else x.detach().to(device)


_NARROWER = (torch.float32, torch.float16, torch.bfloat16)
_CASTS = {torch.Tensor.float: torch.Tensor.double, torch.Tensor.half: torch.Tensor.double,
          torch.Tensor.bfloat16: torch.Tensor.double}


class KeepFloat64(TorchFunctionMode):
    """Inside it, every request for a narrower float dtype gets float64: ``dtype=`` arguments (softmax, creation ops,
    reductions), ``Tensor.to``/``Tensor.type`` with a dtype, ``.float()``/``.half()``/``.bfloat16()``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        func = _CASTS.get(func, func)
        if kwargs.get("dtype") in _NARROWER:
            kwargs["dtype"] = torch.float64
        if func in (torch.Tensor.to, torch.Tensor.type):
            args = tuple(torch.float64 if a in _NARROWER else a for a in args)
        return func(*args, **kwargs)


def reference_device(model: torch.nn.Module, inputs: tuple) -> torch.device:
    """Where the float64 reference runs first: the GPU the model's parameters (else its first tensor input) are on,
    else the CPU."""
    tensors = [p for p in model.parameters()] + [x for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    return device if is_cuda(device) else torch.device("cpu")


def run_in_float64(model: torch.nn.Module, inputs: tuple, keep_float64: bool = True,
                   device: torch.device | str = "cpu") -> Any:
    """``model`` copied to float64 on ``device`` and run on ``inputs`` in float64, its casts to narrower floats kept
    in float64 (``keep_float64``); outputs as float64 CPU tensors."""
    device = torch.device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = copy.deepcopy(model).to(device, torch.float64)
        default = torch.get_default_dtype()
        try:
            if keep_float64:
                torch.set_default_dtype(torch.float64)  # tensors made without a dtype, too
            with torch.no_grad(), KeepFloat64() if keep_float64 else contextlib.nullcontext():
                return tree_map(to_reference, ref_model(*tree_map(lambda x: to_reference(x, device), inputs)))
        finally:
            torch.set_default_dtype(default)
            del ref_model
            if is_cuda(device):
                torch.cuda.empty_cache()  # the float64 copy is four times a bfloat16 model: give it back


def float64_reference(model: torch.nn.Module, inputs: tuple) -> tuple[Any, str | None]:
    """The original model's outputs in float64 (float64 throughout where the model runs so, else with its own casts),
    on the model's GPU first where it is on one, else (or where that fails) on the CPU; or (None, why not)."""
    why_not = "not run"
    for device in dict.fromkeys([reference_device(model, inputs), torch.device("cpu")]):  # the CPU after a GPU fails
        for keep in (True, False):  # False: a model whose code needs its narrower dtypes: its own casts, as written
            try:
                return run_in_float64(model, inputs, keep_float64=keep, device=device), None
            except Exception as exc:  # a model that does not run in float64 (dtype-specific ops, device-only kernels)
                why_not = one_line(exc)
    return None, why_not


def finite_reference(ref: torch.Tensor, original: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``ref`` with the original model's values where ``ref`` is not finite and the original is (same shape only),
    and how many elements were so replaced."""
    if not isinstance(original, torch.Tensor) or tuple(original.shape) != tuple(ref.shape):
        return ref, 0
    orig = original.detach().to("cpu", torch.float64)
    swap = ~torch.isfinite(ref) & torch.isfinite(orig)
    n = int(swap.sum())
    return (torch.where(swap, orig, ref), n) if n else (ref, 0)


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
        r, from_original = finite_reference(r, o)
        err, orig_err = relative_error(g, r), relative_error(o, r)
        limit = max(tol, ORIGINAL_ERROR_SLACK * orig_err) if math.isfinite(orig_err) else tol
        ok = err <= limit
        checks.append(OutputCheck(i, dtype_name(g.dtype), err, orig_err, limit, ok, from_original))
        if not ok:
            failures.append(f"output {i} ({dtype_name(g.dtype)}) has relative error {err:.3g}, "
                            f"over the {limit:.1e} limit")
    return checks, "; ".join(failures)
