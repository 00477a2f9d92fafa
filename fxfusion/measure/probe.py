"""An independent timing loop to check fxfusion's own timing against: back-to-back calls of a zero-argument callable
between two clock reads, batches sized to about ``PROBE_BATCH_S``, the median per call over ``PROBE_REPS`` batches
(what ``triton.testing.do_bench`` does without its L2 flush; Triton is not needed).

It shares nothing with :mod:`fxfusion.measure.timing` but the callable: no flush, no synchronisation between calls,
no shuffled order -- so where the pipelined regime and this probe agree, the agreement is not the clock agreeing with
itself.  ``benchmarks/bench_regimes.py`` probes every calibrated variant with it
(:mod:`fxfusion.reports.regimes_check`)."""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Protocol

PROBE_BATCH_S = 0.002  # one probe batch lasts about this long
PROBE_REPS = 25  # batches per probe; the median per call is kept
PROBE_WARMUP = 5
MAX_BATCH = 10_000


class BatchTimer(Protocol):
    def batch(self, fn: Callable[[], object], n: int) -> float:
        """Seconds per call of ``n`` calls of ``fn`` launched back to back."""


class CudaBatchTimer:
    """Two CUDA events around a batch of back-to-back calls, nothing else: no flush, no sync between calls."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def batch(self, fn, n: int) -> float:
        cuda = self.torch.cuda
        with cuda.device(self.device):
            cuda.synchronize(self.device)
            self.start.record()
            for _ in range(n):
                fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3 / n


class CpuBatchTimer:
    """perf_counter around a batch (a smoke run of the check on a CPU: ``--device cpu --hardware generic-cpu``)."""

    def batch(self, fn, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n


def probe(fn: Callable[[], object], timer: BatchTimer, reps: int = PROBE_REPS, batch_s: float = PROBE_BATCH_S,
          warmup: int = PROBE_WARMUP) -> float:
    """Median seconds per call of ``fn`` over ``reps`` back-to-back batches of about ``batch_s`` each."""
    for _ in range(warmup):
        fn()
    one = max(min(timer.batch(fn, 1) for _ in range(3)), 1e-9)
    n = int(min(MAX_BATCH, max(1, math.ceil(batch_s / one))))
    return statistics.median(timer.batch(fn, n) for _ in range(reps))
