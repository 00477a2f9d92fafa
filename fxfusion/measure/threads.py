"""CPU threads for torch, within bounds.

``torch.set_num_threads(100000)`` kills the process with a segfault (exit 139, no message) once an operator runs,
so a count beyond :data:`MAX_THREADS_PER_CORE` times the cores this process may use is refused with one line.
Up to that bound oversubscription is allowed: measuring it is a legitimate question.
"""

from __future__ import annotations

import os

from fxfusion.errors import FxFusionError

MAX_THREADS_PER_CORE = 4


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is a sane thread count for this machine; else one-line FxFusionError."""
    if threads is None:
        return None
    if threads < 1:
        raise FxFusionError(f"--threads must be at least 1, got {threads}")
    cores = usable_cores()
    limit = MAX_THREADS_PER_CORE * cores
    if threads > limit:
        raise FxFusionError(f"--threads {threads} is more than {limit} ({MAX_THREADS_PER_CORE} per core; this "
                            f"process may use {cores} core{'s' if cores != 1 else ''})")
    return threads


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count after :func:`check_threads`; None leaves it as it is."""
    if check_threads(threads) is not None:
        import torch

        torch.set_num_threads(threads)
