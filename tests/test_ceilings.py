"""Ceilings keep to their budget whatever a call costs here, and a dtype with no fast path is said early.

A fake clock prices each call (a matmul at a given GFLOP/s, a copy at a given GB/s) and advances its own time, so a
17-second bfloat16 matmul costs nothing to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fxfusion.measure import ceilings
from fxfusion.measure.ceilings import CEILING_SPEC, bounded_median, measure_ceilings, slow_dtypes
from fxfusion.measure.hardware import resolve


@dataclass
class Call:
    seconds: float
    label: str = ""

    def __call__(self):
        return None


class PricedClock:
    """Each sample costs ``inner`` times the call's price, on a clock that only this test advances."""

    device = "cpu"

    def __init__(self):
        self.t = 0.0
        self.spent: dict[str, float] = {}

    def sample(self, fn: Call, inner: int) -> float:
        self.t += fn.seconds * inner
        self.spent[fn.label] = self.spent.get(fn.label, 0.0) + fn.seconds * inner
        return fn.seconds

    def now(self) -> float:
        return self.t


@pytest.mark.parametrize("seconds", [1e-4, 0.05, 0.9, 2.5, 7.0])
def test_one_ceiling_spends_at_most_its_budget_and_two_calls(seconds):
    clock = PricedClock()
    median, samples = bounded_median(Call(seconds), clock, CEILING_SPEC)
    assert median == pytest.approx(seconds) and samples >= 1
    assert clock.t <= CEILING_SPEC.budget_s + 2 * seconds
    if seconds * CEILING_SPEC.rounds * 2 < CEILING_SPEC.budget_s:  # cheap: every round is taken
        assert samples == CEILING_SPEC.rounds


def _priced(monkeypatch, gflops: dict[str, float], gbs: float = 50.0) -> PricedClock:
    monkeypatch.setattr(ceilings, "_matmul_fn",
                        lambda n, dtype, device: Call(2 * n**3 / (gflops[str(dtype)[6:]] * 1e9),
                                                      f"{str(dtype)[6:]} n={n}"))
    monkeypatch.setattr(ceilings, "_copy_fn", lambda nbytes, device: Call(2 * nbytes / (gbs * 1e9), f"copy {nbytes}"))
    return PricedClock()


def test_a_matmul_whose_call_would_overrun_the_budget_is_not_started_and_said(monkeypatch):
    """bfloat16 at 1 GFLOP/s (a CPU with no bfloat16 path): n=1024 takes 2.1 s a call, so n=2048 (17 s) is skipped."""
    clock = _priced(monkeypatch, {"float32": 200.0, "bfloat16": 1.0})
    notes: list[str] = []
    result = measure_ceilings(resolve("generic-cpu"), "cpu", [torch.float32, torch.bfloat16], "full", clock,
                              tf32=False, notes=notes)
    measured = [(m["dtype"], m["n"]) for m in result["matmul"]]
    assert measured == [("float32", 256), ("float32", 1024), ("float32", 2048), ("bfloat16", 256),
                        ("bfloat16", 1024)]
    assert notes == ["bfloat16 matmul ceiling: n=2048 not measured, one call would take about 17.2 s here (from "
                     "n=1024), over the 3 s budget"]
    assert "bfloat16 n=2048" not in clock.spent
    for label, spent in clock.spent.items():
        call = 2 * int(label.split("n=")[1]) ** 3 / 1e9 if label.startswith("bfloat16") else 0.0
        assert spent <= CEILING_SPEC.budget_s + 2 * call + 1e-9, label
    assert result["best_gflops"]["bfloat16"] == pytest.approx(1.0)


def test_a_dtype_far_slower_than_float32_is_warned_about(monkeypatch):
    clock = _priced(monkeypatch, {"float32": 200.0, "bfloat16": 1.0})
    (warning,) = slow_dtypes({"float32": 200.0, "bfloat16": 1.0}, "cpu", clock)
    assert warning.startswith("bfloat16 matmul runs at 1 GFLOP/s on this cpu, 200x slower than float32 (200 GFLOP/s)")
    assert slow_dtypes({"float32": 200.0, "bfloat16": 150.0}, "cpu", clock) == []
    # without float32 in the calibration, one small float32 matmul is measured to compare with
    assert len(slow_dtypes({"bfloat16": 1.0}, "cpu", clock)) == 1 and "float32 n=256" in clock.spent


def test_calibrate_says_the_slow_dtype_before_measuring_entries(monkeypatch):
    from fxfusion.calibration import calibrate as cal
    from tests.helpers import TINY_SPEC

    _priced(monkeypatch, {"float32": 200.0, "bfloat16": 1.0})
    monkeypatch.setattr(cal, "clock_for", lambda device: PricedClock())
    heard = []
    monkeypatch.setattr(cal, "measure_entry", lambda *a, **k: heard.append("entry") or (_ for _ in ()).throw(
        KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        cal.calibrate("generic-cpu", patterns="linear_bias", dtypes="float32,bfloat16", quick=True,
                      compile_modes=(), spec=TINY_SPEC, on_note=heard.append)
    assert heard[0].startswith("measuring the ceilings")
    assert heard[1].startswith("warning: bfloat16 matmul runs at 1 GFLOP/s") and heard[2] == "entry"
