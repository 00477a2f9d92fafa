"""An independent timing loop to check fxfusion's own timing against: back-to-back calls of a zero-argument callable
between two clock reads, batches sized to about ``PROBE_BATCH_S``, the median per call over ``PROBE_REPS`` batches
(what ``triton.testing.do_bench`` does without its L2 flush; Triton is not needed).

It shares nothing with :mod:`fxfusion.measure.timing` but the callable: no flush, no synchronisation between calls,
no shuffled order -- so where the pipelined regime and this probe agree, the agreement is not the clock agreeing with
itself.  ``benchmarks/bench_regimes.py`` probes every calibrated variant with it
(:mod:`fxfusion.reports.regimes_check`).

Where the two disagree, the probe says which *definition* of the variant would explain it by timing the variant
again with one thing changed (:func:`redefinitions`, :func:`retime`):

  weights prepared per call   the variant's load-time preparation (``ManualVariant.build``: BatchNorm folded into
                              the weights, sibling weights concatenated, weights made channels-last) inside every
                              call, as a loop that prepares them in its timed body would measure it;
  input converted once        a variant that converts its input to channels-last per call, given the input
                              already converted (what a channels-last model around it feeds it);
  output converted back       the same variant with its channels-last output converted back to contiguous NCHW per
                              call (what an NCHW model around a lone channels-last op pays);
  weights per call, output converted back   both of the last two at once (a plain loop that does everything inline);
  first call left out         each batch's first call made before the first event, untimed: the timed calls start
                              when it ends on the device, as the pipelined regime's do (its batch less its first
                              call); the probe as defined times every call of its batch, the first from an idle
                              device included.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Mapping, Protocol

PROBE_BATCH_S = 0.002  # one probe batch lasts about this long
PROBE_REPS = 25  # batches per probe; the median per call is kept
PROBE_WARMUP = 5
MAX_BATCH = 10_000
REDEFINED_REPS = 10  # batches per probe of a re-defined variant: only cells that disagree are re-timed, several ways

WEIGHTS_PER_CALL = "weights prepared per call"
INPUT_CONVERTED_ONCE = "input converted once"
OUTPUT_CONVERTED_BACK = "output converted back"
WEIGHTS_AND_OUTPUT = "weights per call, output converted back"
FIRST_CALL = "first call left out"
CAUSE_OF = {WEIGHTS_PER_CALL: "weight preparation", INPUT_CONVERTED_ONCE: "layout conversion",  # what differs when a
            OUTPUT_CONVERTED_BACK: "layout conversion", FIRST_CALL: "first call",  # cell agrees under that definition
            WEIGHTS_AND_OUTPUT: "weight preparation + layout conversion"}


class BatchTimer(Protocol):
    def batch(self, fn: Callable[[], object], n: int, first_untimed: bool = False) -> float:
        """Seconds per call of ``n`` calls of ``fn`` launched back to back (after one more, untimed, made first)."""


class CudaBatchTimer:
    """Two CUDA events around a batch of back-to-back calls, nothing else: no flush, no sync between calls."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def batch(self, fn, n: int, first_untimed: bool = False) -> float:
        cuda = self.torch.cuda
        with cuda.device(self.device):
            cuda.synchronize(self.device)
            if first_untimed:  # the start event then runs on the device when this call's work is done
                fn()
            self.start.record()
            for _ in range(n):
                fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3 / n


class CpuBatchTimer:
    """perf_counter around a batch (a smoke run of the check on a CPU: ``--device cpu``)."""

    def batch(self, fn, n: int, first_untimed: bool = False) -> float:
        if first_untimed:
            fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n


def probe(fn: Callable[[], object], timer: BatchTimer, reps: int = PROBE_REPS, batch_s: float = PROBE_BATCH_S,
          warmup: int = PROBE_WARMUP, first_untimed: bool = False) -> float:
    """Median seconds per call of ``fn`` over ``reps`` back-to-back batches of about ``batch_s`` each (with
    ``first_untimed``, each batch's first call made before the clock starts: :data:`FIRST_CALL`)."""
    for _ in range(warmup):
        fn()
    one = max(min(timer.batch(fn, 1) for _ in range(3)), 1e-9)
    n = int(min(MAX_BATCH, max(1, math.ceil(batch_s / one))))
    if first_untimed:  # only then: a caller's timer may take two arguments
        return statistics.median(timer.batch(fn, max(1, n - 1), first_untimed=True) for _ in range(reps))
    return statistics.median(timer.batch(fn, n) for _ in range(reps))


def first_call_counted(isolated_ms: float, pipelined_ms: float) -> float:
    """A steady per-call time with the first call of a :func:`probe` batch counted in, read off a profile without a
    device: the batch is sized from the fastest lone call (about ``isolated_ms``) to ``PROBE_BATCH_S``, and its first
    call is taken to cost ``isolated_ms`` -- an upper bound, as the calibration flushes L2 before that call and the
    probe does not."""
    n = max(1, math.ceil(PROBE_BATCH_S * 1e3 / max(isolated_ms, 1e-9)))
    return ((n - 1) * pipelined_ms + isolated_ms) / n


def changes_layout(out: object, x: object) -> bool:
    """Whether a variant hands back a channels-last 4-d output for an input that is not channels-last: it converts
    the layout inside its call, and the op after it sees another layout than eager's output."""
    import torch

    cl = torch.channels_last
    if not (isinstance(out, torch.Tensor) and isinstance(x, torch.Tensor) and out.dim() == 4 and x.dim() == 4):
        return False
    return out.is_contiguous(memory_format=cl) and not out.is_contiguous() and not x.is_contiguous(memory_format=cl)


def redefinitions(build: Callable[[Mapping], Callable[[], object]] | None, inputs: Mapping, thunk: Callable[[], object],
                  x_name: str = "x") -> dict[str, Callable[[], object]]:
    """The variant ``thunk`` (built once by ``build(inputs)``) re-defined one way at a time (module doc): weight
    preparation inside the call when it has a ``build``; the layout conversion moved out or the output converted back
    when it changes the layout of ``inputs[x_name]``.  The first call left out is :func:`probe`'s ``first_untimed``."""
    import torch

    out: dict[str, Callable[[], object]] = {}
    if build is not None:
        out[WEIGHTS_PER_CALL] = lambda: build(inputs)()
    x = inputs.get(x_name)
    if changes_layout(thunk(), x):
        out[OUTPUT_CONVERTED_BACK] = lambda: thunk().contiguous()
        if build is not None:
            out[INPUT_CONVERTED_ONCE] = build({**inputs, x_name: x.contiguous(memory_format=torch.channels_last)})
            out[WEIGHTS_AND_OUTPUT] = lambda: build(inputs)().contiguous()
    return out


def retime(variants: list[str], thunks: Mapping[str, Callable[[], object]], builds: Mapping[str, Callable],
           inputs: Mapping | None, timer: BatchTimer) -> dict[str, dict[str, dict]]:
    """``variants`` of one entry timed again under each other definition: variant -> definition ->
    ``{"ms", "eager_ms", "eager_again_ms"}`` (milliseconds of the variant so defined, of eager under the same
    definition -- its first calls left out too, else as probed -- and of eager probed again as defined, which says
    whether the machine kept its speed since the first probe), or ``{"error"}`` where it would not build or run."""
    def ms(fn, **how) -> float:
        return probe(fn, timer, reps=REDEFINED_REPS, **how) * 1e3

    eager_ms, eager_steady = ms(thunks["eager"]), ms(thunks["eager"], first_untimed=True)
    out: dict[str, dict[str, dict]] = {}
    for name in variants:
        got = out[name] = {}
        try:
            fns = redefinitions(builds.get(name), inputs, thunks[name]) if name != "eager" and inputs else {}
        except Exception as exc:  # a variant that cannot be built again is reported, not fatal
            fns, got["rebuild"] = {}, {"error": f"{type(exc).__name__}: {exc}"[:200]}
        for definition, fn in fns.items():
            try:
                got[definition] = {"ms": ms(fn), "eager_ms": eager_ms, "eager_again_ms": eager_ms}
            except Exception as exc:
                got[definition] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        got[FIRST_CALL] = {"ms": eager_steady if name == "eager" else ms(thunks[name], first_untimed=True),
                           "eager_ms": eager_steady, "eager_again_ms": eager_ms}
    return out
