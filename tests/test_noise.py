"""Noise handled, not hidden: contention is detected, unstable verdicts are measured again and, when still unstable,
made neutral with a reason that says noisy -- never a fuse <-> avoid flip.  Fake clocks make every case exact."""

from __future__ import annotations

import random

import pytest

from fxfusion.measure.noise import (CONTENDED_MIN_EFFECT, Contention, HostSnapshot, NoiseGuard, instability,
                                    read_cpu_ticks)
from fxfusion.profiles.profile import Profile
from tests.helpers import HtmlDoc, RegimeClock, fake_entry


def _samples(cost, n=20, noise=0.02, seed=0):
    rng = random.Random(seed)
    return [cost * rng.lognormvariate(0.0, noise) for _ in range(n)]


# -- stability of one verdict ----------------------------------------------------------------------------------------

def test_a_clear_effect_is_stable():
    assert instability(_samples(2.0, seed=1), _samples(1.0, seed=2), _samples(1.0, seed=3)) == []


def test_halves_pointing_opposite_ways_are_unstable():
    eager = _samples(1.0, seed=1)
    cand = _samples(0.8, n=10, seed=2) + _samples(1.25, n=10, seed=3)  # faster, then slower: drift
    [why] = instability(eager, cand)
    assert "first half say 1.2" in why and "second half 0.8" in why


def test_a_fuse_that_holds_only_in_loud_rounds_is_unstable():
    """Contention that slows eager more than the fusion (more ops, more waits) fakes a gain in the loud rounds."""
    loud = [i % 2 == 1 for i in range(20)]
    reference = [3.0 if x else 1.0 for x in loud]
    eager = [c * (1.6 if x else 1.0) for c, x in zip(_samples(1.0, seed=1), loud)]
    cand = _samples(1.03, seed=2)
    reasons = instability(eager, cand, reference)
    assert any("quiet rounds say 0.9" in r and "loud rounds 1.5" in r for r in reasons)


def test_under_contention_a_small_effect_is_not_enough():
    eager, cand = _samples(1.05, noise=0.005, seed=1), _samples(1.0, noise=0.005, seed=2)
    assert instability(eager, cand) == []  # 5%, tight: fuse on a quiet machine
    busy = Contention(load_per_cpu=3.0)
    [why] = instability(eager, cand, contention=busy)
    assert f"\u00b1{CONTENDED_MIN_EFFECT:.0%} zone" in why and "load 3.00" in why
    assert instability(_samples(1.5, seed=1), _samples(1.0, seed=2), contention=busy) == []


# -- contention signals -----------------------------------------------------------------------------------------------

def test_contention_from_load_steal_and_the_reference_kernel():
    guard = NoiseGuard(own_threads=2, cpus=2)
    quiet = guard.assess(HostSnapshot(2.5, 0, 1000), HostSnapshot(2.8, 10, 2000), [1.0, 1.01, 1.0, 1.02])
    assert quiet.load_per_cpu == pytest.approx(0.4) and quiet.steal == pytest.approx(0.01)
    assert quiet.reference_slowdown == pytest.approx(1.0) and not quiet.contended  # the quietest measurement so far
    busy = guard.assess(HostSnapshot(2.0, 0, 1000), HostSnapshot(7.0, 200, 2000), [1.0, 2.0, 3.0, 2.5])
    reasons = busy.reasons()
    assert busy.contended and len(reasons) == 4
    assert reasons[0].startswith("load 2.50") and reasons[1].startswith("20% of CPU time stolen")
    assert "reference kernel spread 39%" in reasons[2] and "2.24x its quietest median" in reasons[3]
    assert NoiseGuard().assess(None, None, []).reasons() == []  # nothing read: nothing claimed


def test_steal_is_read_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3\n")
    assert read_cpu_ticks(str(stat)) == (35, 1000)
    assert read_cpu_ticks(str(tmp_path / "missing")) is None


# -- measuring again, and what stays noisy ---------------------------------------------------------------------------

COSTS = {"eager": (1.0e-5, 1.0e-5), "compile": (0.9e-5, 0.9e-5), "reference": (1.0e-5, 1.0e-5)}
ROUNDS = 20
# RegimeClock ticks once per sample: a measurement of eager + compile is 3 + 3 single calls (the batch sizes), then
# per round one sample of each in both regimes (4 ticks), plus the reference kernel when the guard has one.
TICKS = 6 + 4 * ROUNDS
TICKS_REF = 6 + 5 * ROUNDS


def _position(t: int, ticks: int = TICKS) -> tuple[int, float]:
    """(which measurement, how far into its rounds: 0..1) of tick ``t``."""
    k, within = divmod(t - 1, ticks)
    return k, (within - 6) / (ticks - 6)


def test_a_burst_of_drift_is_measured_again_and_the_quiet_measurement_decides(monkeypatch):
    # in the second half of the first measurement the fusion looks 50% slower; then the machine is quiet
    def load(t, name):
        k, x = _position(t)
        return 1.5 if name == "compile" and k == 0 and x >= 0.5 else 1.0

    e = fake_entry(monkeypatch, COSTS, RegimeClock(COSTS, load=load), rounds=ROUNDS)
    assert e.noise["batches"] == 2 and e.noise["unstable"] == {"isolated": [], "pipelined": []}
    assert e.decision.verdict == e.pipelined_decision.verdict == "fuse" and not e.decision.noisy


def _drifting(t, name):  # slower in the first half of every measurement, faster in the second: never settles
    return 1.5 if name == "compile" and _position(t)[1] < 0.5 else 1.0


def test_a_verdict_unstable_in_every_measurement_is_neutral_and_says_noisy(monkeypatch):
    e = fake_entry(monkeypatch, COSTS, RegimeClock(COSTS, load=_drifting), rounds=ROUNDS)
    assert e.noise["batches"] == 3
    for d in (e.decision, e.pipelined_decision):
        assert d.verdict == "neutral" and d.noisy and d.reason.startswith("noisy after 3 measurement(s)")
        assert "first half say 0.7" in d.reason and "the measurement alone said" in d.reason


def test_re_measuring_stops_at_the_budget(monkeypatch):
    """The budget is for measuring again; the measurement that overruns it is the last (the clock ticks 1 us)."""
    for budget, batches in ((0.0, 1), (1e-6, 2)):
        e = fake_entry(monkeypatch, COSTS, RegimeClock(COSTS, load=_drifting), rounds=ROUNDS,
                       guard=NoiseGuard(budget_s=budget))
        assert e.noise["batches"] == batches and e.decision.noisy


def test_measurements_that_point_opposite_ways_leave_the_entry_neutral(monkeypatch):
    """Under contention the fusion looks 6% faster (a fuse, but inside the widened zone: measured again); on the
    quiet machine it is 20% slower: one run must not say fuse, another avoid -- the entry is neutral, noisy."""
    costs = {"eager": (1.0e-5, 1.0e-5), "compile": (1.25e-5, 1.25e-5), "reference": (1.0e-5, 1.0e-5)}

    def load(t, name):
        k, _ = _position(t, TICKS_REF)
        if k > 0:
            return 1.0
        return {"compile": 0.755, "reference": 1.0 + 2.0 * (t % 2), "eager": 1.0}[name]

    clock = RegimeClock(costs, noise=0.005, load=load)
    e = fake_entry(monkeypatch, costs, clock, rounds=ROUNDS, guard=NoiseGuard(reference=lambda: None))
    assert e.noise["batches"] == 2 and e.noise["disagreement"]["isolated"] == "the 2 measurements said fuse, avoid"
    assert e.decision.verdict == "neutral" and e.decision.noisy and "said fuse, avoid" in e.decision.reason


SCENARIOS = [0.5, 0.8, 0.94, 0.97, 1.0, 1.03, 1.06, 1.25, 2.0]  # speedup of the fusion on a quiet machine


@pytest.mark.parametrize("seed", [0, 1])
def test_idle_and_loaded_never_flip_fuse_and_avoid(monkeypatch, seed):
    """The same entries on a quiet machine and on a loaded one -- contention in bursts (half the time, 2x slower)
    that slow eager (more ops) 8% more than the fusion, seen by the reference kernel: marginal verdicts may go
    neutral, none goes the other way, clear ones agree."""
    flips, agree = [], []
    for i, gain in enumerate(SCENARIOS):
        costs = {"eager": (gain * 1e-5, gain * 1e-5), "compile": (1e-5, 1e-5), "reference": (1e-5, 1e-5)}
        idle = fake_entry(monkeypatch, costs, RegimeClock(costs, seed=seed * 100 + i),
                          guard=NoiseGuard(reference=lambda: None))
        burst, busy = random.Random(seed * 100 + i), {}

        def load(t, name, busy=busy, burst=burst):
            if t // 8 not in busy:
                busy[t // 8] = burst.random() < 0.5
            return {"eager": 2.16, "compile": 2.0, "reference": 2.0}[name] if busy[t // 8] else 1.0

        loaded = fake_entry(monkeypatch, costs, RegimeClock(costs, seed=seed * 100 + i, noise=0.05, load=load),
                            guard=NoiseGuard(reference=lambda: None))
        for regime in ("isolated", "pipelined"):
            a, b = idle.decision_for(regime).verdict, loaded.decision_for(regime).verdict
            if a == b:
                agree.append(gain)
            if {a, b} == {"fuse", "avoid"}:
                flips.append((gain, regime, a, b))
    assert flips == []
    assert {0.5, 0.8, 1.25, 2.0} <= set(agree) and len(agree) >= 0.6 * 2 * len(SCENARIOS)


# -- shown, not hidden -----------------------------------------------------------------------------------------------

def _noisy_profile(monkeypatch) -> Profile:
    from fxfusion.calibration.regimes import noise_summary, noise_warnings
    from fxfusion.measure.hardware import device_name

    entries = [fake_entry(monkeypatch, COSTS, RegimeClock(COSTS, load=_drifting), rounds=ROUNDS)]
    meta = {"hardware": "generic-cpu", "device": "cpu", "device_name": device_name("cpu"), "threads": 2,
            "timing": {"regimes": ["isolated", "pipelined"], "min_effect": 0.02},
            "noise": noise_summary(entries, NoiseGuard()), "warnings": noise_warnings(entries)}
    hardware = {"name": "generic-cpu", "device": "cpu", "peak_gflops": {"float32": 100.0}, "peak_bandwidth_gbs": 20.0,
                "source": "test"}
    return Profile(metadata=meta, hardware=hardware, ceilings={"matmul": [], "bandwidth": []}, entries=entries)


def test_noisy_verdicts_are_flagged_in_the_metadata_the_terminal_and_the_html(monkeypatch):
    from rich.console import Console

    from fxfusion.reports.console import regime_lines, summary_table

    profile = _noisy_profile(monkeypatch)
    key = profile.entries[0].key()
    assert profile.metadata["noise"]["noisy"] == [f"{key} [isolated]", f"{key} [pipelined]"]
    assert [w.split(" is neutral: ")[0] for w in profile.metadata["warnings"]] == [f"{key} [isolated]",
                                                                                  f"{key} [pipelined]"]
    console = Console(width=250, record=True, color_system=None)
    console.print(summary_table(profile))
    assert "neutral (noisy)" in console.export_text()
    assert any("2 verdict(s) left noisy" in line for line in regime_lines(profile))

    pytest.importorskip("matplotlib")
    from fxfusion.reports.html import render_profile_html

    doc = HtmlDoc(render_profile_html(profile))
    [row] = [r for r in doc.rows if "data-key" in r["attrs"]]
    assert row["attrs"]["data-noisy"] == "isolated,pipelined" and row["cells"][4] == "neutral"
    [why] = [r for r in doc.rows if "data-why" in r["attrs"]]  # the full-width row under the entry (issue 14)
    assert "why: noisy after" in why["cells"][0] and "verdict per regime" in why["cells"][0]
    assert why["cells"][0].count("noisy") >= 3  # the reason, and each regime's flag


def test_a_variant_that_stalls_in_most_samples_is_not_called_slower():
    """Descheduled threads stall one variant in most of its samples: the medians say it is 1000x slower, the
    floors (the fastest tenth, least disturbed) that it is faster -- unstable, never an avoid."""
    eager = _samples(1.0, seed=1)
    stalled = [c * (1000.0 if i % 5 else 1.0) for i, c in enumerate(_samples(0.8, seed=2))]  # 4 in 5 stall
    [why] = instability(eager, stalled)
    assert why.startswith("avoid at 0.00x") and "fastest tenth of each side's samples say 1.19x" in why
    assert instability(eager, _samples(0.8, seed=2)) == []  # the same variant unstalled: a clear fuse


def test_under_contention_the_verdict_is_read_from_the_floors():
    """On a contended machine the medians follow the scheduler; the floors (each side's fastest tenth) the work."""
    from fxfusion.measure.noise import entry_speedup, statistic_for

    busy = Contention(load_per_cpu=3.0)
    assert statistic_for(busy) == "floor" and statistic_for(Contention()) == "median"
    eager = [c * (1000.0 if i % 5 else 1.0) for i, c in enumerate(_samples(1.0, seed=1))]  # eager stalls too
    stalled = [c * (1000.0 if i % 5 == 1 else 1.0) for i, c in enumerate(_samples(0.5, seed=2))]
    s = entry_speedup(eager, stalled, "floor")
    assert s.median == pytest.approx(2.0, rel=0.05) and s.verdict() == "fuse"
    assert instability(eager, stalled, contention=busy) == []


def test_a_thread_pool_slower_than_one_thread_is_contention():
    """A busy host deschedules the pool's threads and every parallel region waits: the reference kernel on the
    timing's threads against its time on one thread."""
    guard = NoiseGuard(reference=lambda: None, single_thread=True)
    guard._one_thread_s = lambda: 0.001  # what one thread takes
    c = guard.assess(None, None, [0.09, 0.092, 0.091, 0.09])
    assert c.thread_stall == pytest.approx(90.5) and "parallel regions wait" in c.reasons()[0]
    assert guard.assess(None, None, [0.0006] * 4).thread_stall == pytest.approx(0.6)
    assert NoiseGuard.for_device("cpu").single_thread == (__import__("torch").get_num_threads() > 1)


def test_an_interval_too_wide_to_tell_a_gain_from_a_loss_is_inconclusive():
    eager = [c * (50.0 if i % 2 else 1.0) for i, c in enumerate(_samples(1.0, seed=1))]  # every other sample stalls
    cand = [c * (50.0 if i % 3 == 0 else 1.0) for i, c in enumerate(_samples(1.0, seed=2))]
    [why] = instability(eager, cand)
    assert why.startswith("inconclusive: ") and "spans more than a factor 2" in why


def test_a_noisy_site_is_named_in_the_analysis_warnings(monkeypatch):
    import torch

    from fxfusion.planning.analyze import ProfileSource, analyze

    profile = _noisy_profile(monkeypatch)

    class WrittenLinear(torch.nn.Module):  # x @ W.T + b: the linear_bias site of the noisy entry's shape
        def __init__(self):
            super().__init__()
            self.W, self.b = torch.nn.Parameter(torch.randn(8, 16)), torch.nn.Parameter(torch.zeros(8))

        def forward(self, x):
            return x @ self.W.T + self.b

    a = analyze(WrittenLinear().eval(), (torch.randn(8, 16),), ProfileSource(profile, "cpu"), time_forward=False)
    [o] = a.outcomes
    assert o.verdict == "neutral" and o.decision.noisy
    assert any(w.startswith("g0.s0 linear_bias left neutral, its measurement noisy: noisy after")
               for w in a.to_dict()["warnings"])


# -- stalls shorter than a round: the samples themselves are the contention signal ----------------------------------

STALL_S = 3.0e-5  # a stalled sample takes about this long whatever its variant (it waits for a descheduled thread)


def _stalls(costs, ticks=TICKS, p=(("eager", 0.3), ("compile", 0.7))):
    """In the second half of every measurement single samples stall -- the fusion's more often -- and no host signal
    or reference kernel sees it: one side of a round's pair stalls, the other not, and pairing cannot cancel it."""
    chance = dict(p)

    def load(t, name):
        x = _position(t, ticks)[1]
        stalled = x >= 0.5 and random.Random(t).random() < chance.get(name, 0.0)
        return STALL_S / costs[name][0] if stalled else 1.0
    return load


def test_stalls_that_wreck_the_paired_medians_are_read_from_the_floors(monkeypatch):
    """Quiet rounds say 1.3x, rounds with a stalled fusion 0.4x: the medians' halves point opposite ways in every
    measurement (the old rule left it neutral, noisy).  That instability is the contention signal: read from the
    floors (each side's fastest tenth, clean in both halves) the fusion is a stable 1.3x."""
    costs = {"eager": (1.3e-5, 1.3e-5), "compile": (1.0e-5, 1.0e-5)}
    e = fake_entry(monkeypatch, costs, RegimeClock(costs, load=_stalls(costs)), rounds=ROUNDS)
    c = e.noise["contention"]
    assert e.noise["statistic"] == "floor" and "second half" in c["unstable_medians"]
    assert c["reasons"] == [f"the samples themselves: {c['unstable_medians']}"]
    for d in (e.decision, e.pipelined_decision):
        assert d.verdict == "fuse" and not d.noisy and d.speedup.median == pytest.approx(1.3, rel=0.05)
    quiet = fake_entry(monkeypatch, costs, RegimeClock(costs), rounds=ROUNDS)  # no stalls: the medians, untouched
    assert quiet.noise["statistic"] == "median" and quiet.noise["contention"]["unstable_medians"] is None
    assert quiet.decision.verdict == "fuse"


def test_a_sustained_slowdown_stays_noisy_when_read_from_the_floors(monkeypatch):
    """Drift slows every sample of a half, the fastest ones too: the floors' halves disagree as the medians' did."""
    e = fake_entry(monkeypatch, COSTS, RegimeClock(COSTS, load=_drifting), rounds=ROUNDS)
    assert e.noise["statistic"] == "floor" and "first half" in e.noise["contention"]["unstable_medians"]
    assert e.noise["batches"] == 3
    for d in (e.decision, e.pipelined_decision):
        assert d.verdict == "neutral" and d.noisy and "first half say 0.7" in d.reason


@pytest.mark.parametrize("seed", [0, 1])
def test_stalls_never_flip_fuse_and_avoid(monkeypatch, seed):
    """The scenarios of the quiet machine against stalls of single samples in half of every measurement, stalling
    either side more often: no flip; clear gains keep their verdict.  (A clear loss whose eager stalls more may read
    neutral: the stalls widen the medians' interval over 1 -- the safe direction.)"""
    flips, agree = [], []
    for i, gain in enumerate(SCENARIOS):
        costs = {"eager": (gain * 1e-5, gain * 1e-5), "compile": (1e-5, 1e-5)}
        idle = fake_entry(monkeypatch, costs, RegimeClock(costs, seed=seed * 100 + i), rounds=ROUNDS)
        for p in ((("eager", 0.3), ("compile", 0.7)), (("eager", 0.7), ("compile", 0.3))):
            loaded = fake_entry(monkeypatch, costs, RegimeClock(costs, seed=seed * 100 + i, load=_stalls(costs, p=p)),
                                rounds=ROUNDS)
            for regime in ("isolated", "pipelined"):
                a, b = idle.decision_for(regime).verdict, loaded.decision_for(regime).verdict
                if {a, b} == {"fuse", "avoid"}:
                    flips.append((gain, p, regime, a, b))
                if gain in (1.25, 2.0):
                    agree.append(a == b == "fuse")
                if gain in (0.5, 0.8):
                    agree.append(a == "avoid" and b in ("avoid", "neutral"))
    assert flips == [] and all(agree) and len(agree) == 16


def test_an_unstable_sibling_does_not_undo_a_stable_fuse():
    """A fuse rests on its best variant: an unstable sibling could change which fusion is best, never whether one
    beats eager.  It is named in the reason and the fuse stands.  A neutral or an avoid, an unstable best variant,
    or measurements that pointed opposite ways still make the regime neutral and noisy."""
    from fxfusion.calibration.regimes import Timed, settle
    from fxfusion.profiles.profile import Decision

    def decision(verdict, best):
        return Decision(pattern="linear_bias", shape={"M": 8}, dtype="float32", device="cpu", verdict=verdict,
                        best_variant=best, speedup=None, reason="as measured", regime="pipelined")

    timed = Timed(samples=None, contention=Contention(), batches=3,
                  unstable={"pipelined": {"compile2": ["inconclusive: 1.00x [0.60, 1.70] spans more than a factor 2"]}})
    kept = settle(decision("fuse", "compile"), timed, "pipelined")
    assert kept.verdict == "fuse" and not kept.noisy
    assert kept.reason == "as measured; compile2 unstable, not deciding: compile is a stable fuse"
    for verdict, best in (("fuse", "compile2"), ("neutral", "compile"), ("avoid", "eager")):
        d = settle(decision(verdict, best), timed, "pipelined")
        assert d.verdict == "neutral" and d.noisy and "compile2: inconclusive" in d.reason
    timed.unstable, timed.disagreement = {}, {"pipelined": "the 2 measurements said fuse, avoid"}
    assert settle(decision("fuse", "compile"), timed, "pipelined").noisy


def test_contended_measurements_are_pooled_until_the_floors_can_decide(monkeypatch):
    """Under contention (here the load average) a fusion 1.3x faster, half of each side's samples stalled 3x: the
    floor of 20 samples is too imprecise to tell a 10% gain from a 10% loss (inconclusive, spanning more than
    1.1 / 0.9); the floors of the pooled rounds of three measurements can."""
    from fxfusion.measure.noise import CONTENDED_INCONCLUSIVE_SPAN

    costs = {"eager": (1.3e-5, 1.3e-5), "compile": (1.0e-5, 1.0e-5)}

    def stalls(t, name):
        return 3.0 if random.Random(t).random() < 0.5 else 1.0

    def entry(max_batches):
        guard = NoiseGuard(probe=lambda: HostSnapshot(9.0), cpus=2, max_batches=max_batches)
        return fake_entry(monkeypatch, costs, RegimeClock(costs, noise=0.1, load=stalls), rounds=ROUNDS, guard=guard)

    one = entry(1)
    assert one.noise["statistic"] == "floor" and one.noise["pooled"] == 1
    assert one.decision.noisy and f"(floors) spans more than a factor {CONTENDED_INCONCLUSIVE_SPAN:.3g}" in \
        one.decision.reason
    pooled = entry(3)
    assert pooled.noise["batches"] == pooled.noise["pooled"] == 3
    assert len(pooled.variant("eager").samples_ms) == 3 * ROUNDS
    assert pooled.decision.verdict == "fuse" and not pooled.decision.noisy
    assert pooled.decision.speedup.median == pytest.approx(1.3, rel=0.05)


def test_when_even_the_floors_stalled_no_verdict_stands(monkeypatch):
    """Every parallel region waits for a scheduler tick: the reference kernel's fastest tenth is 20x its one-thread
    time, and a sample counts parallel regions, not work.  A clear-looking 1.5x is unstable and ends neutral, noisy;
    the same samples with the reference's floor at its one-thread time keep their fuse."""
    costs = {"eager": (1.5e-5, 1.5e-5), "compile": (1.0e-5, 1.0e-5), "reference": (1.0e-5, 1.0e-5)}
    for one_thread, verdict in ((1.0e-5 / 20, "neutral"), (1.0e-5, "fuse")):
        guard = NoiseGuard(reference=lambda: None, single_thread=True)
        guard._one_thread_s = lambda one_thread=one_thread: one_thread
        e = fake_entry(monkeypatch, costs, RegimeClock(costs), rounds=ROUNDS, guard=guard)
        c = e.noise["contention"]
        assert (c["floor_stall"] > 15) == (verdict == "neutral")
        for d in (e.decision, e.pipelined_decision):
            assert d.verdict == verdict and d.noisy == (verdict == "neutral")
        if verdict == "neutral":
            assert e.noise["batches"] == 3 and "no statistic of these samples measures the work" in e.decision.reason
            assert any(r.startswith("even the reference kernel's fastest tenth is ") and "no sample was undisturbed" in r for r in c["reasons"])


def test_the_reference_kernel_is_device_work_on_a_gpu_and_the_profile_says_which():
    from fxfusion.calibration.regimes import noise_summary
    from fxfusion.measure.noise import reference_size, reference_text

    assert reference_size("cpu") == 256 and reference_size("cuda:1") == 2048  # a launch vs ~0.35 ms on an H200
    assert "2048x2048" in reference_text("cuda") and "256x256" in reference_text("cpu")
    guard = NoiseGuard.for_device("cpu")
    assert guard.reference_text == reference_text("cpu") and guard.reference().shape == (256, 256)
    assert noise_summary([], guard)["reference"] == reference_text("cpu")
    assert noise_summary([], NoiseGuard(reference=lambda: None, reference_text="x"))["reference"] == "x"
    assert noise_summary([], NoiseGuard())["reference"] == "none"
