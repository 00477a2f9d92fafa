"""Figures that flag themselves (issue 27, item 7): a forward pass timed through stalls says so in the report, and the
same eager forward pass read at two speeds by the analysis and the verification is a warning, not two silent
figures."""

from __future__ import annotations

import torch
from torch import nn

from fxfusion.measure.timing import TimingSpec
from fxfusion.planning.analyze import measure_forward
from fxfusion.reports.text import total_line

SPEC = TimingSpec(rounds=20, warmup=1, target_sample_s=0.0, max_inner=1, budget_s=10.0)


class StallingClock:
    """A call costs 0.26 ms, except every third, which a loaded machine stalls for 70 ms (2026-12-07, this VM)."""

    device = "cpu"

    def __init__(self, every: int = 3):
        self.every, self.calls, self.t = every, 0, 0.0

    def sample(self, fn, inner):
        fn()
        self.calls += 1
        return 70e-3 if self.calls % self.every == 0 else 0.26e-3

    def now(self):
        self.t += 1e-3
        return self.t


def test_a_forward_pass_timed_through_stalls_is_flagged_and_a_steady_one_is_not():
    model, x = nn.Linear(8, 8).eval(), torch.randn(4, 8)
    ms, noisy = measure_forward(model, (x,), "cpu", SPEC, clock=StallingClock(every=2))
    assert noisy and "stalls" in noisy and "fastest rounds' 0.26 ms" in noisy and ms > 0.26
    ms, noisy = measure_forward(model, (x,), "cpu", SPEC, clock=StallingClock(every=10**9))
    assert noisy is None and abs(ms - 0.26) < 1e-9


def test_the_report_says_the_forward_pass_is_noisy_where_it_gives_the_share():
    summary = {"sites": 2, "fusible": 2, "illegal": 0, "already_fused": 0, "fuse": 2, "saved_ms_per_forward": 0.1379,
               "bytes_saved_per_forward": 1000,
               "forward_ms": 108.443, "forward_noisy": "the median is 417x the fastest rounds' 0.26 ms (stalls: the "
                                                       "machine was loaded)"}
    line = total_line({"summary": summary})
    assert "of a 108.443 ms forward pass" in line and "that forward pass's time is noisy: the median is 417x" in line
    summary["forward_noisy"] = None
    assert "noisy" not in total_line({"summary": summary})


def test_the_same_eager_pass_read_at_two_speeds_by_analysis_and_verification_is_a_warning():
    from fxfusion.planning.analyze import analyze
    from fxfusion.planning.candidates import CandidateSet
    from fxfusion.planning.pipeline import Planner, Specs, apply_and_verify
    from tests.helpers import OpCountClock

    model, x = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), torch.randn(4, 8)
    planner = Planner(clock=OpCountClock(), specs=Specs(verify=SPEC), candidates=CandidateSet.uncompiled())
    analysis = analyze(model, (x,), None, time_forward=False, coverage=False)
    analysis.forward_ms = 1000.0  # as if read while another job stalled the machine
    _, v = apply_and_verify(analysis, model, (x,), planner)
    assert any("read 1000 ms while analysing" in w and "load changed" in w for w in v.warnings)
    analysis.forward_ms = v.timings["eager"].median_ms  # the same speed both times: nothing to say
    _, v = apply_and_verify(analysis, model, (x,), planner)
    assert not any("while analysing" in w for w in v.warnings)


def test_a_site_made_neutral_by_noise_says_so_in_the_table():
    from fxfusion.reports.text import rows

    site = {"id": "g0.s0", "pattern": "linear_bias_relu", "nodes": ["a", "b"], "shape": {"M": 8}, "dtype": "float32",
            "status": "fusible", "verdict": "neutral", "best_variant": "addmm", "saved_ms": None, "bytes_saved": 0,
            "speedup": {"median": 0.80, "ci_low": 0.60, "ci_high": 0.91}, "decision": {"noisy": True}}
    assert rows({"sites": [site]})[0][6] == "neutral (noisy)"
    site["decision"]["noisy"] = False
    assert rows({"sites": [site]})[0][6] == "neutral"
