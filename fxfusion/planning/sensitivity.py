"""Can the output check fail at all?  Two controls run beside it, so a verification cannot pass vacuously.

The float64 check (:mod:`fxfusion.planning.outputs`) says a planned output is within ``limit`` of the reference.  That
means nothing when the output would be within ``limit`` whatever the rewrites computed:

  1. **the output does not depend on the inputs** (a zero-initialised head: ``out = 0 @ features + b``): the inputs
     are changed (noise of ``INPUT_NOISE`` x their RMS on the floating ones; else each id of the first integer input
     moved to the next value in its range) and the original model run again; an output that moves by no more than
     its limit is flagged -- the rewrites before it are not checked by it;
  2. **the output hides weight errors** (an output dominated by a bias: ``out = W x + 1e4`` hides a 10% error in ``W``
     under 1e-4): a copy of the model with every weight (each parameter of two or more dimensions: matrices,
     convolution kernels, embeddings; not biases or norm scales) scaled by ``1 +/- WEIGHT_ERROR[dtype]`` (signs
     random, seeded) is run; an output that moves by no more than its limit is flagged, beside the planned model's
     own error: a rewrite as wrong as that perturbation would have verified.

Both run the original model in its own dtype on its device: one forward each, and one copy of the weights.  The
measured movements go on each :class:`~fxfusion.planning.outputs.OutputCheck` (``input_moves``,
``weight_error_moves``) and the flags are returned as warnings (``VerificationResult.warnings``), as is the count of
elements checked against the original model where the float64 reference was not finite.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from fxfusion.calibration.variants import one_line
from fxfusion.measure.correctness import relative_error
from fxfusion.planning.outputs import OutputCheck

# The inputs' change: 1% of their RMS, far above rounding in every dtype, small enough to stay in the model's domain.
INPUT_NOISE = 0.01
# The weight error the check must see, per dtype: 1% where the tolerance is 1e-4 (float32, float64).  float16 and
# bfloat16 tolerances (5e-3, 2e-2) absorb a few percent of rounding over a deep model, and their weights round at
# 0.1% / 0.4%: there the check must see 5% / 10% (issue 26's bias-dominated output hid 10% under float32's 1e-4).
WEIGHT_ERROR = {torch.float64: 0.01, torch.float32: 0.01, torch.float16: 0.05, torch.bfloat16: 0.10}
SEED = 0


def check_sensitivity(model: torch.nn.Module, inputs: tuple, original_out: Any, checks: list[OutputCheck],
                      device) -> list[str]:
    """Run both controls (module doc) for the floating outputs of ``checks`` that passed; set their ``input_moves``
    and ``weight_error_moves``; return the warnings."""
    said = [f"output {c.index}: {c.from_original} element(s) checked against the original model, where the float64 "
            "reference is not finite (a fully masked row?)" for c in checks if c.from_original]
    floating = [c for c in checks if c.error is not None and c.ok]
    if not floating:
        return said
    orig, _ = tree_flatten(original_out)
    changed, how = perturbed_inputs(inputs)
    if changed is None:
        said.append(f"the inputs could not be changed to see whether the outputs depend on them ({how})")
    else:
        moved = _moves(model, changed, orig, said, "with changed inputs")
        for c in floating if moved is not None else []:
            c.input_moves = moved[c.index]
            if c.input_moves <= c.limit:
                said.append(f"output {c.index} does not depend on the inputs: {how} moves it by {c.input_moves:.2g} "
                            f"(limit {c.limit:.1e}), so it cannot show a wrong rewrite before it; verify on an output "
                            "that depends on the inputs")
    weighted, n = perturbed_weights(model, WEIGHT_ERROR.get(_dtype(orig, floating[0]), 0.01))
    if weighted is None:
        return said
    moved = _moves(weighted, inputs, orig, said, "with perturbed weights")
    del weighted
    for c in floating if moved is not None else []:
        c.weight_error_moves = moved[c.index]
        if c.weight_error_moves <= c.limit:
            e = WEIGHT_ERROR.get(_dtype(orig, c), 0.01)
            said.append(f"output {c.index} hides weight errors: every weight {e:.0%} off ({n} tensors) moves it by "
                        f"only {c.weight_error_moves:.2g}, within its {c.limit:.1e} limit (the planned model's error "
                        f"{c.error:.2g}): a rewrite that wrong would verify")
    return said


def perturbed_inputs(inputs: tuple) -> tuple[tuple | None, str]:
    """(inputs changed, how), or (None, why not): noise on the floating tensors, else the first integer tensor's
    values each moved to the next in its range."""
    leaves, _ = tree_flatten(inputs)
    gen = torch.Generator().manual_seed(SEED)
    if any(isinstance(x, torch.Tensor) and x.is_floating_point() for x in leaves):
        def noisy(x):
            if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
                return x
            rms = float(x.detach().double().pow(2).mean().sqrt()) or 1.0
            noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) * (INPUT_NOISE * rms)
            return (x.detach().double() + noise.to(x.device)).to(x.dtype)
        return tree_map(noisy, inputs), f"noise of {INPUT_NOISE:.0%} of the inputs' RMS"
    ints = [x for x in leaves if isinstance(x, torch.Tensor) and not x.is_complex() and x.dtype != torch.bool
            and x.numel() and int(x.max()) > int(x.min())]
    if not ints:
        return None, "no floating input and no integer input with two or more values"
    target = ints[0]
    lo, hi = int(target.min()), int(target.max())
    shifted = (target - lo + 1) % (hi - lo + 1) + lo  # stays within the values the input already takes
    return tree_map(lambda x: shifted if x is target else x, inputs), "moving each id to the next value in its range"


def perturbed_weights(model: torch.nn.Module, error: float) -> tuple[torch.nn.Module | None, int]:
    """A copy of ``model`` with every parameter of two or more dimensions scaled by 1 +/- ``error`` (random signs),
    and how many were; (None, 0) when there is none."""
    if not any(p.dim() >= 2 and p.is_floating_point() for p in model.parameters()):
        return None, 0
    copied = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(SEED)
    n = 0
    with torch.no_grad():
        for p in copied.parameters():
            if p.dim() >= 2 and p.is_floating_point():
                sign = torch.randint(0, 2, p.shape, generator=gen).to(p.device, p.dtype) * 2 - 1
                p.mul_(1 + error * sign)
                n += 1
    return copied, n


def _moves(model: torch.nn.Module, inputs: tuple, orig: list, said: list[str], what: str) -> dict[int, float] | None:
    """Output index -> relative L2 change of ``model(*inputs)`` from ``orig`` (float64), or None (said why)."""
    try:
        with torch.no_grad():
            out, _ = tree_flatten(model(*inputs))
    except Exception as exc:
        said.append(f"the model did not run {what} ({one_line(exc)}): that control was not made")
        return None
    return {i: relative_error(o, r) for i, (o, r) in enumerate(zip(out, orig))
            if isinstance(o, torch.Tensor) and isinstance(r, torch.Tensor) and r.is_floating_point()}


def _dtype(orig: list, check: OutputCheck) -> torch.dtype:
    x = orig[check.index] if check.index < len(orig) else None
    return x.dtype if isinstance(x, torch.Tensor) else torch.float32
