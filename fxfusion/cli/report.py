"""CLI commands for reading results: ``report`` (HTML), ``compare`` (two profiles) and ``validate`` (schemas).

Registered on the main app by :func:`register`; the logic lives in :mod:`fxfusion.reports.html`, :mod:`fxfusion.profiles.compare`
and :mod:`fxfusion.profiles.validation`.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fxfusion.cli.errors import handles_errors
from fxfusion.errors import FxFusionError
from fxfusion.reports.html import render_analysis_html, render_profile_html
from fxfusion.profiles.schema import atomic_write_text, check_writable
from fxfusion.profiles.schema import validate as validate_against_schema
from fxfusion.profiles.validation import load_profile, read_json, schema_kind
from fxfusion.reports.plots import require_matplotlib
from fxfusion.profiles.compare import compare_profiles
from fxfusion.measure.timing import check_regime
from fxfusion.reports.console import output_width
from fxfusion.reports.text import render_comparison
from fxfusion.profiles.validation import validate_file
from fxfusion.reports.progress import StepProgress

FORMATS = ("table", "markdown", "json")


def _check_output(output: Path, *inputs: Path) -> None:
    if any(output.resolve() == i.resolve() for i in inputs):
        raise FxFusionError(f"refusing to write {output}: it is an input of this command")


@handles_errors
def report(
    file: Annotated[Path, typer.Argument(help="A profile (fxfusion calibrate) or an analysis (fxfusion analyze).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o",
                                                   help="HTML file to write; default FILE with .html.")] = None,
) -> None:
    """Write one self-contained HTML report: speedup plots, roofline and decision table (or a model's sites)."""
    out = output or file.with_suffix(".html")
    _check_output(out, file)
    check_writable(out)
    data = read_json(file)
    kind = schema_kind(data, file)
    if kind == "comparison":
        raise FxFusionError(f"{file} is a comparison; report takes a profile or an analysis "
                            f"(for a readable comparison: fxfusion compare A B --format markdown)")
    if kind == "profile":
        require_matplotlib()
        profile = load_profile(file)
        progress_total = [0]

        def on_plot(done: int, total: int, message: str = "") -> None:
            progress_total[0] = total
            progress.step(done, total, message)

        with StepProgress("drawing") as progress:
            html = render_profile_html(profile, source=str(file), on_plot=on_plot)
            if progress.tty:  # the bar ends at its total (off a terminal each plot has had its line)
                progress.finish(progress_total[0], progress_total[0])
            what = f"{len(profile.entries)} entries"
    else:
        validate_against_schema(data, "analysis", source=str(file))
        n = len(data["sites"])
        html, what = render_analysis_html(data), f"{n} site{'s' * (n != 1)}"
    atomic_write_text(out, html)
    typer.echo(f"wrote {out} ({what})", err=True)


@handles_errors
def compare(
    a: Annotated[Path, typer.Argument(help="Profile A (e.g. the CPU one).")],
    b: Annotated[Path, typer.Argument(help="Profile B (e.g. the GPU one).")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="table, markdown or json (default: from "
                                                                      "-o's suffix, .json .md; else table).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    regime: Annotated[str, typer.Option("--regime", help="Compare the decisions of this timing regime: pipelined "
                                                         "(back to back, as in a model) or isolated.")] = "pipelined",
) -> None:
    """Compare two profiles: verdict and best-variant flips, speedup ratios, and where each decision boundary lies."""
    if format is None:
        format = {".json": "json", ".md": "markdown", ".markdown": "markdown"}.get(
            output.suffix.lower() if output is not None else "", "table")
    if format not in FORMATS:
        raise FxFusionError(f"unknown --format {format!r}; choose from {', '.join(FORMATS)}")
    if output is not None:
        _check_output(output, a, b)
        check_writable(output)
    check_regime(regime)
    comparison = compare_profiles(load_profile(a), load_profile(b), regime=regime)
    if format == "json":
        text = comparison.to_json()  # validated against schemas/comparison.schema.json
    elif format == "markdown":
        text = comparison.to_markdown()
    else:
        from rich.console import Console

        width = output_width(sys.stdout if output is None else None)  # a terminal's width; else $COLUMNS or wide
        if output is None:
            Console(file=sys.stdout, width=width, highlight=False).print(render_comparison(comparison, width))
            return
        console = Console(file=io.StringIO(), width=width, record=True)
        console.print(render_comparison(comparison, width))
        text = console.export_text()
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        typer.echo(f"wrote {output} ({comparison.summary_line()})", err=True)


@handles_errors
def validate(
    file: Annotated[Path, typer.Argument(help="A profile, analysis or comparison JSON file; its \"kind\" picks the "
                                              "schema.")],
) -> None:
    """Check a profile, analysis report or comparison against its schema; print each error with its JSON path (exit 1
    if any)."""
    result = validate_file(file)
    if result.valid:
        typer.echo(f"{file}: valid {result.schema} ({result.summary})")
        return
    typer.echo(f"{file}: invalid {result.schema}, {len(result.errors)} error(s):")
    for path, message in result.errors:
        typer.echo(f"  {path}: {message}")
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("compare")(compare)
    app.command("validate")(validate)
