"""The captured graph's overhead (issue 26, item 4): an estimate that cannot be right -- its interval above the whole
forward pass, below minus it, or wider than it, as a stalling host makes it -- is measured again, then called noisy,
and never refuses the plan's groups."""

from __future__ import annotations

import pytest

from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.loader import load_model
from fxfusion.planning.insitu import Overhead, implausible, measure_overhead
from fxfusion.planning.plan import FusionPlan
from fxfusion.profiles.profile import Decision
from tests.helpers import MODELS, TINY_SPEC, OpCountClock


class StallingClock(OpCountClock):
    """OpCountClock whose every ``every``-th sample stalls ``stall_ms`` more (a host descheduled mid-call), for the
    first ``stalls`` samples (None: always)."""

    def __init__(self, every: int = 3, stall_ms: float = 50.0, stalls: int | None = None):
        super().__init__(per_op_us=1.0)
        self.every, self.stall_s, self.stalls, self.n = every, stall_ms * 1e-3, stalls, 0

    def sample(self, fn, inner):
        self.n += 1
        stalled = self.n % self.every == 0 and (self.stalls is None or self.n <= self.stalls)
        return super().sample(fn, inner) + (self.stall_s if stalled else 0.0)


@pytest.fixture(scope="module")
def mlp():
    loaded = load_model(MODELS / "mlp_block.py")
    return loaded.model, loaded.example_inputs, capture(loaded.model, loaded.example_inputs)


def planned(model, inputs, saving_ms: float) -> FusionPlan:
    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "compile", None, "hand")
                 for s in sites if s.legal and s.pattern.startswith("linear")}
    plan = FusionPlan.from_decisions(captured, sites, decisions)
    for g in plan.groups:
        g.predicted_saving_ms = saving_ms
    assert plan.groups
    return plan


def test_a_stalling_clock_gives_a_noisy_overhead_that_refuses_nothing(mlp):
    model, inputs, captured = mlp
    o = measure_overhead(model, captured, inputs, spec=TINY_SPEC, clock=StallingClock())
    assert o.noisy and "measured twice" in o.noisy and o.ci_high_ms > o.eager_ms  # what the clock made of it
    plan = planned(model, inputs, saving_ms=0.001)
    n = len(plan.groups)
    plan.require_saving_over(o)
    assert len(plan.groups) == n and not any(r.why == "below_overhead" for r in plan.refused)
    assert plan.overhead_ms is None  # not charged: the prediction does not carry a figure that cannot be right
    assert any("overhead is not charged, its measurement noisy" in w for w in plan.warnings)


def test_a_stall_in_the_first_measurement_only_is_measured_again(mlp):
    model, inputs, captured = mlp
    o = measure_overhead(model, captured, inputs, spec=TINY_SPEC, clock=StallingClock(stalls=60))
    assert o.noisy is None and implausible(o) is None
    assert abs(o.ms) < o.eager_ms  # the quiet second measurement: the ops are the same, so is their count


@pytest.mark.parametrize("overhead, says", [
    (Overhead(-100.8, -300.0, 220.0, eager_ms=150.0), "above the model's whole forward pass"),  # issue 26's figures
    (Overhead(-50.0, -160.0, 10.0, eager_ms=150.0), "below minus the model's forward pass"),
    (Overhead(0.0, -0.6, 0.6, eager_ms=1.0), "wider than the model's forward pass"),
])
def test_implausible_overheads_say_why_and_refuse_nothing(mlp, overhead, says):
    assert says in implausible(overhead)
    model, inputs, _ = mlp
    plan = planned(model, inputs, saving_ms=0.001)
    plan.require_saving_over(overhead)
    assert plan.groups and plan.overhead_ms is None


def test_a_plausible_overhead_still_refuses_what_it_covers(mlp):
    model, inputs, _ = mlp
    plan = planned(model, inputs, saving_ms=0.001)
    plan.require_saving_over(Overhead(0.05, 0.02, 0.08, eager_ms=1.0))
    assert plan.groups == [] and {r.why for r in plan.refused} >= {"below_overhead"} and plan.overhead_ms == 0.05
