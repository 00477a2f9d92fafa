"""End-to-end verification: outputs against float64, a wrong rewrite caught, times and the prediction error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from rich.console import Console

from fxfusion.planning.candidates import CandidateSet
from fxfusion.reports.verification import prediction_lines
from fxfusion.graph.capture import capture
from fxfusion.graph.loader import load_model
from fxfusion.fusions.match import find_sites
from fxfusion.planning.plan import FusionPlan
from fxfusion.profiles.profile import Decision
from fxfusion.graph.edit import NotApplicable
from fxfusion.measure.timing import TimingSpec
from fxfusion.planning.verify import verify_plan
from fxfusion.reports.verification import render_verification
from tests.helpers import TINY_SPEC, replace_rewrite

MODELS = Path(__file__).resolve().parent.parent / "models"
# float32 outputs: within 1e-4 (relative L2) of the float64 reference, as fxfusion.measure.correctness sets it
FLOAT32_TOL = 1e-4


def plan_for(model, inputs, variant="bn_folded", saving_ms=None) -> FusionPlan:
    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", variant, None, "hand")
                 for s in sites if s.legal}
    plan = FusionPlan.from_decisions(captured, sites, decisions)
    for g in plan.groups:
        g.predicted_saving_ms = saving_ms
    return plan


def rendered(result) -> str:
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(render_verification(result))
    return out.getvalue()


def test_folded_batchnorm_verifies_against_float64():
    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = plan_for(loaded.model, loaded.example_inputs, saving_ms=0.002)
    r = verify_plan(loaded.model, loaded.example_inputs, plan, spec=TINY_SPEC, candidates=CandidateSet.uncompiled())
    assert r.ok and r.reference == "float64"
    [check] = r.outputs
    assert check.ok and check.dtype == "float32" and check.error < FLOAT32_TOL and check.limit == FLOAT32_TOL
    assert [d["applied"] for d in r.rewrites] == [True, True]
    assert {"eager", "planned", "captured", "compile"} <= set(r.timings)
    assert r.timings["compile"].status == "skipped"
    for name in ("eager", "planned", "captured"):
        t = r.timings[name]
        assert t.status == "ok" and t.median_ms > 0 and len(t.samples_ms) >= 5
    sp = r.timings["planned"].speedup
    assert sp["ci_low"] <= sp["median"] <= sp["ci_high"] and r.planned_verdict in ("fuse", "neutral", "avoid")
    assert r.predicted_saving_ms == pytest.approx(0.004)  # two groups, no overhead measured by this plan
    assert r.measured_saving_ms == pytest.approx(r.timings["eager"].median_ms - r.timings["planned"].median_ms)
    lo, hi = r.measured_saving_ci_ms
    assert lo <= hi
    assert r.prediction_error_pct == pytest.approx(100 * (0.004 - r.measured_saving_ms) / abs(r.measured_saving_ms))
    assert any("did not measure the captured graph's overhead" in w for w in r.warnings)
    data = r.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["ok"] is True and data["outputs"][0]["ok"] is True
    text = rendered(r)
    assert "VERIFIED" in text and "NOT VERIFIED" not in text and "predicted 0.004 ms" in text


def test_a_wrong_rewrite_is_reported_not_verified(monkeypatch):
    """A BatchNorm fold whose bias is off by one: the outputs are wrong, and verification must say so."""
    def forgetful_fold(correct):
        def fold(gm, nodes, group):
            old, new = correct(gm, nodes, group)
            getattr(gm, new.args[2].target).add_(1.0)  # the folded bias buffer
            return old, new
        return fold

    replace_rewrite(monkeypatch, "bn_folded", forgetful_fold)
    loaded = load_model(MODELS / "resnet_bottleneck.py")
    plan = plan_for(loaded.model, loaded.example_inputs)
    r = verify_plan(loaded.model, loaded.example_inputs, plan, spec=TINY_SPEC, candidates=CandidateSet.uncompiled())
    assert not r.ok and "relative error" in r.reason
    assert not r.outputs[0].ok and r.outputs[0].error > 10 * FLOAT32_TOL
    assert "NOT VERIFIED" in rendered(r) and r.to_dict()["ok"] is False


def test_a_plan_that_crashes_is_not_verified(monkeypatch):
    def crashing(gm, nodes, group):
        raise RuntimeError("boom")

    replace_rewrite(monkeypatch, "bn_folded", lambda correct: crashing)
    loaded = load_model(MODELS / "mobilenet_block.py")
    r = verify_plan(loaded.model, loaded.example_inputs, plan_for(loaded.model, loaded.example_inputs),
                    spec=TINY_SPEC, candidates=CandidateSet.uncompiled())
    assert not r.ok and "applying the plan failed: RuntimeError: boom" in r.reason
    assert "NOT VERIFIED" in rendered(r)


def test_groups_the_rules_refuse_are_warned_about(monkeypatch):
    def refusing(gm, nodes, group):
        raise NotApplicable("not today")

    replace_rewrite(monkeypatch, "bn_folded", lambda correct: refusing)
    loaded = load_model(MODELS / "mobilenet_block.py")
    r = verify_plan(loaded.model, loaded.example_inputs, plan_for(loaded.model, loaded.example_inputs, saving_ms=1.0),
                    spec=TINY_SPEC, candidates=CandidateSet.uncompiled())
    assert r.ok and r.predicted_saving_ms == 0.0 and r.prediction_error_pct is None  # nothing applied, nothing claimed
    assert sum("not applied: not today" in w for w in r.warnings) == 2
    # the planned model is the original: not timed as a candidate of its own, and the report says why nothing applied
    assert r.timings["planned"].status == "skipped" and r.timings["planned"].median_ms is None
    assert "planned" not in [row["name"] for row in r.candidates["candidates"] if row["median_ms"] is not None]
    assert "no rewrite was applied" in r.reason and "x the original" not in r.reason
    assert r.nothing_applied.count("not rewritten: not today") == 2
    assert prediction_lines(r.to_dict()) == [r.nothing_applied]


def test_a_plan_refused_below_its_overhead_says_so_where_the_user_looks():
    from fxfusion.planning.insitu import Overhead

    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = plan_for(loaded.model, loaded.example_inputs, saving_ms=0.001)
    plan.require_saving_over(Overhead(0.5, 0.4, 0.6, 10.0, 0.05))  # the captured graph costs more than it saves
    assert plan.groups == []
    r = verify_plan(loaded.model, loaded.example_inputs, plan, spec=TINY_SPEC, candidates=CandidateSet.uncompiled())
    assert r.ok and r.nothing_applied.startswith("nothing applied: 2 site(s) refused below_overhead (the plan's "
                                                 "predicted saving")


class Float32Only(nn.Module):
    """A model that refuses float64: checked against the original model instead."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if x.dtype != torch.float32:
            raise TypeError("float32 inputs only")
        return self.body(x)


def test_model_without_float64_is_checked_against_itself():
    model = Float32Only().eval()
    x = torch.randn(2, 3, 8, 8)
    r = verify_plan(model, (x,), plan_for(model, (x,)), spec=TINY_SPEC, candidates=CandidateSet.uncompiled())
    assert r.ok and r.reference == "original"
    assert any("does not run in float64" in w and "float32 inputs only" in w for w in r.warnings)
    assert r.outputs[0].error < FLOAT32_TOL


@pytest.mark.slow
def test_whole_model_compile_is_timed_and_the_original_untouched():
    """The one test that compiles a whole model (a few seconds with Inductor on 2 cores)."""
    loaded = load_model(MODELS / "mlp_block.py")
    model, inputs = loaded.model, loaded.example_inputs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_for(model, inputs, variant="compile")
    spec = TimingSpec(rounds=5, warmup=1, target_sample_s=0.0005, budget_s=0.5)
    r = verify_plan(model, inputs, plan, spec=spec, candidates=CandidateSet(configs=("default",), captured=False))
    assert r.ok, r.reason
    compiled = r.timings["compile"]
    assert compiled.status == "ok" and compiled.first_call_s > 0 and compiled.median_ms > 0
    assert compiled.speedup["ci_low"] <= compiled.speedup["median"] <= compiled.speedup["ci_high"]
    assert "captured" not in r.timings
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
