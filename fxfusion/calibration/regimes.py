"""One entry's variants timed in both regimes with noise handled, and the decision of each regime.

:func:`time_variants`, for the variants that passed the correctness gate:
  1. time them in both regimes at once (:func:`fxfusion.measure.timing.measure_regimes`), the reference kernel of
     the :class:`~fxfusion.measure.noise.NoiseGuard` once per round, the host read before and after;
  2. per regime, check every fused variant's verdict for stability (:func:`fxfusion.measure.noise.instability`);
     when a verdict read from the paired medians is unstable and no other signal saw contention, the samples
     themselves are the signal (``Contention.unstable_medians``): every verdict of the measurement is checked again,
     read from the floors with the wider zone, as under any contention;
  3. while a verdict is unstable, measure again (a fresh shuffle), at most ``guard.max_batches`` times in all and
     within ``guard.budget_s`` of extra timing; the last measurement is the one kept -- pooled with the earlier ones
     when they too were read from the floors (contended): the floor, each side's fastest tenth, of more rounds is
     more precise, and a burst that slowed one measurement does not move it, where a median of pooled rounds would
     mix a burst into a quiet measurement.  The stability checks run on the pooled rounds (their halves are then
     roughly the measurements: drift between them is seen).
:func:`decide` reads one regime's decision off the kept samples; :func:`settle` makes it ``neutral`` with a reason
starting ``noisy`` when that regime stayed unstable, or when two measurements pointed opposite ways (fuse in one, avoid
in another): a verdict that flips within one run is not one to act on.  Only the variants that can change the verdict
count: a ``fuse`` whose best variant is stable stays ``fuse`` whatever its siblings do (another variant's instability
could change which fusion is best, never whether one beats eager); a ``neutral`` or ``avoid`` needs every variant
stable, since any unstable one might be a fuse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from fxfusion.measure import noise
from fxfusion.measure.noise import FLOOR, Contention, NoiseGuard, entry_speedup, instability, statistic_for
from fxfusion.measure.stats import AVOID, FUSE, MIN_EFFECT, NEUTRAL
from fxfusion.measure.timing import REGIMES, Clock, RegimeSamples, Samples, Thunk, TimingSpec, measure_regimes
from fxfusion.profiles.profile import Decision, Entry, VariantResult


@dataclass
class Timed:
    """The kept measurement of one entry and what the noise checks found."""

    samples: RegimeSamples
    contention: Contention
    batches: int = 1
    seconds: float = 0.0
    unstable: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # regime -> variant -> reasons (last)
    disagreement: dict[str, str] = field(default_factory=dict)  # regime -> measurements that pointed opposite ways
    pooled: int = 1  # measurements whose rounds ``samples`` holds (contended ones are pooled: module doc)

    @property
    def statistic(self) -> str:
        """What the speedups are read from: the paired median, or the floors under contention."""
        return statistic_for(self.contention)

    def noise_record(self) -> dict:
        return {"batches": self.batches, "pooled": self.pooled, "seconds": round(self.seconds, 4),
                "statistic": self.statistic,
                "contention": self.contention.to_dict(),
                "reference_ms": [s * 1e3 for s in self.samples.reference],
                "unstable": {r: _lines(self.unstable.get(r, {})) for r in REGIMES},
                "disagreement": dict(self.disagreement)}


def _lines(unstable: dict[str, list[str]]) -> list[str]:
    return [f"{name}: {why}" for name, reasons in unstable.items() for why in reasons]


def _unstable(samples: RegimeSamples, contention: Contention) -> dict[str, dict[str, list[str]]]:
    out = {}
    for regime in REGIMES:
        seconds = samples.by_regime[regime].seconds
        out[regime] = {name: why for name in seconds if name != "eager"
                       if (why := instability(seconds["eager"], seconds[name], samples.reference or None, contention))}
    return out


def _check(samples: RegimeSamples, contention: Contention) -> dict[str, dict[str, list[str]]]:
    """Step 2 of the module doc: the unstable verdicts, regime -> variant -> reasons.  A median verdict unstable
    while no other signal saw contention sets ``contention.unstable_medians``, and every verdict is read again (from
    the floors)."""
    out = _unstable(samples, contention)
    if not contention.contended:
        first = next((f"{name} [{r}] {why[0]}" for r in REGIMES for name, why in out[r].items()), None)
        if first is not None:
            contention.unstable_medians = first
            out = _unstable(samples, contention)
    return out


def _pool(parts: list[RegimeSamples]) -> RegimeSamples:
    """The rounds of several measurements of the same callables as one (calls per sample: the last one's)."""
    last = parts[-1]
    by_regime = {r: Samples(seconds={n: [x for p in parts for x in p.by_regime[r].seconds[n]]
                                     for n in last.by_regime[r].seconds},
                            inner=dict(last.by_regime[r].inner), rounds=sum(p.by_regime[r].rounds for p in parts),
                            budget_exhausted=any(p.by_regime[r].budget_exhausted for p in parts)) for r in REGIMES}
    return RegimeSamples(by_regime, [x for p in parts for x in p.reference], sum(p.rounds for p in parts),
                         any(p.budget_exhausted for p in parts), sum(p.seconds for p in parts))


def _direction(samples: RegimeSamples, regime: str, statistic: str) -> str:
    """The entry's verdict in one measurement, before any noise rule: fuse / avoid / neutral, as :func:`decide`."""
    seconds = samples.by_regime[regime].seconds
    verdicts = [entry_speedup(seconds["eager"], s, statistic).verdict() for name, s in seconds.items()
                if name != "eager"]
    if FUSE in verdicts:
        return FUSE
    return AVOID if verdicts and all(v == AVOID for v in verdicts) else NEUTRAL


def time_variants(thunks: Mapping[str, Thunk], clock: Clock, spec: TimingSpec, guard: NoiseGuard) -> Timed:
    """Measure ``thunks`` (eager among them) in both regimes, again while a verdict is unstable (module doc)."""
    budget = spec.budget_s if guard.budget_s is None else guard.budget_s
    directions: dict[str, list[str]] = {r: [] for r in REGIMES}
    spent, extra, timed, contended = 0.0, 0.0, None, []
    for batch in range(1, max(1, guard.max_batches) + 1):
        before = guard.snapshot()
        samples = measure_regimes(thunks, clock, dataclasses.replace(spec, seed=spec.seed + batch - 1),
                                  guard.reference)
        contention = guard.assess(before, guard.snapshot(), samples.reference)
        spent += samples.seconds
        if batch > 1:
            extra += samples.seconds
        timed = Timed(samples, contention, batch, spent, _check(samples, contention))
        for r in REGIMES:  # each measurement's own direction: pooled ones would hide a flip between them
            directions[r].append(_direction(samples, r, timed.statistic))
        if timed.statistic == FLOOR:
            contended.append(samples)
            if len(contended) > 1:
                timed.samples, timed.pooled = _pool(contended), len(contended)
                timed.unstable = _check(timed.samples, contention)
        if not any(timed.unstable.values()) or extra >= budget:
            break
    for r in REGIMES:
        if FUSE in directions[r] and AVOID in directions[r]:
            timed.disagreement[r] = f"the {len(directions[r])} measurements said {', '.join(directions[r])}"
    return timed


NO_FUSED_VARIANT = "no fused variant runs here"


def decide(pattern: str, shape: dict, dtype: str, device: str, variants: list[VariantResult],
           regime: str = "isolated") -> Decision:
    """One regime's decision over the variants' timings in it (docs/decisions.md, "Decision of an entry")."""
    timing = {v.name: v.timing(regime) for v in variants}
    candidates = [v for v in variants if v.kind != "eager" and v.status == "ok" and timing[v.name]
                  and timing[v.name].speedup]

    def make(verdict, best, sp, reason):
        return Decision(pattern=pattern, shape=shape, dtype=dtype, device=str(device), verdict=verdict,
                        best_variant=best, speedup=sp, reason=reason, measured_shape=dict(shape), regime=regime)

    # Nothing timed against eager is no evidence either way: no interval can say fuse or avoid, so the verdict is
    # neutral with no speedup (Decision.undecided; tables show "undecided").  A fused variant that ran but gave wrong
    # results is different: it is a reason to avoid that fusion here.
    eager = next(v for v in variants if v.kind == "eager")
    if eager.status != "ok":  # no baseline: nothing can be compared, whatever the fused variants do
        return make(NEUTRAL, "eager", None, f"eager itself is {eager.status} ({eager.reason}): nothing was timed")
    if not candidates:
        refused = [f"{v.name}: {v.status}" for v in variants if v.kind != "eager"]
        if any(v.status == "incorrect" for v in variants):
            return make(AVOID, "eager", None, f"incorrect ({'; '.join(refused)})")
        return make(NEUTRAL, "eager", None, f"{NO_FUSED_VARIANT} ({'; '.join(refused)})")
    fuse = [v for v in candidates if timing[v.name].verdict == FUSE]
    if fuse:
        best = max(fuse, key=lambda v: timing[v.name].speedup.median)
        s = timing[best.name].speedup
        return make(FUSE, best.name, s, f"{best.name} is {s.median:.2f}x eager, 95% CI [{s.ci_low:.2f}, {s.ci_high:.2f}]")
    best = max(candidates, key=lambda v: timing[v.name].speedup.median)
    s = timing[best.name].speedup
    if all(timing[v.name].verdict == AVOID for v in candidates):
        return make(AVOID, "eager", s, f"every fused variant is slower; best {best.name} {s.median:.2f}x, "
                    f"95% CI [{s.ci_low:.2f}, {s.ci_high:.2f}]")
    return make(NEUTRAL, best.name, s, f"{best.name} {s.median:.2f}x, 95% CI [{s.ci_low:.2f}, {s.ci_high:.2f}] "
                f"does not exclude a difference under {MIN_EFFECT:.0%}")


def settle(decision: Decision, timed: Timed | None, regime: str) -> Decision:
    """``decision`` as it stands, or ``neutral`` with a reason starting ``noisy`` when ``regime`` stayed unstable."""
    if timed is None:
        return decision
    unstable = timed.unstable.get(regime, {})
    deciding = {n: w for n, w in unstable.items() if decision.verdict != FUSE or n == decision.best_variant}
    why = _lines(deciding)
    if regime in timed.disagreement:
        why.insert(0, timed.disagreement[regime])
    if not why:
        if unstable:  # siblings of a stable fuse variant: shown, not acted on (module doc)
            return dataclasses.replace(decision, reason=f"{decision.reason}; {', '.join(unstable)} unstable, not "
                                                        f"deciding: {decision.best_variant} is a stable fuse")
        return decision
    was = f"{decision.verdict} ({decision.reason})"
    return dataclasses.replace(decision, verdict=NEUTRAL, noisy=True,
                               reason=f"noisy after {timed.batches} measurement(s): {'; '.join(why)}; "
                                      f"the measurement alone said {was}")


def noise_summary(entries: list[Entry], guard: NoiseGuard) -> dict:
    """The profile's ``metadata.noise``: how noise was watched and which entries it touched."""
    return {"reference": guard.reference_text if guard.reference is not None else "none",
            "limits": {"load_per_cpu": noise.LOAD_LIMIT, "steal": noise.STEAL_LIMIT,
                       "reference_spread": noise.REFERENCE_SPREAD_LIMIT,
                       "reference_slowdown": noise.REFERENCE_SLOWDOWN_LIMIT,
                       "thread_stall": noise.THREAD_STALL_LIMIT,
                       "contended_min_effect": noise.CONTENDED_MIN_EFFECT},
            "max_batches": guard.max_batches,
            "contended_entries": sum(1 for e in entries if (e.noise.get("contention") or {}).get("reasons")),
            "remeasured_entries": sum(1 for e in entries if e.noise.get("batches", 1) > 1),
            "noisy": [f"{e.key()} [{r}]" for e in entries for r in e.regimes() if e.decision_for(r).noisy]}


def noise_warnings(entries: list[Entry]) -> list[str]:
    """One line per entry and regime whose verdict stayed unstable (and was made neutral)."""
    return [f"{e.key()} [{r}] is neutral: {e.decision_for(r).reason}" for e in entries for r in e.regimes()
            if e.decision_for(r).noisy]
