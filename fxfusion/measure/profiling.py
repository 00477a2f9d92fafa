"""torch.profiler sessions that do not slow down what the process times afterwards.

A profiler session with CUDA activity attaches NVIDIA's CUPTI to the process.  Kineto detaches it when the session
ends only where the environment says ``TEARDOWN_CUPTI=1``; otherwise CUPTI stays subscribed for the life of the
process and every later kernel launch pays its callbacks (pytorch/pytorch#144455: 10-20% on a training loop).  fxfusion
profiles before it times (kernel counts in a calibration or a live analysis, coverage per aten op), and the timings
that follow are of host-bound forward passes, where launch cost is the time: with CUPTI left attached, eager and
whole-model compile read 8-30% slower than in a fresh process (``benchmarks/bench_baseline.py`` on the H200,
2026-11-30), which made every comparison with a user's own loop unfair.

So every profiler session of fxfusion goes through :func:`profiled`, which asks Kineto to detach CUPTI at its end
unless the environment already says otherwise.  torch itself sets ``TEARDOWN_CUPTI=0`` when it compiles with CUDA
graphs (``mode="reduce-overhead"``: re-attaching after a teardown crashed under CUDA graphs on CUDA 11 and 12);
:func:`cupti_left_attached` tells a caller that timings after such a session run with CUPTI attached, so it can say
so beside its numbers.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.profiler import ProfilerActivity, profile

TEARDOWN = "TEARDOWN_CUPTI"
_state = {"cuda_sessions": 0, "attached": False}


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while the profiler starts and stops: some torch builds log two lines there per
    profiler session from C++ (kineto), which no setting turns off and which would bury the CLI's own output."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def profiled(cuda: bool) -> Iterator[profile]:
    """A ``torch.profiler.profile`` of CPU activity, and of CUDA activity when ``cuda``; on CUDA, CUPTI is detached
    when the session ends (see the module doc) unless ``TEARDOWN_CUPTI`` is already set."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        os.environ.setdefault(TEARDOWN, "1")
    with quiet_native_stderr(), profile(activities=activities) as prof:
        yield prof
    if cuda:
        _state["cuda_sessions"] += 1
        _state["attached"] = _state["attached"] or os.environ.get(TEARDOWN) != "1"
        torch.cuda.synchronize()


def cupti_left_attached() -> bool:
    """True when a CUDA profiler session of this process ended without detaching CUPTI (``TEARDOWN_CUPTI`` was not 1
    at its end): kernel launches from then on are slower than in a fresh process."""
    return _state["attached"]


def cupti_warning() -> str | None:
    """One line for a report whose timings ran after CUPTI stayed attached; None when it did not."""
    if not cupti_left_attached():
        return None
    return (f"a CUDA profiler session of this process left CUPTI attached ({TEARDOWN}="
            f"{os.environ.get(TEARDOWN, 'unset')}): host-bound timings after it read slower than in a fresh process")
