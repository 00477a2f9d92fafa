"""The command line, on top of everything and thin: typer commands that call the library."""

from fxfusion.cli.app import app, main

__all__ = ["app", "main"]
