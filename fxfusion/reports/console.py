"""Rich output for the CLI: a progress bar for calibration and the summary table of a profile."""

from __future__ import annotations

import shutil
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fxfusion.profiles.profile import Entry, Profile

# Tables are wider than 80 columns; when output goes to a file or pipe, do not fold them.
console = Console(width=None if sys.stdout.isatty() else max(shutil.get_terminal_size().columns, 180))


class CalibrationProgress:
    """A transient progress bar on stderr, started at the first update (so input errors print cleanly)."""

    def __enter__(self):
        self._progress = None
        return self

    def update(self, done: int, total: int, entry: Entry | None, message: str) -> None:
        if self._progress is None:
            self._progress = Progress(TextColumn("[bold]calibrating[/]"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.description}"),
                                      console=Console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=total)
        self._progress.update(self._task, completed=done, total=total, description=message)

    def __exit__(self, *exc):
        if self._progress is not None:
            return self._progress.__exit__(*exc)
        return None


def fmt_shape(shape: dict) -> str:
    return "x".join(str(v) for v in shape.values())


def _ci(s) -> str:
    return f"{s.median:.2f}x [{s.ci_low:.2f}, {s.ci_high:.2f}]" if s else "-"


VERDICT_STYLE = {"fuse": "green", "neutral": "yellow", "avoid": "red"}


def summary_table(profile: Profile) -> Table:
    meta = profile.metadata
    table = Table(title=f"{meta['hardware']} ({meta['device_name']}, {meta['device']}, {meta['threads']} threads)")
    for col in ("pattern", "shape", "dtype", "best", "speedup [95% CI]", "verdict", "bytes saved", "GFLOP/s",
                "GB/s", "% roofline"):
        table.add_column(col, no_wrap=True,
                         justify="right" if col in ("GFLOP/s", "GB/s", "% roofline", "bytes saved") else "left")
    for e in profile.entries:
        d = e.decision
        best = e.variant(d.best_variant)
        table.add_row(
            e.pattern, fmt_shape(e.shape), e.dtype, d.best_variant, _ci(d.speedup),
            f"[{VERDICT_STYLE[d.verdict]}]{d.verdict}[/]" + (" [bold](noisy)[/]" if d.noisy else ""),
            f"{e.memory_reduction:.0%}",
            f"{best.gflops:.1f}" if best and best.gflops else "-", f"{best.gbs:.1f}" if best and best.gbs else "-",
            f"{best.pct_of_roofline:.1f}" if best and best.pct_of_roofline else "-",
        )
    return table


def regime_lines(profile: Profile) -> list[str]:
    """Below the table (whose verdicts are the isolated regime's): the pipelined verdicts where they differ, and what
    the noise watch found; noisy entries are flagged in the table and listed in the warnings."""
    both = [e for e in profile.entries if e.pipelined_decision is not None]
    if not both:
        return [f"one timing regime only: {profile.regimes[0]}"]
    differ = [f"{e.key()} ({e.decision.verdict} -> {e.pipelined_decision.verdict}"
              f"{', noisy' if e.pipelined_decision.noisy else ''})" for e in both
              if e.pipelined_decision.verdict != e.decision.verdict]
    lines = ["verdicts above: isolated regime (one synchronised call); pipelined (calls back to back) differs at "
             + (", ".join(differ) if differ else "no entry")]
    noise = profile.metadata.get("noise") or {}
    if noise:
        lines.append(f"noise: {noise.get('contended_entries', 0)} of {len(profile.entries)} entries measured under "
                     f"contention, {noise.get('remeasured_entries', 0)} measured again, {len(noise.get('noisy', []))} "
                     "verdict(s) left noisy and made neutral")
    return lines


def print_summary(profile: Profile) -> None:
    console.print(summary_table(profile))
    for line in regime_lines(profile):
        console.print(line)
    for w in profile.metadata.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
