"""What every CLI command shares: FxFusionError -> one line on stderr and exit 1; Ctrl-C -> exit 130, one line."""

from __future__ import annotations

import functools
import os

import typer

from fxfusion.errors import FxFusionError

# Every write is atomic (a temporary file renamed into place), so an interrupted command leaves the old file or none.
INTERRUPTED = "interrupted: no file was half-written (every write is atomic)"

# Set once a command has said why it stopped on Ctrl-C, so fxfusion.cli.main does not say it again.
interrupt_reported = False


def fail(message: str, code: int = 1) -> None:
    global interrupt_reported
    if code == 130:
        interrupt_reported = True
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a KeyboardInterrupt (Python wraps one raised inside a class
    body's ``__set_name__`` in a RuntimeError, for instance)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def handles_errors(command):
    """Decorate a typer command so library errors become one-line messages (also under typer's CliRunner)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FxFusionError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail(INTERRUPTED, 130)
        except typer.Exit:
            raise
        except Exception as exc:  # a bug or an unforeseen input: still one line, the traceback only on request
            if caused_by_interrupt(exc):
                fail(INTERRUPTED, 130)
            if os.environ.get("FXFUSION_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(f"unexpected {type(exc).__name__}: {first} (set FXFUSION_DEBUG=1 for the traceback)")

    return wrapper
