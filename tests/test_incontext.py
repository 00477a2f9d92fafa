"""Savings measured with the whole model around each class of rewrites, compiled or eager (fxfusion.planning.incontext)."""

from __future__ import annotations

import pytest
import torch

from fxfusion.graph.loader import load_model
from fxfusion.measure.timing import measure
from fxfusion.planning import incontext
from fxfusion.planning.apply import apply
from fxfusion.planning.candidates import Built, CandidateSet, attach_predictions
from fxfusion.planning.incontext import classes, measure_in_context
from fxfusion.planning.prediction import Context, Source, predict
from fxfusion.planning.rewrite import captured_module
from fxfusion.reports.verification import prediction_cell
from tests.helpers import MODELS, TINY_SPEC, OpCountClock, class_timing, compiled_prediction, region, typical_plan

COMPILED, CHANNELS_LAST, EAGER = Context.COMPILED, Context.COMPILED_CHANNELS_LAST, Context.EAGER
from tests.test_candidates import _choose


def not_compiled(name, module, inputs, device, mode, record_post_grad=False):
    """compile_model without Inductor: the module as it is, so a deterministic clock sees the rewrites' ops."""
    return Built(name, lambda: module(*inputs), setup_s=0.0)


def _not_compiled(monkeypatch):
    monkeypatch.setattr(incontext, "compile_model", not_compiled)


def test_classes_are_one_pattern_and_variant_largest_region_saving_first():
    plan = typical_plan("resnet_basic")  # conv2d_bn_relu g0.s0; conv2d_bn g0.s1, g0.s2; all bn_folded
    plan.groups[0].regions[COMPILED] = region(0.01)
    plan.groups[1].regions[COMPILED] = region(0.02)
    assert [[g.id for g in c] for c in classes(plan.groups)] == [["g0.s1", "g0.s2"], ["g0.s0"]]


def test_each_class_carries_its_whole_model_saving_and_their_sum_predicts_the_plan(monkeypatch):
    _not_compiled(monkeypatch)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    said = measure_in_context(plan, loaded.model, loaded.example_inputs, COMPILED, "cpu", spec=TINY_SPEC,
                              clock=OpCountClock())
    assert said == []
    by = {g.id: g.classes[COMPILED] for g in plan.groups}
    assert by["g0.s1"] is by["g0.s2"] and by["g0.s1"].groups == ("g0.s1", "g0.s2") and by["g0.s1"].share == 2
    assert all(c.saving_ms > 0 and c.ci_low_ms > 0 and c.faster for c in by.values())  # the BN ops are gone
    p = plan.predict(COMPILED)
    predicted = p.saving_ms
    assert predicted == pytest.approx(by["g0.s0"].saving_ms + by["g0.s1"].saving_ms)  # each class once, in shares
    assert p.basis == "whole model" and p.fraction == pytest.approx(predicted / by["g0.s0"].control_ms)
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
    first.regions[COMPILED] = region(0.005, ci_high_ms=0.01)  # its region alone looked faster ...
    first.classes[COMPILED] = class_timing([first], -0.004, ci_low_ms=-0.006)  # ... the whole model is slower
    second, rest = rest[0], rest[1:]
    second.classes[COMPILED] = class_timing([second], 0.001, ci_low_ms=-0.001)  # within the noise: not applied
    for g in rest:
        g.regions[COMPILED] = region(-0.02, ci_high_ms=-0.01)  # the region alone looked slower ...
        g.classes[COMPILED] = class_timing([g], 0.003, ci_low_ms=0.001)  # ... faster in the model
    assert [g.id for g in plan.groups_for(COMPILED)] == [g.id for g in rest]


def test_a_class_the_budget_left_out_keeps_its_regions_and_the_prediction_says_mixed(monkeypatch):
    _not_compiled(monkeypatch)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    for g in plan.groups:
        g.regions[COMPILED] = region(0.001, ci_high_ms=0.002)
    said = measure_in_context(plan, loaded.model, loaded.example_inputs, COMPILED, "cpu", spec=TINY_SPEC,
                              clock=OpCountClock(), budget_s=1e-9)  # spent once the control is built
    assert len(said) == 2 and all("the budget (0 s) was spent" in w and "\n" not in w for w in said)
    assert all(not g.classes for g in plan.groups)
    p = predict(plan.groups, COMPILED)
    assert p.saving_ms == pytest.approx(0.003) and p.basis == "regions" and p.fraction is None
    plan.groups[0].classes[COMPILED] = class_timing([plan.groups[0]], 0.01, fraction=0.02)
    p = predict(plan.groups, COMPILED)
    assert p.saving_ms == pytest.approx(0.012) and p.basis == "mixed" and p.fraction is None  # no fraction
    del plan.groups[1].regions[COMPILED]  # a group with neither: no prediction
    assert predict(plan.groups, COMPILED) is None


def test_a_whole_model_prediction_is_a_fraction_of_the_base_as_the_candidates_run_timed_it():
    c = _choose({"eager": 1.0, "compile": 0.6, "captured+compile": 0.55, "planned+compile": 0.5})
    base = {r["name"]: r for r in c.candidates}["captured+compile"]["median_ms"]
    attach_predictions(c, {"planned+compile": compiled_prediction(0.08, (Source.CLASS,), 0.1, 0.55)})
    p = {r["name"]: r for r in c.candidates}["planned+compile"]["prediction"]
    assert p["basis"] == "whole model" and p["predicted_fraction"] == 0.1
    assert p["predicted_saving_ms"] == pytest.approx(0.1 * base)  # not the 0.08 ms of the slower or faster run
    assert p["measured_fraction"] == pytest.approx(p["measured_saving_ms"] / base)
    assert prediction_cell(p).endswith(", measured with the whole model compiled")
    attach_predictions(c, {"planned+compile": compiled_prediction(0.08, (Source.CLASS, Source.REGION))})
    p = {r["name"]: r for r in c.candidates}["planned+compile"]["prediction"]
    assert p["predicted_saving_ms"] == 0.08 and p["predicted_fraction"] is None
    assert prediction_cell(p).endswith(", partly from regions compiled alone")


@pytest.mark.slow
def test_a_class_is_measured_with_the_whole_model_compiled_by_inductor():
    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = typical_plan("mobilenet_block")  # two conv2d_bn_relu groups, bn_folded: one class
    said = measure_in_context(plan, loaded.model, loaded.example_inputs, COMPILED, "cpu", spec=TINY_SPEC)
    assert said == []
    [c] = {id(g.classes[COMPILED]): g.classes[COMPILED] for g in plan.groups}.values()
    assert c.groups == tuple(g.id for g in plan.groups) and c.setup_s > 0
    assert c.control_ms > 0 and c.applied_ms > 0 and c.ci_low_ms <= c.saving_ms


def test_in_channels_last_the_module_is_timed_too_and_what_capturing_saves_is_in_that_prediction(monkeypatch):
    _not_compiled(monkeypatch)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    said = measure_in_context(plan, loaded.model, loaded.example_inputs, CHANNELS_LAST, "cpu", spec=TINY_SPEC,
                              clock=OpCountClock())
    assert said == [] and all(set(g.classes) == {CHANNELS_LAST} for g in plan.groups)
    c = plan.groups[0].classes[CHANNELS_LAST].capture
    assert c.ci_low_ms <= c.ms <= c.ci_high_ms
    shares = sum({id(g.classes[CHANNELS_LAST]): g.classes[CHANNELS_LAST].saving_ms for g in plan.groups}.values())
    p = plan.predict(CHANNELS_LAST)
    assert p.basis == "whole model" and p.saving_ms == pytest.approx(shares + c.ms)
    f = sum({id(t): t.fraction for t in (g.classes[CHANNELS_LAST] for g in plan.groups)}.values())  # of the control
    assert p.fraction == pytest.approx((f + c.fraction) / (1 + c.fraction))  # the base is the module
    # the op-count clock gives every round the same time: the fastest rounds' fractions are the paired ones
    assert p.floor_fraction == pytest.approx(p.fraction) and c.floor_fraction == pytest.approx(c.fraction)
    assert predict(plan.groups, COMPILED) is None  # nothing measured in the model's own layout


def test_the_planned_candidate_is_predicted_from_each_class_applied_alone_with_the_rest_eager():
    from fxfusion.planning.verify import verify_plan

    loaded = load_model(MODELS / "resnet_basic.py")
    model, inputs = loaded.model, tuple(loaded.example_inputs)
    plan = typical_plan("resnet_basic")
    said = measure_in_context(plan, model, inputs, EAGER, "cpu", spec=TINY_SPEC, clock=OpCountClock())
    assert said == [] and all(set(g.classes) == {EAGER} for g in plan.groups)
    c = plan.groups[1].classes[EAGER]
    assert c.groups == ("g0.s1", "g0.s2") and c.setup_s > 0  # its first call: nothing compiled
    assert c.capture.ci_low_ms <= c.capture.ms <= c.capture.ci_high_ms
    p = plan.predict(EAGER)
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
    v = verify_plan(model, inputs, plan, spec=TINY_SPEC, clock=OpCountClock(), candidates=CandidateSet.uncompiled())
    assert v.prediction == "in_context" and v.prediction_comparable is True
    assert v.predicted_fraction == pytest.approx(p.fraction) and v.fraction_error_pct == pytest.approx(0, abs=1e-6)
    assert v.predicted_saving_ms == pytest.approx(v.measured_saving_ms) and v.prediction_error_pct == pytest.approx(
        0, abs=1e-6)
    assert v.regions_predicted_saving_ms == pytest.approx(0.003)
    row = {r["name"]: r for r in v.candidates["candidates"]}["planned"]["prediction"]
    assert row["basis"] == "whole model" and row["predicted_fraction"] == pytest.approx(p.fraction)
    assert ", measured with the whole model run eagerly; fastest rounds: 50.0% / 50.0%" in prediction_cell(row)


def test_a_context_builds_nothing_that_would_end_past_its_budget(monkeypatch):
    """tv_resnet50 32x224 on an H100 (2026-12-07 22:02 UTC): the compiled contexts, 12 s of budget between them,
    compiled a control and classes of 7 s each and took 31 s.  A compile of 30 s seen before: a 40 s context cannot
    hold the control and one class, so it compiles nothing; each build seen is kept for the next stage's estimate."""
    built = []

    def slow(name, module, inputs, device, mode, record_post_grad=False):
        built.append(name)
        return Built(name, lambda: module(*inputs), setup_s=30.0)  # as if each compile took 30 s

    monkeypatch.setattr(incontext, "compile_model", slow)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    builds = [30.0]
    said = measure_in_context(plan, loaded.model, loaded.example_inputs, COMPILED, "cpu", spec=TINY_SPEC,
                              clock=OpCountClock(), budget_s=40.0, builds=builds)
    assert built == [] and builds == [30.0] and len(said) == 1
    assert "a compile of the model took 30 s" in said[0] and all(not g.classes for g in plan.groups)
    # nothing seen yet: the control is built (30 s), then no class fits a 31 s budget (30 s more and the floor)
    builds = []
    said = measure_in_context(plan, loaded.model, loaded.example_inputs, COMPILED, "cpu", spec=TINY_SPEC,
                              clock=OpCountClock(), budget_s=31.0, builds=builds)
    assert built == ["control"] and builds == [30.0]
    assert len(said) == 2 and all("would be spent before it was built and timed" in w for w in said)
    # the control: a budget that holds them builds every class
    said = measure_in_context(plan, loaded.model, loaded.example_inputs, COMPILED, "cpu", spec=TINY_SPEC,
                              clock=OpCountClock(), budget_s=1000.0, builds=builds)
    assert said == [] and len(built) == 1 + 1 + len(classes(plan.groups)) and len(builds) == len(built)
    assert all(COMPILED in g.classes for g in plan.groups)


def test_without_every_applied_class_measured_eager_the_planned_prediction_is_the_regions():
    from fxfusion.planning.verify import verify_plan

    loaded = load_model(MODELS / "resnet_basic.py")
    model, inputs = loaded.model, tuple(loaded.example_inputs)
    plan = typical_plan("resnet_basic")
    said = measure_in_context(plan, model, inputs, EAGER, "cpu", spec=TINY_SPEC, clock=OpCountClock(),
                              budget_s=1e-9)  # spent once the control is built: each class says so
    assert len(said) == 2 and all("the budget (0 s) was spent; the planned prediction" in w for w in said)
    plan.groups[0].classes[EAGER] = class_timing([plan.groups[0]], 1.0, fraction=0.5)  # one class of two: not used
    for g in plan.groups:
        g.predicted_saving_ms = 0.001
    v = verify_plan(model, inputs, plan, spec=TINY_SPEC, clock=OpCountClock(), candidates=CandidateSet.uncompiled())
    assert v.prediction == plan.prediction and v.regions_predicted_saving_ms is None
    assert v.predicted_saving_ms == pytest.approx(0.003)


def _regions_not_compiled(monkeypatch):
    from fxfusion.planning import insitu

    monkeypatch.setattr(insitu, "_compiled", lambda region, args: region)
    monkeypatch.setattr(insitu, "model_clock", lambda device: OpCountClock())


def _measure_compiled(loaded, plan, optional: tuple, classes: bool = True, compile_fn=not_compiled):
    """The pipeline's compiled-context stage on ``plan``, asked for on the CPU with the ``optional`` candidates: the
    op-count clock and ``compile_fn`` injected through the Planner."""
    from fxfusion.planning.analyze import Analysis
    from fxfusion.planning.pipeline import Planner, Run, Specs, measure_compiled

    planner = Planner(clock=OpCountClock(), specs=Specs(context=TINY_SPEC, regions=TINY_SPEC), budget_s=60.0,
                      candidates=CandidateSet(optional=optional), compiled_regime=True, compiled_classes=classes,
                      compile=compile_fn)
    run = Run(loaded.model, loaded.example_inputs, Analysis(plan.captured, plan.sites, [], {}, [], 0.0), plan)
    measure_compiled(run, planner)


def _compiled_regime(monkeypatch, optional: tuple, classes: bool = True):
    """The compiled regime on resnet_basic's typical plan, nothing compiled, the op-count clock: the plan."""
    _regions_not_compiled(monkeypatch)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    _measure_compiled(loaded, plan, optional, classes)
    return plan


@pytest.mark.parametrize("context", [True, False])
def test_the_compiled_regime_measures_classes_first_and_regions_only_where_they_were_not(monkeypatch, context):
    plan = _compiled_regime(monkeypatch, ("planned+compile", "planned+channels_last+compile"), classes=context)
    for g in plan.groups:
        if context:  # both layouts measured in context: no region compiled on its own
            assert set(g.classes) == {COMPILED, CHANNELS_LAST} and not g.regions
        else:
            assert not g.classes and set(g.regions) == {COMPILED, CHANNELS_LAST}
    assert plan.predict(COMPILED).basis == ("whole model" if context else "regions")


def test_the_channels_last_candidate_alone_measures_only_its_own_layout(monkeypatch):
    plan = _compiled_regime(monkeypatch, ("planned+channels_last+compile",))
    for g in plan.groups:
        assert set(g.classes) == {CHANNELS_LAST} and not g.regions
    assert plan.predict(CHANNELS_LAST).basis == "whole model"
    assert predict(plan.groups, COMPILED) is None  # nothing measured in the model's layout


def test_without_a_planned_compile_candidate_the_compiled_regime_measures_nothing(monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("nothing should be compiled")

    monkeypatch.setattr(incontext, "compile_model", no_compile)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    _measure_compiled(loaded, plan, ("channels_last+compile",), compile_fn=no_compile)
    assert all(not g.classes and not g.regions for g in plan.groups)


def test_each_layout_leaves_out_what_is_slower_in_that_layout():
    from fxfusion.planning.apply import candidate_module
    from fxfusion.planning.configs import Spec
    from fxfusion.planning.search import _left_out

    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    g0, g1, g2 = plan.groups
    g0.classes = {COMPILED: class_timing([g0], 0.01, ci_low_ms=0.01),
                  CHANNELS_LAST: class_timing([g0], 0.01, ci_low_ms=-0.01)}
    g1.regions[CHANNELS_LAST] = region(-0.03, ci_high_ms=-0.02)  # no class measured: its region decides
    assert plan.groups_for(COMPILED) == plan.groups
    assert plan.groups_for(CHANNELS_LAST) == [g2]
    planned, said = object(), []
    kept = plan.groups_for(COMPILED)
    spec = Spec.parse("planned+compile")
    module = candidate_module(spec, loaded.model, plan, planned)
    _left_out(plan, spec, said)
    assert kept == plan.groups and module is planned and said == []
    kept = plan.groups_for(CHANNELS_LAST)
    spec = Spec.parse("planned+channels_last+compile")
    module = candidate_module(spec, loaded.model, plan, planned)  # the rewritten graph, in channels-last
    _left_out(plan, spec, said)
    assert kept == [g2] and module is not planned
    assert said == [f"planned+channels_last+compile leaves out {g0.id}, {g1.id}: compiled in channels-last, the model "
                    "is not faster with those rewrites beyond the noise (or, where not measured so, their regions are "
                    "slower)"]
    assert [r.site_id for r in module.fxfusion_rewrites if r.applied] == [g2.id]  # only the group kept


def test_a_spent_budget_compiles_nothing_and_says_so(monkeypatch):
    """tv_resnet50 (tiny, this CPU, --apply-budget-s 60): the compiled contexts started with none of the measuring
    share left still compiled the control and the channels-last module, 41 s of a 60 s budget."""
    built = []
    monkeypatch.setattr(incontext, "compile_model", lambda name, *a, **k: built.append(name) or not_compiled(name, *a, **k))
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    for context in (COMPILED, CHANNELS_LAST):
        said = measure_in_context(plan, loaded.model, loaded.example_inputs, context, "cpu", spec=TINY_SPEC,
                                  clock=OpCountClock(), budget_s=0.0)
        assert len(said) == 1 and "measuring share of the budget was spent" in said[0]
    assert built == [] and all(not g.classes for g in plan.groups)
    measure_in_context(plan, loaded.model, loaded.example_inputs, COMPILED, "cpu", spec=TINY_SPEC,
                       clock=OpCountClock(), budget_s=60.0)
    assert built and all(COMPILED in g.classes for g in plan.groups)  # the control: the same call with a budget builds
