"""The regimes check on the CPU (fxfusion.reports.regimes_check, run by benchmarks/bench_regimes.py): the
do_bench-style probe (fxfusion.measure.probe) under a fake timer, how cells, the +-20% share and the direction
agreement are counted, and a run cut short and resumed (the CUDA run itself is prepared for the GPU machine)."""

from __future__ import annotations

import json
import sys

import pytest

from fxfusion.measure import probe as probe_module
from fxfusion.profiles.profile import Profile
from fxfusion.reports import regimes_check as check
from tests.helpers import RegimeClock, fake_entry


class FakeTimer:
    """A batch of n calls costs ``per_call`` each plus a ``launch`` once (the event pair), recorded."""

    def __init__(self, per_call: float, launch: float = 0.0):
        self.per_call, self.launch, self.batches = per_call, launch, []

    def batch(self, fn, n):
        self.batches.append(n)
        for _ in range(min(n, 3)):
            fn()
        return self.per_call + self.launch / n


def test_probe_sizes_batches_to_the_target_and_takes_the_median():
    timer = FakeTimer(per_call=1e-5, launch=1e-5)
    calls = []
    per_call = probe_module.probe(lambda: calls.append(1), timer, reps=5, batch_s=0.002, warmup=2)
    assert timer.batches[:3] == [1, 1, 1] and timer.batches[3:] == [100] * 5  # 2 ms / (10 + 10 us)
    assert per_call == pytest.approx(1e-5 + 1e-7) and len(calls) == 2 + 3 * 1 + 5 * 3
    assert "triton" not in probe_module.__dict__  # the probe needs no Triton


def _profile(monkeypatch, costs):
    return Profile(metadata={"device": "cpu"}, hardware={}, ceilings={},
                   entries=[fake_entry(monkeypatch, costs, RegimeClock(costs, noise=0.001))])


def test_cells_compare_the_pipelined_median_with_the_probe_and_the_verdict_with_its_direction(monkeypatch):
    # pipelined: eager 10 us, compile 5 us (fuse); isolated 30 us / 20 us
    profile = _profile(monkeypatch, {"eager": (3e-5, 1e-5), "compile": (2e-5, 5e-6)})
    key = profile.entries[0].key()
    cells = check.compare_cells(profile, {key: {"eager": 0.0105, "compile": 0.0062}})
    eager, comp = cells
    assert (eager.variant, eager.within, eager.isolated_within, eager.direction) == ("eager", True, False, None)
    assert comp.within and comp.pipelined_verdict == "fuse" and comp.probe_speedup == pytest.approx(0.0105 / 0.0062)
    assert comp.direction == "agree"
    s = check.summary(cells)
    assert (s["cells"], s["within_share"], s["directed_cells"], s["direction_agreement"], s["ok"]) == \
        (2, 1.0, 1, 1.0, True)
    # a probe that says the fusion is slower: the pipelined fuse disagrees; one 40% off is outside +-20%
    cells = check.compare_cells(profile, {key: {"eager": 0.0105, "compile": 0.014}})
    assert cells[1].direction == "disagree" and not cells[1].within
    assert not check.summary(cells)["ok"]
    # inside 0.9-1.1 a probe has no direction; entries without probes are left out
    assert check.compare_cells(profile, {key: {"eager": 0.0105, "compile": 0.010}})[1].direction is None
    assert check.compare_cells(profile, {}) == []
    assert any("target >= 90%" in line for line in check.summary_lines(s)) and len(check.rows(cells)) == 3


def _run(monkeypatch, out, *extra):
    monkeypatch.setattr(sys, "argv", ["bench_regimes.py", "--out", str(out), "--device", "cpu", "--hardware",
                                      "generic-cpu", "--patterns", "linear_bias", "--sizes", "1", *extra])
    return check.run()


def test_a_run_cut_short_says_so_and_a_resumed_one_keeps_the_probes_already_taken(monkeypatch, tmp_path):
    import fxfusion.calibration.calibrate as cal

    calls = []

    def interrupted(**kwargs):
        calls.append(kwargs)
        kwargs["on_thunks"]("first-entry", {"eager": lambda: None})  # one entry probed, then the signal
        raise KeyboardInterrupt

    monkeypatch.setattr(cal, "calibrate", interrupted)
    assert _run(monkeypatch, tmp_path, "--compile-modes", "compile,compile_reduce_overhead") == 3
    assert calls[0]["resume"] is False and calls[0]["max_shapes"] == 1
    assert calls[0]["compile_modes"] == ("compile", "compile_reduce_overhead")
    assert "run again with --resume" in (tmp_path / "bench_regimes.interrupted.txt").read_text()
    assert set(json.loads((tmp_path / "probes.json").read_text())) == {"first-entry"}

    profile = Profile(metadata={"device": "cpu"}, hardware={}, ceilings={},
                      entries=[fake_entry(monkeypatch, {"eager": (3e-5, 1e-5), "compile": (2e-5, 5e-6)},
                                          RegimeClock({"eager": (3e-5, 1e-5), "compile": (2e-5, 5e-6)},
                                                      noise=0.001))])
    profile.metadata["noise"] = {"contended_entries": 0, "remeasured_entries": 0, "noisy": []}

    def resumed(**kwargs):
        calls.append(kwargs)
        kwargs["on_thunks"]("second-entry", {"eager": lambda: None})
        return profile

    monkeypatch.setattr(cal, "calibrate", resumed)
    assert _run(monkeypatch, tmp_path, "--resume", "--no-compile") == 0
    assert calls[1]["resume"] is True and calls[1]["compile_modes"] == ()
    assert set(json.loads((tmp_path / "probes.json").read_text())) == {"first-entry", "second-entry"}
    assert "resumed from the journal" in (tmp_path / "bench_regimes.txt").read_text()


def test_sizes_all_keeps_every_shape(monkeypatch, tmp_path):
    import fxfusion.calibration.calibrate as cal

    seen = {}

    def stop(**kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cal, "calibrate", stop)
    monkeypatch.setattr(sys, "argv", ["bench_regimes.py", "--out", str(tmp_path), "--device", "cpu", "--hardware",
                                      "generic-cpu", "--patterns", "linear_bias", "--sizes", "all"])
    assert check.run() == 3 and seen["max_shapes"] is None
