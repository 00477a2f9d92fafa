"""Two timing regimes in every calibration -- isolated (one synchronised call) and pipelined (calls back to back) --
each with its own samples, intervals and verdicts; planning decides in the pipelined one unless told otherwise.
Driven by fake clocks, so every verdict is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fxfusion
from fxfusion.errors import FxFusionError
from fxfusion.graph.partition import partition, plan_operator_support
from fxfusion.measure.timing import CpuClock, TimingSpec, measure_regimes
from fxfusion.profiles.profile import Profile, entry_from_dict, entry_to_dict
from fxfusion.profiles.schema import SCHEMA_VERSION, entry_errors
from tests.helpers import RegimeClock, fake_entry

ROOT = Path(__file__).resolve().parent.parent

# A host-bound fusion: one launch fewer is worth a lot to a lone caller (isolated), nothing once calls overlap
# (pipelined), where the fused kernel's extra work shows.  Seconds per call: (isolated, pipelined).
HOST_BOUND = {"eager": (3.0e-5, 1.0e-5), "compile": (2.0e-5, 1.3e-5)}


def test_measure_regimes_takes_both_from_the_same_rounds_and_the_reference_once_per_round():
    a, b, ref = (lambda: None), (lambda: None), (lambda: None)
    clock = RegimeClock({"a": (2.0, 1.0), "b": (4.0, 3.0), "ref": (0.5, 0.5)}, noise=0.0)
    clock.names.update({a: "a", b: "b", ref: "ref"})
    out = measure_regimes({"a": a, "b": b}, clock, TimingSpec(rounds=7, warmup=0, budget_s=1e9), reference=ref)
    assert out.rounds == 7 and out.reference == [0.5] * 7
    assert out.by_regime["isolated"].seconds == {"a": [2.0] * 7, "b": [4.0] * 7}
    assert out.by_regime["pipelined"].seconds == {"a": [1.0] * 7, "b": [3.0] * 7}


def test_the_reference_kernel_is_timed_warm():
    """Each round runs the reference once untimed before its timed call, so what the previous round's variants
    evicted from the caches does not read as contention (idle, a 256x256 matmul after a 512x1024x1024 GEMM read up
    to 1.8x its quietest time: five of eight idle entries were flagged contended, bench_noise run 16)."""
    calls, before_timed = [], []

    def ref():
        calls.append(1)

    class Clock:
        device = "cpu"

        def sample(self, fn, inner):
            if fn is ref:
                before_timed.append(len(calls))  # reference calls already run when this one is timed
            fn()
            return 1.0

        def now(self):
            return 0.0

    measure_regimes({"a": lambda: None}, Clock(), TimingSpec(rounds=4, warmup=0, budget_s=1e9), reference=ref)
    assert before_timed == [1, 3, 5, 7] and len(calls) == 8  # every timed call follows an untimed one


def test_cpu_clock_times_the_first_call_alone_and_the_rest_back_to_back(monkeypatch):
    """The isolated sample is the batch's first call, the pipelined one the other calls: no call is added, so the
    second regime costs no extra time (the rounds of a 1.0 calibration made exactly as many calls)."""
    ticks = iter([0.0, 5.0, 11.0])  # perf_counter: start, after the first call, after the other 3 calls
    monkeypatch.setattr("fxfusion.measure.timing.time.perf_counter", lambda: next(ticks))
    calls = []
    assert CpuClock().sample_regimes(lambda: calls.append(1), 4) == (5.0, 2.0) and len(calls) == 4
    ticks = iter([0.0, 3.0])
    assert CpuClock().sample_regimes(lambda: calls.append(1), 1) == (3.0, 3.0)  # one call: the regimes share it


def test_an_entry_has_samples_intervals_and_a_verdict_per_regime(monkeypatch):
    e = fake_entry(monkeypatch, HOST_BOUND, RegimeClock(HOST_BOUND))
    v = e.variant("compile")
    assert v.median_ms == pytest.approx(0.02, rel=0.05) and v.pipelined.median_ms == pytest.approx(0.013, rel=0.05)
    assert len(v.samples_ms) == len(v.pipelined.samples_ms) == 20
    assert v.verdict == "fuse" and v.speedup.ci_low > 1.3
    assert v.pipelined.verdict == "avoid" and v.pipelined.speedup.ci_high < 0.9
    assert (e.decision.verdict, e.decision.regime) == ("fuse", "isolated")
    assert (e.pipelined_decision.verdict, e.pipelined_decision.regime) == ("avoid", "pipelined")
    assert e.noise["batches"] == 1 and e.noise["unstable"] == {"isolated": [], "pipelined": []}


def _profile(entry) -> Profile:
    from fxfusion.measure.hardware import device_name

    meta = {"device": "cpu", "device_name": device_name("cpu"), "timing": {"regimes": ["isolated", "pipelined"]}}
    return Profile(metadata=meta, hardware={}, ceilings={}, entries=[entry])


def test_decide_and_should_fuse_take_a_regime_pipelined_by_default(monkeypatch):
    profile = _profile(fake_entry(monkeypatch, HOST_BOUND, RegimeClock(HOST_BOUND)))
    shape = {"M": 8, "K": 16, "N": 8}
    d = profile.decide("linear_bias", shape)
    assert (d.verdict, d.regime) == ("avoid", "pipelined") and d.warnings == []
    assert profile.decide("linear_bias", shape, regime="isolated").verdict == "fuse"
    assert profile.should_fuse("linear_bias", shape, regime="isolated")
    assert not profile.should_fuse("linear_bias", shape)
    with pytest.raises(FxFusionError, match="unknown timing regime 'batched'"):
        profile.decide("linear_bias", shape, regime="batched")


class WrittenLinear(nn.Module):  # x @ W.T + b: a linear_bias site whose baseline is eager
    def __init__(self):
        super().__init__()
        self.W, self.b = nn.Parameter(torch.randn(8, 16) * 0.25), nn.Parameter(torch.zeros(8))

    def forward(self, x):
        return x @ self.W.T + self.b


def test_plan_and_the_partitioner_bridge_decide_in_the_regime_asked(monkeypatch):
    monkeypatch.setattr("fxfusion.fusions.registry.rewrite_for", lambda pattern, variant: object())
    monkeypatch.setattr("fxfusion.planning.plan.rewrite_for", lambda pattern, variant: object())
    profile = _profile(fake_entry(monkeypatch, HOST_BOUND, RegimeClock(HOST_BOUND)))
    model, inputs = WrittenLinear().eval(), (torch.randn(8, 16),)
    kw = dict(check_overhead=False, in_model=False)
    pipelined = fxfusion.plan(model, profile, inputs, **kw)
    assert pipelined.regime == "pipelined" and pipelined.groups == []
    assert [r.why for r in pipelined.refused] == ["not_fuse"]
    isolated = fxfusion.plan(model, profile, inputs, regime="isolated", **kw)
    assert isolated.regime == "isolated" and [g.variant for g in isolated.groups] == ["compile"]
    assert isolated.to_dict()["regime"] == "isolated" and isolated.to_networkx().graph["regime"] == "isolated"
    plan_operator_support(isolated, regime="isolated")
    with pytest.raises(FxFusionError, match="decided in the isolated regime, not the pipelined one"):
        partition(isolated, regime="pipelined")
    with pytest.raises(FxFusionError, match="decided in the pipelined regime"):
        plan_operator_support(pipelined, regime="isolated")


def test_an_entry_with_both_regimes_round_trips_through_the_schema(monkeypatch):
    e = fake_entry(monkeypatch, HOST_BOUND, RegimeClock(HOST_BOUND))
    data = json.loads(json.dumps(entry_to_dict(e)))
    assert entry_errors(data) == [] and SCHEMA_VERSION == "1.1"
    assert data["pipelined_decision"]["regime"] == "pipelined" and data["decision"]["regime"] == "isolated"
    assert data["variants"][1]["pipelined"]["verdict"] == "avoid"
    back = entry_from_dict(data)
    assert back.variant("compile").pipelined == e.variant("compile").pipelined
    assert back.pipelined_decision == e.pipelined_decision


# schema 1.0 profiles: one shipped (isolated), and the CPU profile of 2026-11-26 (pipelined), archived when the CPU
# was recalibrated in both regimes (2026-12-07)
ONE_REGIME = {"h200-float16-quick.json": ROOT / "profiles" / "h200-float16-quick.json",
              "generic-cpu-epyc-2core.json": ROOT / "docs" / "results" / "cpu-profile-2026-11-26" /
              "generic-cpu-epyc-2core.json.gz"}


@pytest.mark.parametrize("name,held", [("h200-float16-quick.json", "isolated"), ("generic-cpu-epyc-2core.json", "pipelined")])
def test_a_schema_1_0_profile_loads_with_a_one_line_note_of_its_one_regime(name, held, tmp_path):
    source = ONE_REGIME[name]
    if source.suffix == ".gz":
        import gzip

        (tmp_path / name).write_bytes(gzip.decompress(source.read_bytes()))
        source = tmp_path / name
    profile = Profile.load(source)
    assert profile.schema_version == "1.0" and profile.regimes == (held,)
    [note] = profile.notes
    assert "\n" not in note and f"holds the {held} regime only" in note and name in note
    e = profile.entries[0]
    assert e.regimes() == (held,) and e.decision.regime == held
    other = "pipelined" if held == "isolated" else "isolated"
    d = profile.decide(e.pattern, e.shape, e.dtype, e.device, regime=other)
    assert d.verdict == e.decision.verdict and d.regime == held
    assert any(f"holds no {other} measurement" in w for w in d.warnings)
    assert profile.decide(e.pattern, e.shape, e.dtype, e.device, regime=held).warnings == []


def test_a_real_calibration_records_both_regimes_and_how_it_watched_for_noise(tiny_profile):
    profile = Profile.load(tiny_profile)
    meta = profile.metadata
    assert profile.regimes == ("isolated", "pipelined") and profile.notes == []
    assert meta["noise"]["reference"].startswith("torch.mm") and meta["noise"]["max_batches"] == 3
    for e in profile.entries:
        assert e.pipelined_decision is not None and e.noise["batches"] >= 1
        assert len(e.noise["reference_ms"]) == len(e.variant("eager").samples_ms)
        for v in e.variants:
            if v.status == "ok":
                assert v.calls_per_sample == 1 and len(v.pipelined.samples_ms) == len(v.samples_ms)
