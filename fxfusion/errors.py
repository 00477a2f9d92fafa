"""The one exception type the library raises for bad input; only the CLI turns it into a message and exit code.

Cautions that do not stop anything (a decision extrapolated far from the measured shapes) are
:class:`FxFusionWarning` s, issued with :func:`warnings.warn` where a bare value cannot carry them.
"""


class FxFusionError(Exception):
    """A user-facing error: its message is one line that says what is wrong and, where possible, what to do."""


class FxFusionWarning(UserWarning):
    """A caution about a result (e.g. ``Profile.should_fuse`` answered from a measurement far from the shape asked)."""
