"""Progress of a long command on stderr: a rich bar on a terminal, plain lines with counts and an ETA elsewhere.

Off a terminal (a pipe, a log file, CI) a live bar is invisible or a mess of control codes, so there each step is
one line of its own::

    calibrating 3/12: linear_bias M=64 K=256 N=256 float32 (0:41 elapsed, about 2:03 left)

The estimate of the time left is the mean time per finished step since the *base* (the first step, moved past
steps that cost nothing, such as entries resumed from a journal: :meth:`StepProgress.skip`) times the steps left.  Nothing is printed
before the first step, so an input error that ends a command early prints its one line and nothing else.

The clock and the stream are injectable; tests drive this with a fake clock.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Callable, Iterator, TextIO


def fmt_duration(seconds: float) -> str:
    """``0:41``, ``12:05``, ``1:02:03``."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StepProgress:
    """Counts, elapsed time and time left of a job of ``total`` steps, on ``stream`` (stderr by default).

    ``tty`` None asks the stream; on a terminal a transient rich bar is shown, elsewhere plain lines.
    """

    def __init__(self, verb: str, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.verb, self._stream, self._clock = verb, stream, clock
        stream_now = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(stream_now, "isatty", lambda: False)()) if tty is None else tty
        self._bar = None
        self._start: float | None = None
        self._base: tuple[float, int] | None = None  # (time, steps done) the rate is measured from
        self.lines: int = 0

    # -- the two ways of showing it --------------------------------------------------------------------------------
    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self.lines += 1

    def _ensure_bar(self, total: int):
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn(f"[bold]{self.verb}[/]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 TextColumn("{task.description}"), console=Console(file=self.stream),
                                 transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=total)
        return self._bar

    # -- what callers report ---------------------------------------------------------------------------------------
    def eta(self, done: int, total: int) -> float | None:
        """Seconds left, from the mean time per step since the base; None before a step has finished."""
        if self._base is None:
            return None
        t0, d0 = self._base
        if done <= d0:
            return None
        return (self._clock() - t0) / (done - d0) * max(0, total - done)

    def step(self, done: int, total: int, message: str = "") -> None:
        """Step ``done + 1`` of ``total`` (``message`` says what) starts now; ``done`` steps are finished."""
        now = self._clock()
        if self._start is None:
            self._start = now
        if self._base is None:
            self._base = (now, done)
        if self.tty:
            bar = self._ensure_bar(total)
            bar.update(self._task, completed=done, total=total, description=message)
            return
        left = self.eta(done, total)
        when = f"{fmt_duration(now - self._start)} elapsed" + (f", about {fmt_duration(left)} left"
                                                             if left is not None else "")
        self._line(f"{self.verb} {min(done + 1, total)}/{total}" + (f": {message}" if message else "") + f" ({when})")

    def skip(self, done: int, total: int) -> None:
        """``done`` steps are finished but took no time (resumed from a journal): nothing is printed, and the
        estimate of the time left starts afresh at the next step."""
        self._base = None
        if self.tty and self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def finish(self, done: int, total: int, message: str = "") -> None:
        """All steps are done (plain: one closing line; terminal: the bar reaches its end)."""
        if self._start is None:
            return
        if self.tty:
            self._ensure_bar(total).update(self._task, completed=done, total=total, description=message)
            return
        self._line(f"{self.verb}: {done}/{total} done in {fmt_duration(self._clock() - self._start)}"
                   + (f" ({message})" if message else ""))

    def note(self, message: str) -> None:
        """A line of its own: a phase that is not a counted step, or a warning that should not wait for the end."""
        if self.tty and self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        else:
            self._line(message)

    def close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.__exit__(None, None, None)

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def told(note: Callable[[str], None], logger: str = "fxfusion.planning") -> Iterator[None]:
    """While inside, each INFO line of ``logger`` (the --apply stages and candidate builds, with their seconds) goes
    to ``note``: a user waiting out a 90 s --apply sees where it is."""
    class Note(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            note(record.getMessage())

    log, handler = logging.getLogger(logger), Note(logging.INFO)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)  # (setLevel, not the attribute: it clears the logger's cache of enabled levels)
    log.addHandler(handler)
    log.propagate = False  # told once: not again by a root logger the calling program set to INFO
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
