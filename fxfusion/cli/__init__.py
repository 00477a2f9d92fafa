"""The command line, on top of everything and thin: typer commands that call the library.

:func:`main` is the console script (``fxfusion = "fxfusion.cli:main"`` in pyproject.toml).  Ctrl-C exits 130 with
one line whenever it lands, including the first seconds while ``import torch`` runs: so ``main`` handles
KeyboardInterrupt (and SIGTERM, which it turns into one) *before* it imports :mod:`fxfusion.cli.commands` (which imports torch), and this package imports
nothing heavy itself (``app`` is imported on first use).
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED_EARLY = "interrupted: stopped before anything was written"


def _interrupted_early() -> None:
    """Say it in one line and leave at once: after an import cut short, an orderly shutdown can run half-set-up
    modules' exit handlers and print tracebacks of its own."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed or broken stdout must not hide the message
        pass
    sys.stderr.write(f"error: {INTERRUPTED_EARLY}\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    pressed: list[int] = []

    def on_sigint(signum, frame):
        pressed.append(signum)
        raise KeyboardInterrupt

    # Python's own handler raises KeyboardInterrupt, which an import may swallow: torch's C++ start-up imports numpy
    # and carries on without it on any error, Ctrl-C included.  This one also remembers that Ctrl-C was pressed.
    # (A SIGINT that is ignored, as under nohup, stays ignored.)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    # SIGTERM (kill, a job scheduler, a closed session) is answered as Ctrl-C is: one line, the journal kept.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigint)
    try:
        try:
            from fxfusion.cli.commands import app
        except BaseException:
            # Ctrl-C while importing may surface as another error (a class body's __set_name__ wraps it in a
            # RuntimeError): what was pressed decides, not what came out.
            if pressed:
                _interrupted_early()
            raise
        if pressed:  # swallowed while importing: stop now, before anything runs on a half-imported torch
            _interrupted_early()
        app()
    except KeyboardInterrupt:  # before typer took over: while importing torch and the commands
        _interrupted_early()
    except SystemExit as exc:
        # typer turns a Ctrl-C that lands while it parses the arguments into a silent exit 130; the commands'
        # own handler (fxfusion.cli.errors) says what was left behind and marks that it did.
        errors = sys.modules.get("fxfusion.cli.errors")
        if exc.code == 130 and not getattr(errors, "interrupt_reported", False):
            _interrupted_early()
        raise


def __getattr__(name: str):
    """``from fxfusion.cli import app`` gives the Typer app (defined in :mod:`fxfusion.cli.commands`), importing the
    commands on first use."""
    if name == "app":
        from fxfusion.cli.commands import app as typer_app  # the package's own child: no import loop
        globals()["app"] = typer_app
        return typer_app
    raise AttributeError(f"module 'fxfusion.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
