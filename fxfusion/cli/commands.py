"""The fxfusion command line.  Commands live here and in the other ``fxfusion.cli`` modules; logic lives in the library.

Every library error is an FxFusionError, which becomes one line on stderr and exit code 1; Ctrl-C exits 130 with one
line and no traceback, and leaves no half-written file (all writes are atomic; an interrupted calibration keeps its
journal of finished entries for --resume and says so).  The entry point is :func:`fxfusion.cli.main`, which handles
Ctrl-C before this module (and torch) is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fxfusion.calibration.calibrate import calibrate as run
from fxfusion.calibration.calibrate import interrupted_message
from fxfusion.cli import analyze as analyze_commands
from fxfusion.cli import apply as apply_commands
from fxfusion.cli import report as report_commands
from fxfusion.cli.errors import fail, handles_errors
from fxfusion.reports.console import CalibrationProgress, print_summary

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which operator fusions pay off on this hardware, at this shape and dtype -- measured.")


@app.callback()
def _root() -> None:
    """fxfusion: measured, hardware-aware fusion decisions for PyTorch."""


@app.command()
@handles_errors
def calibrate(
    hardware: Annotated[str, typer.Option(help="Hardware name from the registry (or any name with --peak-*).")],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    quick: Annotated[bool, typer.Option(help="Two sizes per pattern, fewer rounds: minutes on a laptop CPU.")] = False,
    patterns: Annotated[str, typer.Option(help="'all', or families/patterns, e.g. linear,full_attention.")] = "all",
    dtypes: Annotated[Optional[str], typer.Option(help="Comma list; default float32 (CPU), float32,bfloat16 (CUDA).")] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Size set: quick, full or gpu (default from --quick/--device).")] = None,
    peak_gflops: Annotated[Optional[float], typer.Option(help="Theoretical peak GFLOP/s (overrides the registry).")] = None,
    peak_bandwidth: Annotated[Optional[float], typer.Option(help="Theoretical peak memory bandwidth, GB/s.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Profile to write; default profiles/HARDWARE.json.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from OUTPUT.progress.jsonl.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (recorded in the profile).")] = None,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="Skip the torch.compile variants.")] = False,
) -> None:
    """Measure the fusion pattern library on this machine and write a schema-validated profile."""
    out = output
    if out is None:  # the default place: profiles/HARDWARE.json, the folder made if this is the first profile here
        out = Path("profiles") / f"{hardware}.json"
        out.parent.mkdir(exist_ok=True)
    modes = () if no_compile else ("compile", "compile_reduce_overhead")
    try:
        with CalibrationProgress() as progress:
            profile = run(hardware=hardware, device=device, patterns=patterns, dtypes=dtypes, quick=quick,
                          sizes=sizes, peak_gflops=peak_gflops, peak_bandwidth=peak_bandwidth, output=out,
                          resume=resume, threads=threads, compile_modes=modes, on_entry=progress.update,
                          on_note=progress.note, command="fxfusion " + " ".join(sys.argv[1:]))
    except KeyboardInterrupt:  # the journal of finished entries is kept: say where, and how to use or drop it
        fail(interrupted_message(out), 130)
    print_summary(profile, where=f"{out} (metadata.warnings; `fxfusion report {out}` lists them)")
    n = len(profile.entries)
    typer.echo(f"wrote {out} ({n} {'entry' if n == 1 else 'entries'})", err=True)


# The other commands live one module per command family and register themselves on this app.
analyze_commands.register(app)
apply_commands.register(app)
report_commands.register(app)


def main() -> None:
    """The commands; the console script is :func:`fxfusion.cli.main`, which also handles a Ctrl-C during imports."""
    app()


if __name__ == "__main__":
    main()
