"""`fxfusion analyze MODEL.py[:NAME]`: the fusible sites of a user's model, each decided at its shape and dtype."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fxfusion.clikit import handles_errors
from fxfusion.errors import FxFusionError

FORMATS = ("table", "json", "markdown", "html")


def _check_output(output: Path | None) -> None:
    if output is None:
        return
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise FxFusionError(f"cannot write {output}: folder {folder} does not exist")
    if output.is_dir():
        raise FxFusionError(f"cannot write {output}: it is a folder")


def _optional(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise FxFusionError(f"{what} needs {module}, which this installation of fxfusion does not have") from None


def _text(report: dict, fmt: str, graphs=None, extra=None) -> str:
    from fxfusion.analyze import render_markdown, render_table

    if fmt == "json":
        return json.dumps(report, indent=1, allow_nan=False) + "\n"
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "html":
        return _optional("fxfusion.report", "--format html").render_analysis_html(report, graphs)
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=160, color_system=None, force_terminal=False)
    console.print(render_table(report))
    if extra is not None:
        console.print(extra)
    return buffer.getvalue()


def analyze_command(
    model: Annotated[str, typer.Argument(help="FILE.py defining get_model() and get_inputs(), or FILE.py:NAME where "
                                              "NAME() returns (model, example_inputs).")],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N: the model, its inputs and the measurements "
                                              "go here.")] = "cpu",
    dtype: Annotated[Optional[str], typer.Option(help="Move floating-point parameters and inputs to this dtype: "
                                                      "float32, bfloat16, float16, float64.")] = None,
    profile: Annotated[Optional[Path], typer.Option(help="Decide each site from this calibration profile "
                                                         "(nearest measured entry).")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="Measure each site live at its exact shape and dtype "
                                                            "(the default without --profile).")] = False,
    match_only: Annotated[bool, typer.Option("--match-only", help="Only capture and match: no decisions.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table, json, markdown or html.")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report here (atomically) "
                                                                        "instead of standard output.")] = None,
    eval_mode: Annotated[bool, typer.Option("--eval", help="Call model.eval() before analysing.")] = False,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="Live measurement without the torch.compile "
                                                                  "variants (much faster on a CPU).")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Apply the 'fuse' decisions and verify the fused model "
                                                        "(outputs and end-to-end time); exit 1 if it does not "
                                                        "verify.")] = False,
) -> None:
    """Find the fusible sites of a model, decide each at its own shape and dtype, and report them."""
    import torch

    from fxfusion.analyze import LiveSource, ProfileSource, analyze
    from fxfusion.calibrate import DTYPES, check_device, parse_dtypes
    from fxfusion.loader import load_model
    from fxfusion.profile import Profile

    if fmt not in FORMATS:
        raise FxFusionError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    if profile is not None and measure:
        raise FxFusionError("--profile and --measure are alternatives: decide from a profile or measure live")
    if match_only and (profile is not None or measure or apply):
        raise FxFusionError("--match-only makes no decisions: it cannot be combined with --profile, --measure or "
                            "--apply")
    if threads is not None:
        if threads < 1:
            raise FxFusionError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    device = check_device(device)
    dtype_name = parse_dtypes(dtype)[0] if dtype is not None else None
    _check_output(output)
    loaded_profile = Profile.load(profile) if profile is not None else None
    if apply:
        _optional("fxfusion.plan", "--apply")
        _optional("fxfusion.verify", "--apply")
    if fmt == "html":
        _optional("fxfusion.report", "--format html")

    # The user's code may print: keep standard output for the report.
    with contextlib.redirect_stdout(sys.stderr):
        loaded = load_model(model, device=device, dtype=DTYPES[dtype_name] if dtype_name else None,
                            eval_mode=eval_mode)
        if match_only:
            source = None
        elif loaded_profile is not None:
            source = ProfileSource(loaded_profile, device, str(profile))
        else:
            source = LiveSource(device, compile_modes=() if no_compile else ("compile", "compile_reduce_overhead"))
        result = analyze(loaded.model, loaded.example_inputs, source, device=device, model_label=model,
                         entry=loaded.entry, dtype=dtype_name, command="fxfusion " + " ".join(sys.argv[1:]),
                         on_site=lambda i, n, site: typer.echo(f"deciding {site.id} {site.pattern} "
                                                               f"({i + 1}/{n})", err=True))
        verification = None
        if apply:
            plan_mod, verify_mod = _optional("fxfusion.plan", "--apply"), _optional("fxfusion.verify", "--apply")
            if loaded_profile is None:  # live timings: the plan keeps each site's measured baseline and saving
                plan = plan_mod.FusionPlan.from_analysis(result, device=device)
            else:
                plan = plan_mod.FusionPlan.from_decisions(result.captured, result.sites, result.decisions(),
                                                          profile=loaded_profile, device=device,
                                                          undecided=result.undecided())
            # Running the captured graph costs something of its own: a plan must save more than that.
            overhead = plan_mod.measure_overhead(loaded.model, result.captured, loaded.example_inputs, device)
            # Predict from each group's region timed inside the model, not from the standalone pattern timings.
            plan.measure_in_model(loaded.model, loaded.example_inputs, device, reference_ms=overhead.eager_ms)
            _note_in_model(result, plan)
            plan.require_saving_over(overhead)
            verification = verify_mod.verify_plan(loaded.model, loaded.example_inputs, plan, device=device,
                                                  include_compile=not no_compile)
            # The plan travels with the verification: which groups were applied, which refused and why.
            result.verification = {**verification.to_dict(), "plan": plan.to_dict()}
    report = result.to_dict()
    text = _text(report, fmt, result.captured.graphs,
                 verification.render() if verification is not None and fmt == "table" else None)
    if output is not None:
        from fxfusion.schema import atomic_write_text

        atomic_write_text(output, text)
        typer.echo(f"wrote {output} ({len(report['sites'])} sites)", err=True)
    else:
        typer.echo(text, nl=False)
    if verification is not None and not verification.ok:
        raise FxFusionError("the fused model did not verify: " + str(getattr(verification, "reason", "see the report")))


def _note_in_model(result, plan) -> None:
    """Say on each site what the model decided where it overrode the library (a written-out activation)."""
    groups = {g.id: g for g in plan.groups}
    refused = {r.site_id: r for r in plan.refused}
    for o in result.outcomes:
        g, r = groups.get(o.site.id), refused.get(o.site.id)
        if g is not None and g.decided_in_model:
            im = g.in_model
            o.warnings.append(f"fused by --apply all the same: inside the model {g.variant} runs the region "
                              f"{im['speedup']:.2f}x [{im['speedup_ci_low']:.2f}, {im['speedup_ci_high']:.2f}] "
                              "(the library measures a written-out activation as one op)")
        elif r is not None and any(x.startswith("inside the model") for x in r.reasons):
            o.warnings.append(next(x for x in r.reasons if x.startswith("inside the model")))


def register(app: typer.Typer) -> None:
    app.command("analyze")(handles_errors(analyze_command))
