"""The one exception type the library raises for bad input; only the CLI turns it into a message and exit code."""


class FxFusionError(Exception):
    """A user-facing error: its message is one line that says what is wrong and, where possible, what to do."""
