"""Noise made visible: contention on the machine, and verdicts a run cannot reproduce within itself.

Contention during one measurement (:class:`Contention`), from three signals, each with its limit:
  * load: the 1-minute load average (``os.getloadavg``) less the threads this process keeps busy, per CPU;
  * steal: the share of CPU time the hypervisor gave to other guests (``/proc/stat``, where readable);
  * a reference kernel (:func:`reference_kernel`, a fixed matmul) timed once per round between the variants: its
    spread (IQR / median) within the measurement, and its slowdown against the quietest measurement this process
    has taken (the lowest median);
    on a CPU timed with several threads, also its median over its fastest time on one thread (a thread pool whose
    threads are descheduled makes every parallel region wait: several threads become slower than one), and its floor
    (fastest tenth) over that time: above the same limit, *no* sample was undisturbed (``floors_disturbed``) --
    every parallel region waited for a scheduler tick, a sample's time counts its parallel regions, not its work, and
    not even the floors measure the work (a 2-core VM with two busy loops: the 0.3 ms reference took 8 ms in every
    round, eager conv2d_bn_relu 48 ms and its fused variant 32 ms, 6 and 4 ticks: "1.50x", where idle said 1.04x);
  * the samples themselves (``unstable_medians``, set by :func:`fxfusion.calibration.regimes.time_variants`): when
    none of the signals above fired and a verdict read from the paired medians is still unstable (below), the
    measurement counts as contended.  Stalls shorter than a round (a descheduled thread in a 0.1 ms sample) hit one
    side of a pair and not the other, so pairing cannot cancel them: the per-round ratios turn bimodal (one side
    stalled: 0.55x or 5x, where unstalled pairs say 1.7x), the median lands in whichever mode holds more
    rounds and the halves disagree.  Such a measurement is read again like any contended one: from the floors, with
    the wider zone of step 6 -- the same rule for every verdict of the measurement, not a second try per verdict.

Stability of one verdict (:func:`instability`), from the raw samples alone:
  1. split the rounds in two: first and second half (drift), and -- with a reference kernel -- quiet and loud rounds
     (those whose reference time is at most / above its median: contention);
  2. the speedup (median of per-round ratios) of each half must not lie on opposite sides of the neutral zone, and a
     ``fuse`` (``avoid``) verdict needs both halves faster (slower) than eager;
  3. contention only ever adds time, so the fastest tenth of each side's samples is the least disturbed: a ``fuse``
     (``avoid``) verdict needs their ratio on the same side of 1 (on a machine whose threads are descheduled, one
     variant can stall in most samples and the medians say 1000x where the floors say 1.2x);
  4. a ``neutral`` verdict whose interval spans more than a factor INCONCLUSIVE_SPAN is no measurement at all
     (it cannot tell a 30% gain from a 30% loss): it is measured again like an unstable one;
  5. with ``floors_disturbed`` every verdict of the measurement is unstable, whatever it says;
  6. under contention the neutral zone widens from MIN_EFFECT to CONTENDED_MIN_EFFECT: contention slows ops unequally
     (an op with more parallel regions waits on more descheduled threads), a bias no split of the rounds can see;
     and step 4 is held to that zone: a ``neutral`` whose interval spans more than CONTENDED_INCONCLUSIVE_SPAN cannot
     tell a gain of the zone's size from a loss of it, and is measured again (the floors of 30 samples are imprecise:
     :func:`fxfusion.calibration.regimes.time_variants` pools the rounds of contended measurements).
A verdict that fails is unstable: the caller measures again (:class:`NoiseGuard` says how often), and one still
unstable becomes ``neutral`` with a reason that starts with ``noisy`` -- never a flip between ``fuse`` and ``avoid``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from fxfusion.measure.devices import as_device, is_cuda
from fxfusion.measure.stats import (AVOID, FUSE, MIN_EFFECT, NEUTRAL, Speedup, floor_speedup, paired_speedup,
                                    summarize)

Thunk = Callable[[], object]

# Others' runnable threads per CPU above which the timed threads must wait for a core now and then.
LOAD_LIMIT = 0.5
# Stolen CPU time above 5%: the hypervisor is running other guests on this machine's cores.
STEAL_LIMIT = 0.05
# The reference kernel does the same work every round, but one call of it is short (about 0.3 ms on a 2-core VM): on
# that VM with nothing else running its spread (IQR / median) was 3-24% (bench_noise, 2026-11-30); above 25% it is
# the machine.
REFERENCE_SPREAD_LIMIT = 0.25
# A measurement's median reference time over the lowest median of any measurement this process has taken: the same
# VM, idle, drifted up to about 1.3x between entries with the reference timed warm (it runs once untimed before each
# timed call; timed cold after a large GEMM it read up to 1.8x, bench_noise run 16); 1.5x is contention.
REFERENCE_SLOWDOWN_LIMIT = 1.5
# Reference time on the timing's threads over its time on one thread: more threads must not be 50% slower than one.
THREAD_STALL_LIMIT = 1.5
# Under contention a verdict needs a 10% effect: smaller ones are within what unequal slowdowns can fake.
CONTENDED_MIN_EFFECT = 0.10
# At most this many measurements of one entry (the first and two more) before an unstable verdict becomes noisy.
MAX_BATCHES = 3
# The reference kernel: a 256 x 256 float32 matmul (33.5 MFLOP): tens of microseconds on a CPU core.
REFERENCE_N = 256
# On a GPU that matmul is one launch of about 35 us, host jitter more than device work: on an idle H200 (2026-12-01,
# entries 1-209 of the whole library) its spread was 10-48% (10th-90th percentile) and its slowdown up to 1.86x, so
# 78 of 209 entries counted as contended at a load of 0.01-0.30 per CPU.  There the reference is device work instead:
# a 2048 x 2048 float32 matmul (17 GFLOP, about 0.35 ms on an H200 without TF32), which a busy or throttled card
# slows and a host's launch jitter does not.  (Host contention has its own signals: load and steal.)
REFERENCE_N_CUDA = 2048


def reference_size(device: str | torch.device) -> int:
    return REFERENCE_N_CUDA if is_cuda(device) else REFERENCE_N


def reference_text(device: str | torch.device) -> str:
    n = reference_size(device)
    return f"torch.mm of two {n}x{n} float32 matrices, timed once per round"


REFERENCE_TEXT = reference_text("cpu")
# Halves of fewer rounds than this are not compared: their medians say too little.
MIN_HALF = 3
# An interval wider than a factor 2 (ci_high / ci_low) tells neither a 30% gain nor a 30% loss apart.
INCONCLUSIVE_SPAN = 2.0
# Under contention the same rule at the widened zone: wider than 1.1 / 0.9, an interval cannot tell a 10% gain (the
# least a contended fuse needs) from a 10% loss.
CONTENDED_INCONCLUSIVE_SPAN = (1 + CONTENDED_MIN_EFFECT) / (1 - CONTENDED_MIN_EFFECT)


@dataclass(frozen=True)
class HostSnapshot:
    """What the host says at one moment: the 1-minute load average and the CPU time counters (None: unreadable)."""

    load1: float | None
    steal_ticks: int | None = None
    total_ticks: int | None = None


def read_cpu_ticks(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from ``/proc/stat``; None where it cannot be read (not Linux, no steal)."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    return ticks[7], sum(ticks[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)


def host_snapshot() -> HostSnapshot:
    try:
        load1 = os.getloadavg()[0]
    except (OSError, AttributeError):
        load1 = None
    ticks = read_cpu_ticks()
    return HostSnapshot(load1, *(ticks or (None, None)))


def reference_kernel(device: str | torch.device, n: int | None = None) -> Thunk:
    """A fixed amount of work on ``device``: the same matmul every call, seeded inputs (``n`` x ``n``; by default
    the device's :func:`reference_size`)."""
    gen, n = torch.Generator().manual_seed(0), n or reference_size(device)
    a = torch.randn(n, n, generator=gen).to(as_device(device))
    b = torch.randn(n, n, generator=gen).to(as_device(device))
    return lambda: torch.mm(a, b)


@dataclass
class Contention:
    """Contention during one measurement; None where a signal was not available."""

    load_per_cpu: float | None = None
    steal: float | None = None
    reference_spread: float | None = None
    reference_slowdown: float | None = None
    thread_stall: float | None = None
    floor_stall: float | None = None  # the reference kernel's floor on the thread pool over its one-thread time
    unstable_medians: str | None = None  # why a verdict read from the paired medians was unstable (module doc)

    def reasons(self) -> list[str]:
        out = []
        if self.load_per_cpu is not None and self.load_per_cpu > LOAD_LIMIT:
            out.append(f"load {self.load_per_cpu:.2f} other runnable threads per CPU (limit {LOAD_LIMIT})")
        if self.steal is not None and self.steal > STEAL_LIMIT:
            out.append(f"{self.steal:.0%} of CPU time stolen by the hypervisor (limit {STEAL_LIMIT:.0%})")
        if self.reference_spread is not None and self.reference_spread > REFERENCE_SPREAD_LIMIT:
            out.append(f"reference kernel spread {self.reference_spread:.0%} (limit {REFERENCE_SPREAD_LIMIT:.0%})")
        if self.reference_slowdown is not None and self.reference_slowdown > REFERENCE_SLOWDOWN_LIMIT:
            out.append(f"reference kernel {self.reference_slowdown:.2f}x its quietest median "
                       f"(limit {REFERENCE_SLOWDOWN_LIMIT}x)")
        if self.thread_stall is not None and self.thread_stall > THREAD_STALL_LIMIT:
            out.append(f"reference kernel {self.thread_stall:.1f}x slower on the thread pool than on one thread: "
                       f"parallel regions wait for descheduled threads (limit {THREAD_STALL_LIMIT}x)")
        if self.floors_disturbed:
            out.append(f"even the reference kernel's fastest tenth is {self.floor_stall:.1f}x its one-thread time: "
                       f"no sample was undisturbed (limit {THREAD_STALL_LIMIT}x)")
        if self.unstable_medians:
            out.append(f"the samples themselves: {self.unstable_medians}")
        return out

    @property
    def contended(self) -> bool:
        return bool(self.reasons())

    @property
    def floors_disturbed(self) -> bool:
        """Every sample waited for descheduled threads: no statistic of the samples measures the work (module doc)."""
        return self.floor_stall is not None and self.floor_stall > THREAD_STALL_LIMIT

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": self.reasons()}


@dataclass
class NoiseGuard:
    """How a measurement watches for noise and how often it may measure again.

    The default guard reads nothing from the host and times no reference kernel (deterministic under a fake clock):
    only the stability of the samples themselves is checked.  :meth:`for_device` watches the real machine.
    """

    reference: Thunk | None = None
    probe: Callable[[], HostSnapshot] | None = None
    reference_text: str = REFERENCE_TEXT  # what the reference kernel is (the profile's metadata.noise says it)
    own_threads: int = 1  # threads this process keeps busy while timing (they are in the load average too)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_batches: int = MAX_BATCHES
    budget_s: float | None = None  # time for measuring again, per entry; None: the timing spec's budget
    quiet_reference_s: float | None = None  # the lowest median reference time of a measurement so far
    single_thread: bool = False  # also time the reference on one thread (a CPU timed with several threads)

    @classmethod
    def for_device(cls, device: str | torch.device, **kw) -> "NoiseGuard":
        own = 1 if is_cuda(device) else torch.get_num_threads()
        return cls(reference=reference_kernel(device), probe=host_snapshot, own_threads=own,
                   reference_text=reference_text(device),
                   single_thread=not is_cuda(device) and own > 1, **kw)

    def _one_thread_s(self) -> float:
        """The reference kernel's fastest of three calls on one thread (the thread count is restored)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                self.reference()
                best = min(best, time.perf_counter() - start)
            return best
        finally:
            torch.set_num_threads(threads)

    def snapshot(self) -> HostSnapshot | None:
        return self.probe() if self.probe is not None else None

    def assess(self, before: HostSnapshot | None, after: HostSnapshot | None, reference_s: list[float]) -> Contention:
        """Contention over one measurement, from host snapshots taken before and after it and its reference times."""
        c = Contention()
        if after is not None and after.load1 is not None:
            c.load_per_cpu = max(0.0, after.load1 - self.own_threads) / self.cpus
        if before is not None and after is not None and None not in (before.steal_ticks, after.steal_ticks):
            total = after.total_ticks - before.total_ticks
            if total > 0:
                c.steal = (after.steal_ticks - before.steal_ticks) / total
        if reference_s:
            s = summarize(reference_s)
            c.reference_spread = s.iqr / s.median if s.median > 0 else None
            self.quiet_reference_s = min(s.median, self.quiet_reference_s or s.median)
            c.reference_slowdown = s.median / self.quiet_reference_s if self.quiet_reference_s > 0 else None
            if self.single_thread and self.reference is not None:
                one = max(self._one_thread_s(), 1e-9)
                c.thread_stall, c.floor_stall = s.median / one, s.floor / one
        return c


def _side(x: float, min_effect: float) -> int:
    return 1 if x > 1 + min_effect else -1 if x < 1 - min_effect else 0


def _ratio(eager: list[float], cand: list[float], rounds: list[int], statistic: str = "median") -> float:
    """The speedup over some rounds: the median of their per-round ratios (as :func:`paired_speedup`), or the ratio of
    their floors (as :func:`floor_speedup`)."""
    if statistic == "floor":
        return _floor([eager[i] for i in rounds]) / _floor([cand[i] for i in rounds])
    return summarize([eager[i] / cand[i] for i in rounds if cand[i] > 0]).median


def _floor(samples: list[float]) -> float:
    return summarize(samples).floor


def _splits(n: int, reference: list[float] | None) -> list[tuple[str, list[int], list[int]]]:
    out = []
    if n >= 2 * MIN_HALF:
        out.append(("first half", list(range(n // 2)), list(range(n // 2, n))))
    if reference and len(reference) == n and n >= 2 * MIN_HALF:
        cut = summarize(reference).median
        quiet = [i for i in range(n) if reference[i] <= cut]
        loud = [i for i in range(n) if reference[i] > cut]
        if len(quiet) >= MIN_HALF and len(loud) >= MIN_HALF:
            out.append(("quiet rounds", quiet, loud))
    return out


MEDIAN, FLOOR = "median", "floor"


def statistic_for(contention: Contention | None) -> str:
    """Which statistic a verdict is read from: the paired median, or -- when the measurement saw contention -- the
    floors (:func:`fxfusion.measure.stats.floor_speedup`), which contention disturbs least."""
    return FLOOR if contention is not None and contention.contended else MEDIAN


def entry_speedup(eager: list[float], cand: list[float], statistic: str = MEDIAN, seed: int = 0) -> Speedup:
    """The speedup of ``cand`` over ``eager`` (samples of the same rounds) by ``statistic``."""
    n = min(len(eager), len(cand))
    return (floor_speedup if statistic == FLOOR else paired_speedup)(eager[:n], cand[:n], seed=seed)


def instability(eager: list[float], cand: list[float], reference: list[float] | None = None,
                contention: Contention | None = None, min_effect: float = MIN_EFFECT) -> list[str]:
    """Why the verdict of ``cand`` against ``eager`` (per-round samples) is not stable; empty when it is."""
    n = min(len(eager), len(cand))
    if n == 0:
        return []
    statistic = statistic_for(contention)
    s = entry_speedup(eager, cand, statistic)
    verdict = s.verdict(min_effect)
    reasons = []
    if contention is not None and contention.floors_disturbed:
        reasons.append(f"{verdict} at {s.text()}, but every sample waited for descheduled threads (the reference "
                       f"kernel's fastest tenth {contention.floor_stall:.1f}x its one-thread time): no statistic of "
                       f"these samples measures the work")
    for label, a, b in _splits(n, reference):
        ra, rb = _ratio(eager, cand, a, statistic), _ratio(eager, cand, b, statistic)
        other = "second half" if label == "first half" else "loud rounds"
        if _side(ra, min_effect) * _side(rb, min_effect) < 0 \
                or (verdict == FUSE and min(ra, rb) < 1.0) or (verdict == AVOID and max(ra, rb) > 1.0):
            reasons.append(f"{verdict} at {s.median:.2f}x, but the {label} say {ra:.2f}x and the {other} "
                           f"{rb:.2f}x")
    span = INCONCLUSIVE_SPAN if statistic == MEDIAN else CONTENDED_INCONCLUSIVE_SPAN
    if verdict == NEUTRAL and s.ci_low > 0 and s.ci_high / s.ci_low > span:
        reasons.append(f"inconclusive: {s.text()}{' (floors)' if statistic == FLOOR else ''} spans more than a "
                       f"factor {span:.3g}")
    if statistic == MEDIAN and n >= 2 * MIN_HALF and verdict != NEUTRAL:
        floors = _floor(eager[:n]) / _floor(cand[:n])
        if (verdict == FUSE and floors < 1.0) or (verdict == AVOID and floors > 1.0):
            reasons.append(f"{verdict} at {s.median:.2f}x, but the fastest tenth of each side's samples say "
                           f"{floors:.2f}x: contention, which only adds time, made the difference")
    if statistic == FLOOR and verdict != NEUTRAL and s.verdict(CONTENDED_MIN_EFFECT) == NEUTRAL:
        reasons.append(f"{verdict} at {s.text()} (floors) is inside the \u00b1{CONTENDED_MIN_EFFECT:.0%} zone a "
                       f"verdict needs under contention ({'; '.join(contention.reasons())})")
    return reasons
