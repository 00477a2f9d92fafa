"""What every CLI command shares: FxFusionError -> one line on stderr and exit 1; Ctrl-C -> exit 130, no traceback."""

from __future__ import annotations

import functools
import os

import typer

from fxfusion.errors import FxFusionError


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handles_errors(command):
    """Decorate a typer command so library errors become one-line messages (also under typer's CliRunner)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FxFusionError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted: nothing half-written was left behind", 130)
        except typer.Exit:
            raise
        except Exception as exc:  # a bug or an unforeseen input: still one line, the traceback only on request
            if os.environ.get("FXFUSION_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(f"unexpected {type(exc).__name__}: {first} (set FXFUSION_DEBUG=1 for the traceback)")

    return wrapper
