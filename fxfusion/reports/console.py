"""Terminal output for the CLI: calibration progress, and tables that fit the width they are printed at.

A table is declared as columns (:class:`Column`) and rows of strings; :func:`fitted_table` keeps it within the
width: columns that may wrap (shapes, intervals) wrap between words, columns whose value is the same in every row
are folded into the legend, and the least important columns are dropped (and named in the legend) until the rest
fits.  On a terminal the width is the terminal's; off it (a pipe, a file) it is ``$COLUMNS`` when set, else
:data:`WIDE`, so logs keep every column.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import Sequence, TextIO

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fxfusion.measure.hardware import nominal_peaks
from fxfusion.profiles.profile import Entry, Profile
from fxfusion.reports.progress import StepProgress
from fxfusion.measure.stats import AVOID, FUSE, NEUTRAL, UNDECIDED, interval_text

# Off a terminal with no $COLUMNS: wide enough for every column of every table here.
WIDE = 200

def output_width(stream: TextIO | None = None) -> int:
    """The width to print at: the terminal's when ``stream`` is one, else ``$COLUMNS`` if set, else :data:`WIDE`."""
    if stream is not None and getattr(stream, "isatty", lambda: False)():
        return shutil.get_terminal_size().columns
    env = os.environ.get("COLUMNS", "")
    return int(env) if env.isdigit() and int(env) > 0 else WIDE


def fmt_shape(shape: dict) -> str:
    """Dimensions by name: ``M=64 K=256 N=256``."""
    return " ".join(f"{k}={v}" for k, v in shape.items())


# -- tables that fit -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"
    drop: int = 0  # 0: always shown; otherwise dropped, highest first, while the table is too wide
    wrap: bool = False  # may wrap between words (a shape, an interval)
    fold_constant: bool = False  # the same value in every row: said once in the legend instead
    whole: bool = False  # never narrowed (ids, names, verdicts: cut to "g0..." they would mean nothing)


def _cell_len(markup: str) -> int:
    return Text.from_markup(markup).cell_len


def _min_len(markup: str, wrap: bool) -> int:
    text = Text.from_markup(markup).plain
    return max((len(w) for w in text.split()), default=0) if wrap else len(text)


def _table_width(widths: Sequence[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1  # rich's default box: a border and one space each side per column


def fitted_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int,
                 title: str | None = None) -> tuple[Table, list[str]]:
    """A rich Table of ``rows`` (cells may hold rich markup) no wider than ``width``, and the legend's notes: which
    columns were folded (with their one value) or dropped to fit.

    Columns that do not wrap get their natural width; the wrapping ones share what is left, each at least its
    longest word, the rest in proportion to how much more each would take unwrapped."""
    keep = list(range(len(columns)))
    notes = []
    if len(rows) > 1:
        for i, col in enumerate(columns):
            values = {Text.from_markup(r[i]).plain for r in rows}
            if col.fold_constant and len(values) == 1:
                keep.remove(i)
                notes.append(f"{col.header} {values.pop()} throughout")
    natural = [max(_cell_len(c.header), max((_cell_len(r[i]) for r in rows), default=0))
               for i, c in enumerate(columns)]
    least = [max(_min_len(c.header, True), max((_min_len(r[i], c.wrap) for r in rows), default=0)) if c.wrap
             else natural[i] for i, c in enumerate(columns)]

    dropped = []
    for i in sorted((i for i in keep if columns[i].drop), key=lambda i: -columns[i].drop):
        if _table_width([least[k] for k in keep]) <= width:
            break
        keep.remove(i)
        dropped.append(columns[i].header)
    if dropped:
        notes.append(f"hidden at {width} columns: {', '.join(dropped)}")

    widths = {i: natural[i] for i in keep}
    wrapping = [i for i in keep if columns[i].wrap]
    spare = width - _table_width([natural[i] for i in keep])
    if spare < 0 and wrapping:  # shrink the wrapping columns towards their longest word, in proportion
        room = width - _table_width([natural[i] for i in keep if i not in wrapping] + [least[i] for i in wrapping])
        slack = sum(natural[i] - least[i] for i in wrapping) or 1
        for i in wrapping:
            widths[i] = least[i] + max(0, room) * (natural[i] - least[i]) // slack
    table = Table(title=title)
    for i in keep:
        col = columns[i]
        # Where even the narrowest layout is too wide, the other columns fold onto more lines; none is cut to "...".
        table.add_column(col.header, justify=col.justify, no_wrap=not col.wrap and col.whole, overflow="fold",
                         width=widths[i], min_width=natural[i] if col.whole else None)
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    return table, notes


# -- calibration -----------------------------------------------------------------------------------------------------

class CalibrationProgress:
    """``calibrate``'s ``on_entry`` and ``on_note`` callbacks, shown on stderr by a :class:`StepProgress`."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, clock=None):
        kw = {"clock": clock} if clock is not None else {}
        self.progress = StepProgress("calibrating", stream=stream, tty=tty, **kw)

    def __enter__(self) -> "CalibrationProgress":
        return self

    def update(self, done: int, total: int, entry: Entry | None, message: str) -> None:
        if message in ("resumed", "done"):
            if message == "resumed":  # read from the journal, no time spent: the estimate starts after these
                self.progress.skip(done, total)
            if done == total:  # the bar ends at its total, also when the last entry was read back
                self.progress.finish(done, total)
            return
        self.progress.step(done, total, message)

    def note(self, message: str) -> None:
        self.progress.note(message)

    def __exit__(self, *exc) -> None:
        self.progress.close()


def _ci(s) -> str:
    """``1.08x [1.02,1.13]``: no space inside the interval, so a narrow column wraps before it, not inside."""
    return interval_text(s, sep=",")


VERDICT_STYLE = {FUSE: "green", NEUTRAL: "yellow", AVOID: "red", UNDECIDED: "dim"}

SUMMARY_COLUMNS = (
    Column("pattern", whole=True), Column("shape", wrap=True), Column("dtype", fold_constant=True),
    Column("best", drop=1), Column("speedup [95% CI]", wrap=True), Column("verdict", whole=True),
    Column("bytes saved", "right", drop=2), Column("GFLOP/s", "right", drop=3), Column("GB/s", "right", drop=4),
    Column("% roofline", "right", drop=5),
)

LEGEND = ("fuse / avoid: the 95% CI of the speedup over eager lies above 1.02x / below 0.98x; neutral: neither; "
          "undecided: no fused variant runs here")


def _num(x: float | None) -> str:
    return "-" if not x else f"{x:.3g}"


def summary_table(profile: Profile, width: int = WIDE):
    """The decisions of a profile as a table that fits ``width``, with its legend below."""
    meta = profile.metadata
    nominal = nominal_peaks(profile.hardware.get("source", ""))
    columns = [c for c in SUMMARY_COLUMNS if not (nominal and c.header == "% roofline")]
    rows = []
    for e in profile.entries:
        d = e.decision
        best = e.variant(d.best_variant)
        verdict = d.display_verdict
        cells = [e.pattern, fmt_shape(e.shape), e.dtype, d.best_variant, _ci(d.speedup),
                 f"[{VERDICT_STYLE[verdict]}]{verdict}[/]" + (" [bold](noisy)[/]" if d.noisy else ""),
                 f"{e.memory_reduction:.0%}",
                 _num(best.gflops if best else None), _num(best.gbs if best else None),
                 _num(best.pct_of_roofline if best else None)]
        rows.append(cells[:len(columns)])
    threads = meta["threads"]
    title = f"{meta['hardware']} ({meta['device_name']}, {meta['device']}, {threads} thread{'s' * (threads != 1)})"
    table, notes = fitted_table(columns, rows, width, title)
    if nominal:
        notes.append(f"% roofline hidden: the {profile.hardware.get('name', meta['hardware'])} peaks are nominal")
    return Group(table, Text(LEGEND + "." + (" " + "; ".join(notes) + "." if notes else ""), style="dim"))


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


# What a warning is about, by a phrase it contains (first match wins): the terminal counts them by kind.
WARNING_KINDS = (
    ("] is neutral: noisy", "noisy verdicts made neutral"),
    ("matmul runs at", "slow dtypes"),
    ("ceiling", "ceilings"),
    ("hardware '", "hardware name"),
    ("CUPTI", "profiler"),
)


def warning_kind(warning: str) -> str:
    return next((kind for phrase, kind in WARNING_KINDS if phrase in warning), "other")


def warnings_line(warnings: Sequence[str], where: str) -> str | None:
    """One line for a run's warnings: how many, counted by kind, and ``where`` the full list is; None if none."""
    unique = list(dict.fromkeys(warnings))
    if not unique:
        return None
    kinds: dict[str, int] = {}
    for w in unique:
        kinds[warning_kind(w)] = kinds.get(warning_kind(w), 0) + 1
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return f"{len(unique)} warning{'s' if len(unique) != 1 else ''} ({counts}): the full list is in {where}"


def print_summary(profile: Profile, stream: TextIO | None = None, warnings_stream: TextIO | None = None,
                  where: str = "the profile's metadata.warnings") -> None:
    """The summary table on ``stream`` (stdout) at its width; the warnings as one line counted by kind on
    ``warnings_stream`` (stderr), the full list being in the profile (``where``) and its HTML report."""
    stream = stream or sys.stdout
    out = Console(file=stream, width=output_width(stream), highlight=False)
    out.print(summary_table(profile, output_width(stream)))
    for line in regime_lines(profile):
        out.print(line)
    line = warnings_line(profile.metadata.get("warnings", []), where)
    if line:
        err = warnings_stream or sys.stderr
        err.write(f"warning: {line}\n")
        err.flush()
