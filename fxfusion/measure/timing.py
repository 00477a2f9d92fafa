"""The measurement harness: it times zero-argument callables and returns raw samples; it knows nothing of patterns.

Method (one call of :func:`measure`):
  1. warm each callable up (``warmup`` calls; compile happens before, in the variant builder);
  2. pick ``inner``, the calls per sample, so one sample lasts about ``target_sample_s`` (1 on CUDA in the isolated
     regime, where every call is timed alone between CUDA events after the L2 cache is flushed; see :class:`CudaClock`
     for the pipelined regime, where calls overlap as a model's ops do);
  3. for ``rounds`` rounds, take one sample of every callable, in an order shuffled per round by a seeded RNG, so slow
     drift of the machine (clocks, other tenants) spreads over all variants instead of favouring one;
  4. stop early when ``budget_s`` of timing has been spent (at least ``MIN_ROUNDS`` rounds are always taken).

The clock is injectable: tests pass a fake clock with known per-callable costs and noise.

Two regimes (:func:`measure_regimes`, what a calibration takes): every sample is one batch of ``inner`` calls whose
first call is timed alone -- the *isolated* sample, one call after a synchronisation point (on CUDA also after the L2
flush), the latency one caller of the op sees -- and whose other ``inner - 1`` calls, launched back to back, give the
*pipelined* sample, per call, the regime of a forward pass.  Both come out of the same interleaved rounds, so the
second regime costs no extra rounds; when one call already fills a sample (``inner`` = 1) the regimes share it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import torch

from fxfusion.errors import FxFusionError
from fxfusion.measure.devices import as_device, is_cuda

Thunk = Callable[[], object]

MIN_ROUNDS = 5
ISOLATED, PIPELINED = "isolated", "pipelined"
REGIMES = (ISOLATED, PIPELINED)
L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current GPU's L2 (H100: 50 MB, H200: 60 MB)


class Clock(Protocol):
    device: str | torch.device  # where the timed work runs ("cpu", or the CudaClock's GPU)

    def sample(self, fn: Thunk, inner: int) -> float:
        """Seconds per call of ``fn`` over one sample of ``inner`` calls."""

    def now(self) -> float:
        """A monotonic wall clock in seconds, for budgets."""


class CpuClock:
    device = "cpu"

    def sample(self, fn: Thunk, inner: int) -> float:
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - start) / inner

    def sample_regimes(self, fn: Thunk, inner: int) -> tuple[float, float]:
        """(isolated, pipelined) seconds per call: the first call timed alone, then the other ``inner - 1`` calls
        back to back (the first again when ``inner`` is 1).  On the CPU every op is synchronous, so the first call's
        sync point is simply its end; what sets it apart is that it follows another variant's sample."""
        start = time.perf_counter()
        fn()
        first = time.perf_counter()
        if inner <= 1:
            return first - start, first - start
        for _ in range(inner - 1):
            fn()
        return first - start, (time.perf_counter() - first) / (inner - 1)

    def now(self) -> float:
        return time.perf_counter()


class SampleCount:
    """Counts every sample the library's clocks take while open (``with SampleCount() as c: ...; c.n``): their
    ``sample`` and ``sample_regimes`` methods wrapped, put back on exit.  A saved plan's apply must take none."""

    def __enter__(self) -> "SampleCount":
        self.n, self._saved = 0, []
        for cls in (CpuClock, CudaClock):
            for name in ("sample", "sample_regimes"):
                original = getattr(cls, name)
                self._saved.append((cls, name, original))
                setattr(cls, name, self._counting(original))
        return self

    def _counting(self, original):
        def sample(clock, *args, **kwargs):
            self.n += 1
            return original(clock, *args, **kwargs)
        return sample

    def __exit__(self, *exc) -> None:
        for cls, name, original in self._saved:
            setattr(cls, name, original)


def check_regime(regime: str) -> str:
    """``regime`` itself when it is one of :data:`REGIMES`; one clear line otherwise."""
    if regime not in REGIMES:
        raise FxFusionError(f"unknown timing regime {regime!r}; choose {' or '.join(REGIMES)}")
    return regime


class CudaClock:
    """CUDA-event timing in one of two regimes.

    ``isolated`` (the default): every call is timed alone, on an idle GPU with the L2 cache flushed, so a sample is
    the latency one caller of a small op sees: host launch work plus device work, nothing overlapped.

    ``pipelined``: a sample is ``inner`` calls launched back to back between two events, with no flush and no sync in
    between, as the ops of a model run: the host enqueues the next call while the GPU works on this one, so a call
    costs about max(host time, device time).  This is what a site contributes inside a model's forward pass, and
    what predictions of a whole model's saving are built from.
    """

    MODES = ("isolated", "pipelined")

    def __init__(self, mode: str = "isolated", device: str | torch.device = "cuda") -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown CUDA timing mode {mode!r} (expected one of {', '.join(self.MODES)})")
        self.mode = mode
        # Events, the flush buffer and every synchronisation live on the GPU the timed work runs on: events recorded
        # on another GPU's stream would time nothing but the launches.
        self.device = as_device(device)
        with torch.cuda.device(self.device):
            self._flush = (torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=self.device)
                           if mode == "isolated" else None)
            self._start = torch.cuda.Event(enable_timing=True)
            self._mid = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def sample(self, fn: Thunk, inner: int) -> float:
        with torch.cuda.device(self.device):
            return self._sample(fn, inner)

    def _sample(self, fn: Thunk, inner: int) -> float:
        if self.mode == "pipelined":
            torch.cuda.synchronize(self.device)
            # One call, not timed: when timing starts the host is a call ahead of the GPU, as in a loop that has run a
            # while.  Without it every sample pays a cold start (the first launch with the GPU idle), which made
            # end-to-end times of host-bound models 7-15% slower than a plain back-to-back loop (bench_baseline).
            fn()
            self._start.record()
            for _ in range(inner):
                fn()
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3 / inner
        total = 0.0
        for _ in range(inner):
            self._flush.zero_()
            # Wait for the flush: otherwise the host launches fn while the GPU is still flushing, and up to the
            # flush's duration of fn's launch overhead would vanish from the measurement.
            torch.cuda.synchronize(self.device)
            self._start.record()
            fn()
            self._end.record()
            self._end.synchronize()
            total += self._start.elapsed_time(self._end) / 1e3
        return total / inner

    def sample_regimes(self, fn: Thunk, inner: int) -> tuple[float, float]:
        """(isolated, pipelined) seconds per call from one batch: L2 flushed and the GPU idle, the first call between
        two events (its launch overlaps nothing: the isolated latency), then ``inner - 1`` calls launched back to back
        up to a third event (the host enqueues ahead of the GPU: the pipelined cost per call)."""
        with torch.cuda.device(self.device):
            if self._flush is None:
                self._flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=self.device)
            self._flush.zero_()
            torch.cuda.synchronize(self.device)
            self._start.record()
            fn()
            self._mid.record()
            for _ in range(inner - 1):
                fn()
            self._end.record()
            self._end.synchronize()
            first = self._start.elapsed_time(self._mid) / 1e3
            if inner <= 1:
                return first, first
            return first, self._mid.elapsed_time(self._end) / 1e3 / (inner - 1)

    def now(self) -> float:
        return time.perf_counter()


def clock_for(device: str | torch.device, mode: str = "isolated") -> Clock:
    """The clock for ``device``: :class:`CpuClock`, or a :class:`CudaClock` on that very GPU in ``mode`` (isolated:
    the pattern library's calls; pipelined: times compared with a forward pass)."""
    return CudaClock(mode, device) if is_cuda(device) else CpuClock()


@dataclass(frozen=True)
class TimingSpec:
    """What to spend on one measurement: the knobs, separate from the clock that does the timing."""

    rounds: int = 30
    warmup: int = 3
    target_sample_s: float = 0.002
    max_inner: int = 1000
    budget_s: float = 10.0
    seed: int = 0


QUICK_SPEC = TimingSpec(rounds=15, warmup=2, target_sample_s=0.002, budget_s=3.0)
FULL_SPEC = TimingSpec(rounds=40, warmup=5, target_sample_s=0.005, budget_s=20.0)


@dataclass
class Samples:
    seconds: dict[str, list[float]] = field(default_factory=dict)
    inner: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    budget_exhausted: bool = False


def _batch_size(clock: Clock, fn: Thunk, spec: TimingSpec) -> int:
    """Calls per batch so one batch lasts about ``spec.target_sample_s``."""
    one = max(min(clock.sample(fn, 1) for _ in range(3)), 1e-9)
    return int(min(spec.max_inner, max(1, math.ceil(spec.target_sample_s / one))))


def _calls_per_sample(clock: Clock, fn: Thunk, spec: TimingSpec) -> int:
    if is_cuda(clock.device) and getattr(clock, "mode", "isolated") == "isolated":
        return 1
    return _batch_size(clock, fn, spec)


def measure(thunks: Mapping[str, Thunk], clock: Clock, spec: TimingSpec = TimingSpec()) -> Samples:
    """Interleaved timing of several callables; returns raw per-call seconds for each."""
    out = Samples()
    for name, fn in thunks.items():
        for _ in range(spec.warmup):
            fn()
        out.inner[name] = _calls_per_sample(clock, fn, spec)
        out.seconds[name] = []
    rng = random.Random(spec.seed)
    order = list(thunks)
    start = clock.now()
    for r in range(spec.rounds):
        rng.shuffle(order)
        for name in order:
            out.seconds[name].append(clock.sample(thunks[name], out.inner[name]))
        out.rounds = r + 1
        if out.rounds >= MIN_ROUNDS and clock.now() - start > spec.budget_s:
            out.budget_exhausted = out.rounds < spec.rounds
            break
    return out


@dataclass
class RegimeSamples:
    """Raw samples of one :func:`measure_regimes` run: per regime, per callable, seconds per call (one per round);
    the reference kernel's seconds, one per round, when one was given."""

    by_regime: dict[str, Samples]
    reference: list[float] = field(default_factory=list)
    rounds: int = 0
    budget_exhausted: bool = False
    seconds: float = 0.0  # wall time the rounds took


def _sample_regimes(clock: Clock, fn: Thunk, inner: int) -> tuple[float, float]:
    both = getattr(clock, "sample_regimes", None)
    if both is not None:
        return both(fn, inner)
    # A clock that times one way only (a test's fake clock): one sample of one call, one of the batch.
    return clock.sample(fn, 1), clock.sample(fn, inner)


def measure_regimes(thunks: Mapping[str, Thunk], clock: Clock, spec: TimingSpec = TimingSpec(),
                    reference: Thunk | None = None) -> RegimeSamples:
    """:func:`measure` in both regimes at once (see the module doc): each round times ``reference`` once (a fixed
    kernel whose spread shows contention; warm: one untimed call first, so the caches the last round's callables
    filled do not read as contention), then one batch of every callable in a shuffled order."""
    regimes = {r: Samples() for r in REGIMES}
    batch = {}
    for name, fn in thunks.items():
        for _ in range(spec.warmup):
            fn()
        batch[name] = _batch_size(clock, fn, spec)
        # calls behind each sample: 1 isolated; the batch less its first call pipelined (1 when they share it)
        regimes[ISOLATED].inner[name], regimes[PIPELINED].inner[name] = 1, max(1, batch[name] - 1)
        for r in REGIMES:
            regimes[r].seconds[name] = []
    out = RegimeSamples(regimes)
    if reference is not None:
        for _ in range(spec.warmup):
            reference()
    rng = random.Random(spec.seed)
    order = list(thunks)
    start = clock.now()
    for r in range(spec.rounds):
        if reference is not None:
            reference()  # untimed: the timed call then finds its data in cache, whatever the last round evicted
            out.reference.append(clock.sample(reference, 1))
        rng.shuffle(order)
        for name in order:
            isolated, pipelined = _sample_regimes(clock, thunks[name], batch[name])
            regimes[ISOLATED].seconds[name].append(isolated)
            regimes[PIPELINED].seconds[name].append(pipelined)
        out.rounds = r + 1
        if out.rounds >= MIN_ROUNDS and clock.now() - start > spec.budget_s:
            out.budget_exhausted = out.rounds < spec.rounds
            break
    out.seconds = clock.now() - start
    for s in regimes.values():
        s.rounds, s.budget_exhausted = out.rounds, out.budget_exhausted
    return out


def measure_tight(thunks: Mapping[str, Thunk], clock: Clock, spec: TimingSpec, interval: Callable[[Samples], object],
                  too_wide: Callable[[object], bool], batches: int = 3) -> tuple[Samples, object, int]:
    """:func:`measure`, then again while ``too_wide(interval(samples))`` (at most ``batches`` batches in all); returns
    the batch whose interval (an object with ``ci_low`` / ``ci_high``) is narrowest, that interval, and the number of
    batches measured.

    For quantities derived from a difference of two timings (a saving, an overhead): a busy host makes one batch
    bimodal, its interval wide and its median land in the slow mode; another batch a moment later is usually quiet.
    Keeping the narrowest batch estimates the quiet machine, which is what a prediction is for; the batch count is
    reported with the result.
    """
    best = None
    for batch in range(1, batches + 1):
        samples = measure(thunks, clock, spec)
        ci = interval(samples)
        if best is None or ci.ci_high - ci.ci_low < best[1].ci_high - best[1].ci_low:
            best = (samples, ci)
        if not too_wide(ci):
            break
    return best[0], best[1], batch
