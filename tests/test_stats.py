"""Statistics and verdicts, driven by a seeded fake clock so every number is known in advance."""

from __future__ import annotations

import importlib
import random

import pytest
import torch

from fxfusion.measure.stats import AVOID, FUSE, MIN_EFFECT, NEUTRAL, Speedup, speedup, summarize
from fxfusion.measure.timing import MIN_ROUNDS, TimingSpec, measure


class FakeClock:
    """Each callable costs a fixed time times log-normal noise, from a seeded RNG; records the call order."""

    device = "fake"

    def __init__(self, costs: dict, noise: float = 0.02, seed: int = 0, tick: float = 0.0):
        self.costs, self.noise, self.rng, self.t, self.tick = costs, noise, random.Random(seed), 0.0, tick
        self.order: list = []

    def sample(self, fn, inner):
        self.order.append(fn)
        fn()
        self.t += self.tick
        return self.costs[fn] * self.rng.lognormvariate(0.0, self.noise)

    def now(self):
        return self.t


def _samples(cost, n=40, noise=0.02, seed=0):
    rng = random.Random(seed)
    return [cost * rng.lognormvariate(0.0, noise) for _ in range(n)]


def test_clearly_faster_candidate_is_fuse_with_interval_around_truth():
    s = speedup(_samples(2.0, seed=1), _samples(1.0, seed=2))
    assert s.ci_low < 2.0 < s.ci_high
    assert s.ci_low > 1.9 and s.ci_high < 2.1
    assert s.verdict() == FUSE


def test_same_distribution_is_neutral():
    assert speedup(_samples(1.0, seed=1), _samples(1.0, seed=2)).verdict() == NEUTRAL


def test_real_but_tiny_difference_is_neutral():
    # a 1% difference measured very precisely: the interval excludes 1.0 but not the 2% neutral zone
    s = speedup(_samples(1.01, n=200, noise=0.001, seed=1), _samples(1.0, n=200, noise=0.001, seed=2))
    assert s.ci_low > 1.0
    assert s.ci_high < 1 + MIN_EFFECT
    assert s.verdict() == NEUTRAL


def test_large_difference_drowned_in_noise_is_neutral():
    s = speedup(_samples(1.3, n=6, noise=0.6, seed=3), _samples(1.0, n=6, noise=0.6, seed=4))
    assert s.ci_low < 1.0 < s.ci_high
    assert s.verdict() == NEUTRAL


def test_slower_candidate_is_avoid():
    assert speedup(_samples(1.0, seed=1), _samples(1.5, seed=2)).verdict() == AVOID


def test_bootstrap_is_deterministic_for_a_seed():
    a, b = _samples(2.0, seed=1), _samples(1.0, seed=2)
    assert speedup(a, b, seed=7) == speedup(a, b, seed=7)


def test_verdict_thresholds_are_exclusive():
    assert Speedup(1.5, 1 + MIN_EFFECT, 2.0).verdict() == NEUTRAL
    assert Speedup(1.5, 1 + MIN_EFFECT + 1e-9, 2.0).verdict() == FUSE


def test_summary_median_and_iqr():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0 and s.iqr == 2.0 and s.minimum == 1.0 and s.n == 5
    assert s.noisy


def test_measure_interleaves_in_shuffled_order_and_keeps_every_sample():
    a, b, c = (lambda: None), (lambda: None), (lambda: None)
    clock = FakeClock({a: 1.0, b: 2.0, c: 3.0})
    out = measure({"a": a, "b": b, "c": c}, clock, TimingSpec(rounds=10, warmup=0, budget_s=1e9))
    assert out.rounds == 10 and all(len(v) == 10 for v in out.seconds.values())
    sample_calls = clock.order[9:]  # the first 9 calls pick calls-per-sample (3 single calls each)
    rounds = [tuple(sample_calls[i:i + 3]) for i in range(0, 30, 3)]
    assert all(set(r) == {a, b, c} for r in rounds)
    assert len(set(rounds)) > 1, "variants must not always run in the same order"
    assert summarize(out.seconds["b"]).median == pytest.approx(2.0, rel=0.05)


def test_measure_stops_at_budget_but_keeps_min_rounds():
    f = lambda: None  # noqa: E731
    out = measure({"f": f}, FakeClock({f: 1.0}, tick=10.0), TimingSpec(rounds=50, warmup=0, budget_s=15.0))
    assert out.rounds == MIN_ROUNDS and out.budget_exhausted


def test_speedup_needs_samples():
    with pytest.raises(ValueError):
        speedup([], [1.0])


def _measure_with_fake_variants(monkeypatch, variants, shape, rounds):
    """measure_entry with build_variants replaced: ``variants`` maps name -> (kind, output function, fake cost)."""
    cal = importlib.import_module("fxfusion.calibration.calibrate")
    from fxfusion.measure.hardware import resolve
    from fxfusion.fusions.registry import REGISTRY
    from fxfusion.calibration.variants import Built

    costs = {}

    def fake_build(pattern, shape, dtype, device, inputs, compile_modes=()):
        built = []
        for name, (kind, output, cost) in variants.items():
            thunk = lambda output=output: output(pattern, inputs)  # noqa: E731
            costs[thunk] = cost
            built.append(Built(name, kind, thunk))
        return built

    monkeypatch.setattr(cal, "build_variants", fake_build)
    return cal.measure_entry(REGISTRY["linear_bias"], shape, "float32", "cpu", resolve("generic-cpu"),
                             TimingSpec(rounds=rounds, warmup=1, budget_s=1e9), FakeClock(costs))


def _eager(pattern, inputs):
    return pattern.eager(**inputs)


def test_fake_clock_drives_real_decision_logic(monkeypatch):
    """measure_entry end to end with a fake clock: the fastest variant is incorrect and must never be chosen."""
    entry = _measure_with_fake_variants(monkeypatch, {
        "eager": ("eager", _eager, 2.0),
        "addmm": ("manual", lambda p, i: torch.addmm(i["bias"], i["x"], i["weight"].t()), 1.0),
        "wrong": ("manual", lambda p, i: p.eager(**i) * 1.01, 0.5),  # 1% off: far outside float32 tolerance
    }, {"M": 8, "K": 16, "N": 8}, rounds=20)
    wrong = entry.variant("wrong")
    assert wrong.status == "incorrect" and "relative error" in wrong.reason and wrong.samples_ms == []
    assert entry.decision.verdict == FUSE and entry.decision.best_variant == "addmm"
    assert entry.decision.speedup.ci_low < 2.0 < entry.decision.speedup.ci_high


def test_only_incorrect_fused_variants_mean_avoid(monkeypatch):
    entry = _measure_with_fake_variants(monkeypatch, {
        "eager": ("eager", _eager, 2.0),
        "wrong": ("manual", lambda p, i: -p.eager(**i), 0.1),
    }, {"M": 4, "K": 4, "N": 4}, rounds=8)
    assert entry.decision.verdict == AVOID and entry.decision.best_variant == "eager"
    assert entry.decision.reason.startswith("incorrect")


def test_an_incorrect_eager_baseline_is_said_plainly(monkeypatch):
    entry = _measure_with_fake_variants(monkeypatch, {
        "eager": ("eager", lambda p, i: p.eager(**i) + 1.0, 1.0),
        "addmm": ("manual", lambda p, i: torch.addmm(i["bias"], i["x"], i["weight"].t()), 0.5),
    }, {"M": 4, "K": 4, "N": 4}, rounds=6)
    from fxfusion.profiles.profile import entry_to_dict
    from fxfusion.profiles.schema import entry_errors

    assert entry.variant("eager").status == "incorrect"
    addmm = entry.variant("addmm")
    assert addmm.status == "failed" and addmm.reason.startswith("not timed") and addmm.samples_ms == []
    # nothing was timed, so no interval says avoid: neutral with no speedup, shown as undecided
    assert entry.decision.verdict == NEUTRAL and entry.decision.undecided and entry.decision.speedup is None
    assert entry.decision.reason.startswith("eager itself is incorrect")
    assert entry_errors(entry_to_dict(entry)) == []


class BusyThenQuietClock(FakeClock):
    """Like FakeClock, but the first ``busy`` samples are bimodal: half of them 3x slow (a busy host)."""

    def __init__(self, costs, busy: int, **kw):
        super().__init__(costs, **kw)
        self.busy, self.n = busy, 0

    def sample(self, fn, inner):
        self.n += 1
        t = super().sample(fn, inner)
        return t * 3.0 if self.n <= self.busy and self.rng.random() < 0.5 else t


def test_measure_tight_measures_again_while_the_interval_is_wide_and_keeps_the_narrowest():
    from fxfusion.measure.stats import difference
    from fxfusion.measure.timing import measure_tight

    def base():
        return None

    def cand():
        return None

    spec = TimingSpec(rounds=20, warmup=0, target_sample_s=0.0, budget_s=100.0)

    def interval(s):
        return difference(s.seconds["base"], s.seconds["cand"])

    def too_wide(d):
        return d.ci_high - d.ci_low > 0.5 * abs(d.median)

    clock = BusyThenQuietClock({base: 1.0, cand: 0.8}, busy=40)  # the first batch (2 x 20 samples) is busy
    samples, d, batches = measure_tight({"base": base, "cand": cand}, clock, spec, interval, too_wide)
    assert batches == 2 and not too_wide(d)
    assert d.median == pytest.approx(0.2, rel=0.1)  # the quiet machine's saving
    assert len(samples.seconds["base"]) == 20  # one batch kept, not a mix
    # a quiet machine needs one batch; a machine busy throughout stops after `batches`
    assert measure_tight({"base": base, "cand": cand}, FakeClock({base: 1.0, cand: 0.8}), spec, interval,
                         too_wide)[2] == 1
    assert measure_tight({"base": base, "cand": cand}, BusyThenQuietClock({base: 1.0, cand: 0.8}, busy=10**6),
                         spec, interval, too_wide, batches=3)[2] == 3


def test_no_fused_variant_that_runs_is_undecided_not_avoid(monkeypatch):
    """Nothing timed against eager is no evidence: neutral with no speedup (shown as undecided), never avoid,
    which the docs define as an interval below 0.98x."""
    def unsupported(pattern, inputs):
        raise RuntimeError("no kernel for this dtype here")

    entry = _measure_with_fake_variants(monkeypatch, {
        "eager": ("eager", _eager, 1.0),
        "fused": ("manual", unsupported, 0.5),
    }, {"M": 4, "K": 4, "N": 4}, rounds=6)
    d = entry.decision
    assert entry.variant("fused").status == "failed"
    assert d.verdict == NEUTRAL and d.speedup is None and d.undecided and d.display_verdict == "undecided"
    assert d.reason.startswith("no fused variant runs here (fused: failed")
