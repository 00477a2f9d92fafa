"""`fxfusion apply PLAN.json MODEL.py[:NAME]`: a saved plan applied to the model again, no measuring, checked once."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from fxfusion.calibration.calibrate import check_device, parse_dtypes
from fxfusion.cli.errors import handles_errors
from fxfusion.errors import FxFusionError, FxFusionWarning
from fxfusion.graph.loader import check_model_file, load_model
from fxfusion.measure.devices import dtype as dtype_record
from fxfusion.measure.threads import set_threads
from fxfusion.planning.dynamic import from_record
from fxfusion.planning.dynamic_verify import check_shapes, shapes_line
from fxfusion.planning.outputs import check_outputs, float64_reference
from fxfusion.planning.saved import apply as apply_plan
from fxfusion.planning.saved import load_plan


def apply_command(
    plan: Annotated[Path, typer.Argument(help="A plan saved by `fxfusion analyze ... --apply --save-plan PLAN.json`.")],
    model: Annotated[str, typer.Argument(help="FILE.py defining get_model() and get_inputs(), or FILE.py:NAME where "
                                              "NAME() returns (model, example_inputs): the model the plan was made "
                                              "for.")],
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: the plan's device kind).")
                      ] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Move floating-point parameters and inputs to this dtype "
                                                      "(default: the plan's sites' dtype).")] = None,
    eval_mode: Annotated[bool, typer.Option("--eval", help="Call model.eval() first (as analyze --eval did).")
                         ] = False,
    allow_mismatch: Annotated[bool, typer.Option("--allow-mismatch", help="Apply a plan made on another device or "
                                                 "software, or for a model whose graph differs, all the same (what "
                                                 "still matches), with a warning.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch.")] = None,
) -> None:
    """Apply a saved plan to its model without measuring, and check the result against float64 once."""
    started = time.perf_counter()
    saved = load_plan(plan)  # a missing or corrupt plan is its one line, before the model is loaded
    check_model_file(model)
    set_threads(threads)
    device = check_device(device or saved.made["device"])
    dtype_name = parse_dtypes(dtype)[0] if dtype is not None else next((g.dtype for g in saved.groups), None)
    with contextlib.redirect_stdout(sys.stderr):  # the user's code may print
        loaded = load_model(model, device=device, dtype=dtype_record(dtype_name).torch if dtype_name else None,
                            eval_mode=eval_mode)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FxFusionWarning)
            planned = apply_plan(loaded.model, saved, example_inputs=loaded.example_inputs,
                                 allow_mismatch=allow_mismatch)
        for w in caught:  # --allow-mismatch: what did not fit, one line each
            if issubclass(w.category, FxFusionWarning):
                typer.echo(f"warning: {w.message}", err=True)
        applied_s = time.perf_counter() - started
        records = getattr(planned, "fxfusion_rewrites", [])
        with torch.no_grad():  # the check, once (a compiled candidate compiles here, in its first call)
            got, original = planned(*loaded.example_inputs), loaded.model(*loaded.example_inputs)
        reference, why_not = float64_reference(loaded.model, loaded.example_inputs)
    against = "float64" if reference is not None else f"the original model (no float64 reference: {why_not})"
    checks, failure = check_outputs(got, original, reference if reference is not None else original, device)
    check_s = time.perf_counter() - started - applied_s
    applied = sum(r.applied for r in records)
    said = (f"{plan}: {applied} of {len(saved.groups)} rewrites applied to {model}, candidate "
            f"{getattr(planned, 'fxfusion_candidate', saved.chosen)}, in {applied_s:.1f} s (load, capture, apply; "
            f"nothing timed), checked once in {check_s:.1f} s")
    if failure or not checks:
        raise FxFusionError(f"{said}; its outputs do not match {against}: {failure or 'no output to compare'}")
    worst = max((c.error for c in checks if c.error is not None), default=0.0)
    if saved.dynamic is not None:  # a plan over dynamic shapes: checked at its buckets and a shape never measured
        dims = from_record(saved.dynamic)
        rows = check_shapes(loaded.model, dims, loaded.example_inputs, planned, device)
        said += f"; serves {', '.join(map(str, dims.ranges))}"
        if not all(r["ok"] for r in rows):
            raise FxFusionError(f"{said}; {shapes_line(rows)}")
        typer.echo(f"{said}; {shapes_line(rows)}")
        return
    typer.echo(f"{said}; outputs match {against} (largest relative error {worst:.1e})")


def register(app: typer.Typer) -> None:
    app.command("apply")(handles_errors(apply_command))
