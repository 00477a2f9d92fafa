"""Savings measured with the whole model around each class of rewrites, compiled or eager (fxfusion.planning.incontext)."""

from __future__ import annotations

import pytest
import torch

from fxfusion.graph.loader import load_model
from fxfusion.measure.timing import measure
from fxfusion.planning import incontext
from fxfusion.planning.apply import apply
from fxfusion.planning.candidates import Built, CompiledPrediction, attach_predictions
from fxfusion.planning.incontext import (classes, compiled_prediction, measure_in_compiled_context,
                                         measure_in_eager_context)
from fxfusion.planning.rewrite import captured_module
from fxfusion.reports.verification import prediction_cell
from tests.helpers import MODELS, TINY_SPEC, OpCountClock, typical_plan
from tests.test_candidates import _choose


def _not_compiled(monkeypatch):
    """compile_model without Inductor: the module as it is, so a deterministic clock sees the rewrites' ops."""
    def fake(name, module, inputs, device, mode, record_post_grad=False):
        return Built(name, lambda: module(*inputs), setup_s=0.0)

    monkeypatch.setattr(incontext, "compile_model", fake)


def test_classes_are_one_pattern_and_variant_largest_region_saving_first():
    plan = typical_plan("resnet_basic")  # conv2d_bn_relu g0.s0; conv2d_bn g0.s1, g0.s2; all bn_folded
    plan.groups[0].in_compiled_model = {"saving_ms": 0.01}
    plan.groups[1].in_compiled_model = {"saving_ms": 0.02}
    assert [[g.id for g in c] for c in classes(plan.groups)] == [["g0.s1", "g0.s2"], ["g0.s0"]]


def test_each_class_carries_its_whole_model_saving_and_their_sum_predicts_the_plan(monkeypatch):
    _not_compiled(monkeypatch)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    said = measure_in_compiled_context(plan, loaded.model, loaded.example_inputs, "cpu", spec=TINY_SPEC,
                                       clock=OpCountClock())
    assert said == []
    by = {g.id: g.in_context["model"] for g in plan.groups}
    assert by["g0.s1"] is by["g0.s2"] and by["g0.s1"]["class_groups"] == ["g0.s1", "g0.s2"]
    assert by["g0.s1"]["saving_ms"] * 2 == pytest.approx(by["g0.s1"]["class_saving_ms"])
    assert all(c["class_saving_ms"] > 0 and c["class_ci_low_ms"] > 0 for c in by.values())  # the BN ops are gone
    p = compiled_prediction(plan.groups)
    predicted = p.saving_ms
    assert p.basis == "whole model" and p.fraction == pytest.approx(predicted / by["g0.s0"]["control_ms"])
    # with a clock that counts ops the classes do not interact, and the prediction is the whole plan's saving
    clock, control = OpCountClock(), captured_module(loaded.model, plan.captured)
    planned = apply(loaded.model, plan, candidate="planned")
    with torch.no_grad():
        s = measure({"control": lambda: control(*loaded.example_inputs),
                     "planned": lambda: planned(*loaded.example_inputs)}, clock, TINY_SPEC).seconds
    assert predicted == pytest.approx((min(s["control"]) - min(s["planned"])) * 1e3)


def test_a_class_that_slows_the_compiled_model_is_left_out_and_overrides_its_regions():
    plan = typical_plan("resnet_basic")
    first, rest = plan.groups[0], plan.groups[1:]
    first.in_compiled_model = {"ci_high_ms": 0.01, "saving_ms": 0.005}  # its region alone looked faster ...
    first.in_context = {"model": {"class_ci_low_ms": -0.006, "saving_ms": -0.004}}  # ... the whole model is slower
    second, rest = rest[0], rest[1:]
    second.in_context = {"model": {"class_ci_low_ms": -0.001, "saving_ms": 0.001}}  # within the noise: not applied
    for g in rest:
        g.in_compiled_model = {"ci_high_ms": -0.01, "saving_ms": -0.02}  # the region alone looked slower ...
        g.in_context = {"model": {"class_ci_low_ms": 0.001, "saving_ms": 0.003}}  # ... faster in the model
    assert [g.id for g in plan.groups_for_compile()] == [g.id for g in rest]


def test_a_class_the_budget_left_out_keeps_its_regions_and_the_prediction_says_mixed(monkeypatch):
    _not_compiled(monkeypatch)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    for g in plan.groups:
        g.in_compiled_model = {"saving_ms": 0.001, "ci_high_ms": 0.002}
    said = measure_in_compiled_context(plan, loaded.model, loaded.example_inputs, "cpu", spec=TINY_SPEC,
                                       clock=OpCountClock(), budget_s=0.0)
    assert len(said) == 2 and all("the budget (0 s) was spent" in w and "\n" not in w for w in said)
    assert all(g.in_context is None for g in plan.groups)
    assert compiled_prediction(plan.groups) == CompiledPrediction(pytest.approx(0.003), "regions")
    plan.groups[0].in_context = {"model": {"saving_ms": 0.01, "fraction": 0.02}}
    assert compiled_prediction(plan.groups) == CompiledPrediction(pytest.approx(0.012), "mixed")  # no fraction
    plan.groups[1].in_compiled_model = None  # a group with neither: no prediction
    assert compiled_prediction(plan.groups) is None


def test_a_whole_model_prediction_is_a_fraction_of_the_base_as_the_candidates_run_timed_it():
    c = _choose({"eager": 1.0, "compile": 0.6, "captured+compile": 0.55, "planned+compile": 0.5})
    base = {r["name"]: r for r in c.candidates}["captured+compile"]["median_ms"]
    attach_predictions(c, planned_ms=None, planned_compile_ms=CompiledPrediction(0.08, "whole model", 0.1))
    p = {r["name"]: r for r in c.candidates}["planned+compile"]["prediction"]
    assert p["basis"] == "whole model" and p["predicted_fraction"] == 0.1
    assert p["predicted_saving_ms"] == pytest.approx(0.1 * base)  # not the 0.08 ms of the slower or faster run
    assert p["measured_fraction"] == pytest.approx(p["measured_saving_ms"] / base)
    assert prediction_cell(p).endswith(", measured with the whole model compiled")
    attach_predictions(c, planned_ms=None, planned_compile_ms=CompiledPrediction(0.08, "mixed"))
    p = {r["name"]: r for r in c.candidates}["planned+compile"]["prediction"]
    assert p["predicted_saving_ms"] == 0.08 and p["predicted_fraction"] is None
    assert prediction_cell(p).endswith(", partly from regions compiled alone")


def test_a_class_is_measured_with_the_whole_model_compiled_by_inductor():
    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = typical_plan("mobilenet_block")  # two conv2d_bn_relu groups, bn_folded: one class
    said = measure_in_compiled_context(plan, loaded.model, loaded.example_inputs, "cpu", spec=TINY_SPEC)
    assert said == []
    [c] = {id(g.in_context["model"]): g.in_context["model"] for g in plan.groups}.values()
    assert c["class_groups"] == [g.id for g in plan.groups] and c["compile_s"] > 0
    assert c["control_ms"] > 0 and c["applied_ms"] > 0 and c["class_ci_low_ms"] <= c["class_saving_ms"]


def test_in_channels_last_the_module_is_timed_too_and_what_capturing_saves_is_in_that_prediction(monkeypatch):
    _not_compiled(monkeypatch)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    said = measure_in_compiled_context(plan, loaded.model, loaded.example_inputs, "cpu", spec=TINY_SPEC,
                                       clock=OpCountClock(), channels_last=True)
    assert said == [] and all(set(g.in_context) == {"channels_last"} for g in plan.groups)
    c = plan.groups[0].in_context["channels_last"]
    assert c["capture_ci_low_ms"] <= c["capture_ms"] <= c["capture_ci_high_ms"]
    shares = sum({id(g.in_context["channels_last"]): g.in_context["channels_last"]["class_saving_ms"]
                  for g in plan.groups}.values())
    p = compiled_prediction(plan.groups, "channels_last")
    assert p.basis == "whole model" and p.saving_ms == pytest.approx(shares + c["capture_ms"])
    f = sum(g.in_context["channels_last"]["fraction"] for g in plan.groups)  # of the control; the base is the module
    assert p.fraction == pytest.approx((f + c["capture_fraction"]) / (1 + c["capture_fraction"]))
    # the op-count clock gives every round the same time: the fastest rounds' fractions are the paired ones
    assert p.floor_fraction == pytest.approx(p.fraction) and c["capture_floor_fraction"] == pytest.approx(
        c["capture_fraction"])
    assert compiled_prediction(plan.groups) is None  # nothing measured in the model's own layout


def test_the_planned_candidate_is_predicted_from_each_class_applied_alone_with_the_rest_eager():
    from fxfusion.planning.verify import verify_plan

    loaded = load_model(MODELS / "resnet_basic.py")
    model, inputs = loaded.model, tuple(loaded.example_inputs)
    plan = typical_plan("resnet_basic")
    said = measure_in_eager_context(plan, model, inputs, "cpu", spec=TINY_SPEC, clock=OpCountClock())
    assert said == [] and all(set(g.in_context) == {"eager"} for g in plan.groups)
    c = plan.groups[1].in_context["eager"]
    assert c["class_groups"] == ["g0.s1", "g0.s2"] and c["first_call_s"] > 0 and "compile_s" not in c
    assert c["capture_ci_low_ms"] <= c["capture_ms"] <= c["capture_ci_high_ms"]
    p = compiled_prediction(plan.groups, "eager")
    # with a clock that counts ops the classes do not interact: shares + capture = module - planned, exactly
    planned = apply(model, plan, candidate="planned")
    with torch.no_grad():
        s = measure({"module": lambda: model(*inputs), "planned": lambda: planned(*inputs)}, OpCountClock(),
                    TINY_SPEC).seconds
    assert p.basis == "whole model" and p.saving_ms == pytest.approx((min(s["module"]) - min(s["planned"])) * 1e3)
    assert p.fraction == pytest.approx(p.saving_ms / (min(s["module"]) * 1e3))
    # verify_plan predicts the planned candidate from it, and keeps the regions' prediction beside it
    for g in plan.groups:
        g.predicted_saving_ms = 0.001
    v = verify_plan(model, inputs, plan, spec=TINY_SPEC, clock=OpCountClock(), include_compile=False)
    assert v.prediction == "in_context" and v.prediction_comparable is True
    assert v.predicted_fraction == pytest.approx(p.fraction) and v.fraction_error_pct == pytest.approx(0, abs=1e-6)
    assert v.predicted_saving_ms == pytest.approx(v.measured_saving_ms) and v.prediction_error_pct == pytest.approx(
        0, abs=1e-6)
    assert v.regions_predicted_saving_ms == pytest.approx(0.003)
    row = {r["name"]: r for r in v.candidates["candidates"]}["planned"]["prediction"]
    assert row["basis"] == "whole model" and row["predicted_fraction"] == pytest.approx(p.fraction)
    assert ", measured with the whole model run eagerly; fastest rounds: 50.0% / 50.0%" in prediction_cell(row)


def test_without_every_applied_class_measured_eager_the_planned_prediction_is_the_regions():
    from fxfusion.planning.verify import verify_plan

    loaded = load_model(MODELS / "resnet_basic.py")
    model, inputs = loaded.model, tuple(loaded.example_inputs)
    plan = typical_plan("resnet_basic")
    said = measure_in_eager_context(plan, model, inputs, "cpu", spec=TINY_SPEC, clock=OpCountClock(), budget_s=0.0)
    assert len(said) == 2 and all("the budget (0 s) was spent; the planned prediction" in w for w in said)
    plan.groups[0].in_context = {"eager": {"saving_ms": 1.0, "fraction": 0.5}}  # one class of two: not used
    for g in plan.groups:
        g.predicted_saving_ms = 0.001
    v = verify_plan(model, inputs, plan, spec=TINY_SPEC, clock=OpCountClock(), include_compile=False)
    assert v.prediction == plan.prediction and v.regions_predicted_saving_ms is None
    assert v.predicted_saving_ms == pytest.approx(0.003)


def _regions_not_compiled(monkeypatch):
    from fxfusion.planning import insitu

    monkeypatch.setattr(insitu, "_compiled", lambda region, args: region)
    monkeypatch.setattr(insitu, "model_clock", lambda device: OpCountClock())


def _compiled_regime(monkeypatch, extra: tuple, context: bool = True):
    """compiled_regime_timings on resnet_basic's typical plan, nothing compiled, the op-count clock: the plan."""
    from fxfusion.planning.pipeline import compiled_regime_timings

    _not_compiled(monkeypatch)
    _regions_not_compiled(monkeypatch)
    monkeypatch.setattr(incontext, "model_clock", lambda device: OpCountClock())
    monkeypatch.setattr(incontext, "CONTEXT_SPEC", TINY_SPEC)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    compiled_regime_timings(plan, loaded.model, loaded.example_inputs, "cpu", extra, budget_s=60.0, context=context)
    return plan


@pytest.mark.parametrize("context", [True, False])
def test_the_compiled_regime_measures_classes_first_and_regions_only_where_they_were_not(monkeypatch, context):
    plan = _compiled_regime(monkeypatch, ("planned+compile", "planned+channels_last+compile"), context)
    for g in plan.groups:
        if context:  # both layouts measured in context: no region compiled on its own
            assert set(g.in_context) == {"model", "channels_last"}
            assert g.in_compiled_model is None and g.in_compiled_channels_last is None
        else:
            assert g.in_context is None and g.in_compiled_model and g.in_compiled_channels_last
    assert compiled_prediction(plan.groups).basis == ("whole model" if context else "regions")


def test_the_channels_last_candidate_alone_measures_only_its_own_layout(monkeypatch):
    plan = _compiled_regime(monkeypatch, ("planned+channels_last+compile",))
    for g in plan.groups:
        assert set(g.in_context) == {"channels_last"} and g.in_compiled_model is None
    assert compiled_prediction(plan.groups, "channels_last").basis == "whole model"
    assert compiled_prediction(plan.groups) is None  # nothing measured in the model's layout


def test_without_a_planned_compile_candidate_the_compiled_regime_measures_nothing(monkeypatch):
    from fxfusion.planning.pipeline import compiled_regime_timings

    def no_compile(*a, **k):
        raise AssertionError("nothing should be compiled")

    monkeypatch.setattr(incontext, "compile_model", no_compile)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    compiled_regime_timings(plan, loaded.model, loaded.example_inputs, "cpu", ("channels_last+compile",), 60.0)
    assert all(g.in_context is None and g.in_compiled_model is None for g in plan.groups)


def test_each_layout_leaves_out_what_is_slower_in_that_layout():
    from fxfusion.planning.verify import _kept, _planned_with

    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    g0, g1, g2 = plan.groups
    g0.in_context = {"model": {"class_ci_low_ms": 0.01}, "channels_last": {"class_ci_low_ms": -0.01}}
    g1.in_compiled_channels_last = {"ci_high_ms": -0.02, "saving_ms": -0.03}  # no class measured: its region decides
    assert plan.groups_for_compile() == plan.groups
    assert plan.groups_for_compile("channels_last") == [g2]
    planned, said = object(), []
    kept = _kept(plan, "model")
    module = _planned_with(loaded.model, plan, planned, kept, "planned+compile", said)
    assert kept == plan.groups and module is planned and said == []
    kept = _kept(plan, "channels_last")
    module = _planned_with(loaded.model, plan, planned, kept, "planned+channels_last+compile", said)
    assert kept == [g2] and module is not planned
    assert said == [f"planned+channels_last+compile leaves out {g0.id}, {g1.id}: compiled in channels-last, the model "
                    "is not faster with those rewrites beyond the noise (or, where not measured so, their regions are "
                    "slower)"]
    assert [r.site_id for r in module.fxfusion_rewrites if r.applied] == [g2.id]  # only the group kept
