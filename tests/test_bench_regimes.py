"""benchmarks/bench_regimes.py's pure logic on the CPU: the do_bench-style probe under a fake timer, and how cells,
the +-20% share and the direction agreement are counted (the CUDA run itself is prepared for the GPU machine)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fxfusion.profiles.profile import Profile
from tests.helpers import RegimeClock, fake_entry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_regimes", ROOT / "benchmarks" / "bench_regimes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class FakeTimer:
    """A batch of n calls costs ``per_call`` each plus a ``launch`` once (the event pair), recorded."""

    def __init__(self, per_call: float, launch: float = 0.0):
        self.per_call, self.launch, self.batches = per_call, launch, []

    def batch(self, fn, n):
        self.batches.append(n)
        for _ in range(min(n, 3)):
            fn()
        return self.per_call + self.launch / n


def test_probe_sizes_batches_to_the_target_and_takes_the_median(bench):
    timer = FakeTimer(per_call=1e-5, launch=1e-5)
    calls = []
    per_call = bench.probe(lambda: calls.append(1), timer, reps=5, batch_s=0.002, warmup=2)
    assert timer.batches[:3] == [1, 1, 1] and timer.batches[3:] == [100] * 5  # 2 ms / (10 + 10 us)
    assert per_call == pytest.approx(1e-5 + 1e-7) and len(calls) == 2 + 3 * 1 + 5 * 3
    assert "triton" not in bench.__dict__  # the probe needs no Triton


def _profile(monkeypatch, costs):
    return Profile(metadata={"device": "cpu"}, hardware={}, ceilings={},
                   entries=[fake_entry(monkeypatch, costs, RegimeClock(costs, noise=0.001))])


def test_cells_compare_the_pipelined_median_with_the_probe_and_the_verdict_with_its_direction(bench, monkeypatch):
    # pipelined: eager 10 us, compile 5 us (fuse); isolated 30 us / 20 us
    profile = _profile(monkeypatch, {"eager": (3e-5, 1e-5), "compile": (2e-5, 5e-6)})
    key = profile.entries[0].key()
    cells = bench.compare_cells(profile, {key: {"eager": 0.0105, "compile": 0.0062}})
    eager, comp = cells
    assert (eager.variant, eager.within, eager.isolated_within, eager.direction) == ("eager", True, False, None)
    assert comp.within and comp.pipelined_verdict == "fuse" and comp.probe_speedup == pytest.approx(0.0105 / 0.0062)
    assert comp.direction == "agree"
    s = bench.summary(cells)
    assert (s["cells"], s["within_share"], s["directed_cells"], s["direction_agreement"], s["ok"]) == \
        (2, 1.0, 1, 1.0, True)
    # a probe that says the fusion is slower: the pipelined fuse disagrees; one 40% off is outside +-20%
    cells = bench.compare_cells(profile, {key: {"eager": 0.0105, "compile": 0.014}})
    assert cells[1].direction == "disagree" and not cells[1].within
    assert not bench.summary(cells)["ok"]
    # inside 0.9-1.1 a probe has no direction; entries without probes are left out
    assert bench.compare_cells(profile, {key: {"eager": 0.0105, "compile": 0.010}})[1].direction is None
    assert bench.compare_cells(profile, {}) == []
    assert any("target >= 90%" in line for line in bench.summary_lines(s)) and len(bench.rows(cells)) == 3
