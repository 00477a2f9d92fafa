"""Statistics on raw timing samples: medians, bootstrap intervals of speedup, and verdicts derived from intervals.

A speedup of samples taken in the same interleaved rounds (a calibration's) is :func:`paired_speedup`: the median of
the per-round ratios ``baseline[r] / candidate[r]``, its 95% interval a percentile bootstrap of that median.  Of
unpaired samples it is :func:`speedup`, ``median(baseline) / median(candidate)``, both sample sets resampled
independently.  Either way ``BOOTSTRAP_ROUNDS`` resamples with a seeded generator: the same samples always give the
same interval.  A verdict is decided by the interval, never by the point estimate alone:

  fuse     the interval lies wholly above 1 + MIN_EFFECT
  avoid    the interval lies wholly below 1 - MIN_EFFECT
  neutral  otherwise (the data cannot tell the variants apart, or the difference is too small to act on)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

CONFIDENCE = 0.95
BOOTSTRAP_ROUNDS = 2000
# A difference under 2% is not worth acting on even when the interval excludes it: on shared machines clock and
# cache drift of that size is common, and the original suite's 0.98x-1.03x "findings" were exactly such noise.
MIN_EFFECT = 0.02
# Relative spread (IQR / median) above which a measurement is flagged as noisy.
NOISY_IQR = 0.10
# The floor of a sample set: its 10th percentile, the samples contention disturbed least (contention only adds time).
FLOOR_QUANTILE = 0.10



class Verdict(StrEnum):
    """A decision from an interval (module doc); ``undecided`` where nothing was timed against the baseline."""

    FUSE = "fuse"
    NEUTRAL = "neutral"
    AVOID = "avoid"
    UNDECIDED = "undecided"


FUSE, NEUTRAL, AVOID, UNDECIDED = Verdict.FUSE, Verdict.NEUTRAL, Verdict.AVOID, Verdict.UNDECIDED


@dataclass(frozen=True)
class Summary:
    median: float
    iqr: float
    minimum: float
    n: int
    floor: float = 0.0  # the FLOOR_QUANTILE quantile

    @property
    def noisy(self) -> bool:
        return self.median > 0 and self.iqr / self.median > NOISY_IQR


@dataclass(frozen=True)
class Speedup:
    """A median with its 95% interval: a speedup (ratio), or in :func:`difference` / :func:`median_interval` a
    difference or a median in the samples' unit.  The one interval type of the library."""

    median: float
    ci_low: float
    ci_high: float

    def text(self, unit: str = "x", digits: int = 2, sep: str = ", ") -> str:
        """``1.23x [1.10, 1.35]``: the one way a median and its interval are written for humans (``sep=","`` keeps
        a narrow table column from wrapping inside the interval)."""
        return f"{self.median:.{digits}f}{unit} [{self.ci_low:.{digits}f}{sep}{self.ci_high:.{digits}f}]"

    def verdict(self, min_effect: float = MIN_EFFECT) -> str:
        if self.ci_low > 1.0 + min_effect:
            return FUSE
        if self.ci_high < 1.0 - min_effect:
            return AVOID
        return NEUTRAL


def interval_text(s: "Speedup | dict | None", unit: str = "x", digits: int = 2, sep: str = ", ") -> str:
    """:meth:`Speedup.text` of an interval or of its dict form (as reports hold it); ``-`` when there is none."""
    if not s:
        return "-"
    if not isinstance(s, Speedup):
        s = Speedup(s["median"], s["ci_low"], s["ci_high"]) if isinstance(s, dict) else Speedup(s.median, s.ci_low,
                                                                                               s.ci_high)
    return s.text(unit, digits, sep)


def summarize(samples: list[float]) -> Summary:
    t = torch.tensor(samples, dtype=torch.float64)
    floor, q1, med, q3 = torch.quantile(t, torch.tensor([FLOOR_QUANTILE, 0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return Summary(median=med, iqr=q3 - q1, minimum=float(t.min()), n=len(samples), floor=floor)


def _bootstrap_medians(t: torch.Tensor, gen: torch.Generator, rounds: int, q: float = 0.5) -> torch.Tensor:
    idx = torch.randint(0, t.numel(), (rounds, t.numel()), generator=gen)
    return t[idx].quantile(q, dim=1)


def _percentiles(draws: torch.Tensor, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap draws (percentile method)."""
    alpha = (1.0 - confidence) / 2
    low, high = torch.quantile(draws, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return low, high


def speedup(baseline: list[float], candidate: list[float], seed: int = 0,
            rounds: int = BOOTSTRAP_ROUNDS, confidence: float = CONFIDENCE) -> Speedup:
    """Speedup of ``candidate`` over ``baseline`` (>1 means candidate is faster), with a bootstrap interval."""
    if not baseline or not candidate:
        raise ValueError("speedup needs samples on both sides")
    b = torch.tensor(baseline, dtype=torch.float64)
    c = torch.tensor(candidate, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    ratios = _bootstrap_medians(b, gen, rounds) / _bootstrap_medians(c, gen, rounds)
    low, high = _percentiles(ratios, confidence)
    return Speedup(median=float(b.quantile(0.5) / c.quantile(0.5)), ci_low=low, ci_high=high)


def difference(baseline: list[float], candidate: list[float], seed: int = 0,
               rounds: int = BOOTSTRAP_ROUNDS, confidence: float = CONFIDENCE) -> Speedup:
    """``median(baseline) - median(candidate)`` (>0 means candidate is faster), with a bootstrap interval; the
    fields of the returned :class:`Speedup` hold the difference, in the samples' unit."""
    if not baseline or not candidate:
        raise ValueError("difference needs samples on both sides")
    b = torch.tensor(baseline, dtype=torch.float64)
    c = torch.tensor(candidate, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    diffs = _bootstrap_medians(b, gen, rounds) - _bootstrap_medians(c, gen, rounds)
    low, high = _percentiles(diffs, confidence)
    return Speedup(median=float(b.quantile(0.5) - c.quantile(0.5)), ci_low=low, ci_high=high)


def median_interval(values: list[float], seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS,
                    confidence: float = CONFIDENCE) -> Speedup:
    """The median of ``values`` (e.g. per-round paired quantities) with a percentile-bootstrap interval, in the
    fields of a :class:`Speedup`."""
    if not values:
        raise ValueError("median_interval needs values")
    t = torch.tensor(values, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    meds = _bootstrap_medians(t, gen, rounds)
    low, high = _percentiles(meds, confidence)
    return Speedup(median=float(t.quantile(0.5)), ci_low=low, ci_high=high)


def paired_speedup(baseline: list[float], candidate: list[float], seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS,
                   confidence: float = CONFIDENCE) -> Speedup:
    """Speedup of ``candidate`` over ``baseline`` from samples paired by round: the median of the per-round ratios
    ``baseline[r] / candidate[r]``, with a percentile-bootstrap interval of that median.

    The samples of one round are taken within milliseconds of each other, in a shuffled order
    (:func:`fxfusion.measure.timing.measure_regimes`): contention that lasts longer than a round slows both sides of a
    ratio alike and cancels, where it would make each side's samples bimodal and :func:`speedup`'s interval wide.
    """
    n = min(len(baseline), len(candidate))
    ratios = [baseline[i] / candidate[i] for i in range(n) if candidate[i] > 0]
    if not ratios:
        raise ValueError("paired_speedup needs samples on both sides")
    return median_interval(ratios, seed=seed, rounds=rounds, confidence=confidence)


def floor_speedup(baseline: list[float], candidate: list[float], seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS,
                  confidence: float = CONFIDENCE, q: float = FLOOR_QUANTILE) -> Speedup:
    """Speedup from the floors: ``quantile(baseline, q) / quantile(candidate, q)`` (q = 10%), both sides resampled
    independently for the interval.  For a contended machine, where contention -- which only ever adds time -- leaves
    the fastest samples least disturbed while the medians follow the scheduler."""
    if not baseline or not candidate:
        raise ValueError("floor_speedup needs samples on both sides")
    b = torch.tensor(baseline, dtype=torch.float64)
    c = torch.tensor(candidate, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    ratios = _bootstrap_medians(b, gen, rounds, q) / _bootstrap_medians(c, gen, rounds, q)
    low, high = _percentiles(ratios, confidence)
    return Speedup(median=float(b.quantile(q) / c.quantile(q)), ci_low=low, ci_high=high)


def paired_fraction(minuend: list[float], subtrahend: list[float], reference: list[float]) -> Speedup:
    """Per round r, ``(minuend[r] - subtrahend[r]) / reference[r]``; their median with an interval.

    The samples of one round were taken within milliseconds of each other (:func:`fxfusion.measure.timing.measure`
    interleaves), so a host whose speed swings between rounds -- the lent H200's host switches between two speeds
    every few seconds -- scales all three alike and the fraction stays put, where a difference of medians would not.
    """
    n = min(len(minuend), len(subtrahend), len(reference))
    return median_interval([(minuend[i] - subtrahend[i]) / reference[i] for i in range(n) if reference[i] > 0])
