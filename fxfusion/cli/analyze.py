"""`fxfusion analyze MODEL.py[:NAME]`: the fusible sites of a user's model, each decided at its shape and dtype."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fxfusion.calibration.calibrate import check_device, parse_dtypes
from fxfusion.measure.devices import dtype as dtype_record
from fxfusion.cli.errors import handles_errors
from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import check_model_file, load_model
from fxfusion.planning.analyze import analyze
from fxfusion.planning.decide import LiveSource, ProfileSource
from fxfusion.measure.devices import as_device, is_cuda
from fxfusion.planning.candidates import CandidateSet, parse_candidates, parse_compile_modes
from fxfusion.planning.dynamic import parse_dynamic
from fxfusion.planning.pipeline import Planner, apply_and_verify, apply_and_verify_dynamic, default_budget_s
from fxfusion.planning.saved import save_plan as write_plan
from fxfusion.profiles.machine import find_machine_profile
from fxfusion.profiles.profile import Profile
from fxfusion.measure.threads import set_threads
from fxfusion.profiles.schema import atomic_write_text, check_writable
from fxfusion.reports.console import WIDE, fmt_shape, output_width
from fxfusion.reports.html import render_analysis_html
from fxfusion.reports.progress import StepProgress, told
from fxfusion.reports.text import render_markdown, render_table
from fxfusion.reports.dynamic import dynamic_markdown, render_dynamic
from fxfusion.reports.verification import render_verification

FORMATS = ("table", "json", "markdown", "html")
# -o FILE without --format: the format its suffix names (anything else: the table, as on the terminal).
SUFFIX_FORMATS = {".json": "json", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}


def output_format(fmt: str | None, output: Path | None) -> str:
    """--format as given, else the one ``output``'s suffix names, else the table."""
    if fmt is None:
        return SUFFIX_FORMATS.get(output.suffix.lower(), "table") if output is not None else "table"
    if fmt not in FORMATS:
        raise FxFusionError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    return fmt
# Where `fxfusion calibrate` writes by default, and where analyze looks for this machine's profile.
PROFILE_FOLDER = Path("profiles")


def _text(report: dict, fmt: str, graphs=None, extra=None, width: int = WIDE) -> str:
    if fmt == "json":
        return json.dumps(report, indent=1, allow_nan=False) + "\n"
    if fmt == "markdown":
        ranges = (report.get("verification") or {}).get("dynamic")
        return render_markdown(report) + (dynamic_markdown(ranges) if ranges else "")
    if fmt == "html":
        return render_analysis_html(report, graphs)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(render_table(report, width))
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
                                                         "(nearest measured entry).  Default: this machine's "
                                                         "profile in profiles/ if one was calibrated here, else "
                                                         "measure live.")] = None,
    regime: Annotated[str, typer.Option(help="Timing regime to decide in: pipelined (calls back to back, as a "
                                             "forward pass runs them) or isolated (one synchronised call).")
                      ] = "pipelined",
    allow_foreign_profile: Annotated[bool, typer.Option("--allow-foreign-profile",
                                                        help="Use a --profile measured on another device all the "
                                                             "same (its decisions may not transfer).")] = False,
    measure: Annotated[bool, typer.Option("--measure", help="Measure each site live at its exact shape and dtype "
                                                            "(the default without --profile).")] = False,
    match_only: Annotated[bool, typer.Option("--match-only", help="Only capture and match: no decisions.")] = False,
    fmt: Annotated[Optional[str], typer.Option("--format", help="table, json, markdown or html (default: from "
                                                              "-o's suffix, .json .md .html; else table).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report here (atomically) "
                                                                        "instead of standard output.")] = None,
    eval_mode: Annotated[bool, typer.Option("--eval", help="Call model.eval() before analysing.")] = False,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="Live measurement without the torch.compile "
                                                                  "variants (much faster on a CPU).")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Apply the 'fuse' decisions and verify the fused model "
                                                        "(outputs and end-to-end time) beside the candidates "
                                                        "(whole-model compile, the plan compiled); exit 1 if it "
                                                        "does not verify.")] = False,
    compile_modes: Annotated[str, typer.Option("--compile-modes", help="With --apply: the torch.compile "
                                               "configurations to try, whole-model and with the rewrites: auto (on "
                                               "CUDA default, freezing, cudagraphs, freezing+cudagraphs; on a CPU "
                                               "default, freezing) or a comma list of default, freezing, cudagraphs "
                                               "(reduce-overhead), freezing+cudagraphs, max-autotune-no-cudagraphs."
                                               )] = "auto",
    budget_s: Annotated[Optional[float], typer.Option("--budget-s", help="With --apply: seconds the whole --apply "
                                                      "may take (measuring, compiling, timing); candidates not built "
                                                      "in time are listed with why.  Default: 90 on CUDA, none on a "
                                                      "CPU.")] = None,
    candidates: Annotated[str, typer.Option("--candidates", help="With --apply: the optional candidates to time "
                                                                 "beside eager, compile and planned: all, none, or a "
                                                                 "comma list of channels_last+compile, "
                                                                 "captured+compile, planned+compile, "
                                                                 "planned+channels_last+compile.")] = "all",
    compiled_regime: Annotated[Optional[bool], typer.Option(
        "--compiled-regime/--no-compiled-regime",
        help="With --apply: time each class of rewrites with the whole model compiled (regions compiled alone "
             "where the budget left a class out), so the compiled candidates get a prediction and apply only the "
             "rewrites that make the compiled model faster beyond the noise.  Default: on with CUDA; on a CPU it "
             "costs several compiles of the model.")] = None,
    save_plan: Annotated[Optional[Path], typer.Option("--save-plan", help="With --apply: once the plan verifies, "
                                                      "save it here (schemas/plan.schema.json) for `fxfusion apply`, "
                                                      "which re-applies it without measuring.")] = None,
    dynamic: Annotated[Optional[str], typer.Option("--dynamic", help="With --apply: one plan for a range of shapes: "
                                                   "batch (dim 0 of the inputs) and/or seq (dim 1 of token inputs), "
                                                   "e.g. batch,seq or batch=1:32,seq=16:512 (defaults 1:32 and "
                                                   "16:512, seq at most the model's position limit).  Measured at "
                                                   "the smallest, middle and largest shapes; a rewrite kept only "
                                                   "where it pays at all three; verified at a shape never "
                                                   "measured too.")] = None,
) -> None:
    """Find the fusible sites of a model, decide each at its own shape and dtype, and report them."""
    fmt = output_format(fmt, output)
    if profile is not None and measure:
        raise FxFusionError("--profile and --measure are alternatives: decide from a profile or measure live")
    if match_only and (profile is not None or measure or apply):
        raise FxFusionError("--match-only makes no decisions: it cannot be combined with --profile, --measure or "
                            "--apply")
    if allow_foreign_profile and profile is None:
        raise FxFusionError("--allow-foreign-profile applies to a --profile given on the command line")
    set_threads(threads)
    device = check_device(device)
    dtype_name = parse_dtypes(dtype)[0] if dtype is not None else None
    if output is not None:
        check_writable(output)
    if save_plan is not None:
        if not apply:
            raise FxFusionError("--save-plan saves the plan --apply makes and verifies: add --apply")
        check_writable(save_plan)
    if dynamic is not None:
        if not apply:
            raise FxFusionError("--dynamic plans and verifies over a range of shapes: add --apply")
        parse_dynamic(dynamic)  # a malformed range is its one line before the model loads
    check_model_file(model)  # a missing model file is its one line, before anything is announced
    modes = parse_compile_modes(compile_modes, is_cuda(device)) if compile_modes != "auto" else None
    extra = parse_candidates(candidates)
    if budget_s is not None and budget_s <= 0:
        raise FxFusionError(f"--budget-s must be positive, got {budget_s:g}")
    source = None
    if not match_only:  # before loading the model: a foreign profile fails fast
        source, _ = _source(device, profile, measure, regime, allow_foreign_profile, no_compile)
        typer.echo(f"deciding in the {regime} regime from {source.rule}", err=True)
    progress = StepProgress("analyzing")
    sites_total = [0]

    def on_site(i: int, n: int, site) -> None:
        sites_total[0] = n
        progress.step(i, n, f"{site.id} {site.pattern} {fmt_shape(site.shape)}")

    # The user's code may print: keep standard output for the report.
    with contextlib.redirect_stdout(sys.stderr):
        loaded = load_model(model, device=device, dtype=dtype_record(dtype_name).torch if dtype_name else None,
                            eval_mode=eval_mode)
        with progress:
            def analyze_at(inputs):
                return analyze(loaded.model, inputs, source, device=device, model_label=model, entry=loaded.entry,
                               dtype=dtype_name, command="fxfusion " + " ".join(sys.argv[1:]), on_site=on_site,
                               on_note=progress.note, time_forward=not match_only)

            result = analyze_at(loaded.example_inputs) if dynamic is None else None
            if progress.tty:  # the bar ends at its total, not one short (off a terminal: a line per site)
                progress.finish(sites_total[0], sites_total[0])
            progress.close()
            verification = None
            if apply:
                progress.note("applying the plan and verifying the fused model (outputs, then end-to-end time)")
                candidates = (CandidateSet(configs=modes, optional=extra) if not no_compile
                              else CandidateSet.uncompiled())
                planner = Planner(as_device(device), candidates=candidates, compiled_regime=compiled_regime,
                                  total_s=budget_s if budget_s is not None else default_budget_s(device))
                with told(progress.note):  # each stage and candidate build as it ends, with its seconds
                    if dynamic is None:
                        made, verification = apply_and_verify(result, loaded.model, loaded.example_inputs, planner)
                    else:
                        made, verification, result = apply_and_verify_dynamic(loaded.model, loaded.example_inputs,
                                                                              planner, dynamic, analyze_at)
    report = result.to_dict()
    ranges = report.get("verification", {}).get("dynamic")
    width = output_width(sys.stdout if output is None else None)  # a terminal's own width; files: $COLUMNS or wide
    text = _text(report, fmt, result.captured.graphs,
                 _told(verification, ranges) if verification is not None and fmt == "table" else None, width)
    if output is not None:
        atomic_write_text(output, text)
        n = len(report["sites"])
        typer.echo(f"wrote {output} ({n} site{'s' * (n != 1)})", err=True)
    else:
        typer.echo(text, nl=False)
    if verification is not None and not verification.ok:
        raise FxFusionError("the fused model did not verify: " + str(getattr(verification, "reason", "see the report")))
    if save_plan is not None:  # after the verification: only a plan that verified is saved
        write_plan(made, save_plan, loaded.model, loaded.example_inputs)
        typer.echo(f"wrote {save_plan} ({len(made.groups)} rewrite{'s' * (len(made.groups) != 1)}, candidate "
                   f"{(made.choice or {}).get('chosen')}); `fxfusion apply {save_plan} {model}` applies it", err=True)


def _told(verification, ranges: dict | None):
    """The verification as the table tells it, and the dynamic shapes' section after it."""
    if ranges is None:
        return render_verification(verification)
    from rich.console import Group
    return Group(render_verification(verification), render_dynamic(ranges))


def _source(device, profile: Path | None, measure: bool, regime: str, allow_foreign: bool, no_compile: bool):
    """(source, profile) of the decisions: the --profile given, this machine's calibrated profile in profiles/, or
    live measurement (--measure, or no profile of this machine); ``source.rule`` says which and why."""
    live = LiveSource(device, compile_modes=() if no_compile else ("compile", "compile_reduce_overhead"),
                      regime=regime)  # for every site (no profile), or the patterns a profile lacks
    if profile is not None:
        loaded = Profile.load(profile)
        source = ProfileSource(loaded, device, str(profile), regime, allow_foreign, live=live)
        source.rule = f"{profile} (given with --profile)"
        return source, loaded
    found = None if measure else find_machine_profile(PROFILE_FOLDER, device)
    if found is not None:
        source = ProfileSource(found.profile, device, str(found.path), regime, live=live)
        source.rule = found.rule
        return source, found.profile
    source = live
    source.rule = ("live measurement (--measure)" if measure else
                   f"live measurement: no profile calibrated on this machine in {PROFILE_FOLDER}/")
    return source, None


def register(app: typer.Typer) -> None:
    app.command("analyze")(handles_errors(analyze_command))
