"""Candidates: which model is handed back, and why -- the choice rule on known samples, apply(candidate=...), and one
real end-to-end run with whole-model compile and the plan compiled."""

from __future__ import annotations

import random

import pytest
import torch

import fxfusion
from fxfusion.errors import FxFusionError
from fxfusion.planning.candidates import (OPTIONAL, CandidateSet, attach_predictions, choose, parse_candidates,
                                         parse_compile_modes)
from fxfusion.planning.prediction import Capture, Context, RegionTiming, Source
from fxfusion.planning.verify import Timing, verify_plan
from fxfusion.reports.verification import UNPREDICTED, prediction_cell
from tests.helpers import MODELS, TINY_SPEC, class_timing, compiled_prediction, region, typical_plan


def _timing(name: str, ms: float, spread: float = 0.01, n: int = 20, seed: int = 0) -> Timing:
    rng = random.Random(seed)
    return Timing(name, "ok", median_ms=ms, samples_ms=[ms * (1 + rng.uniform(-spread, spread)) for _ in range(n)])


def REGIONS(ms: float):
    """A compiled candidate's prediction from regions compiled alone (prediction.predict's "regions" basis)."""
    return compiled_prediction(ms)


def _choose(medians: dict[str, float], verified: dict[str, bool] | None = None):
    timings = {name: _timing(name, ms, seed=i) for i, (name, ms) in enumerate(medians.items())}
    return choose(timings, verified or {n: True for n in medians}, {})


def test_the_fastest_verified_candidate_is_chosen():
    c = _choose({"eager": 1.0, "compile": 0.6, "planned": 0.8, "planned+compile": 0.45})
    assert c.chosen == "planned+compile" and c.best_baseline == "compile"
    assert "of compile" in c.why


def test_nothing_beats_compile_so_compile_is_handed_back():
    c = _choose({"eager": 1.0, "compile": 0.5, "planned": 0.9, "planned+compile": 0.55})
    assert c.chosen == "compile" and "nothing the plan made beats it" in c.why


def test_a_candidate_within_two_percent_gives_way_to_the_simpler_one():
    c = _choose({"eager": 1.0, "compile": 0.600, "planned+compile": 0.595})
    assert c.chosen == "compile"
    # and the choice is never slower than 0.98x the fastest
    assert 0.595 / 0.600 >= 0.98


def test_a_candidate_whose_outputs_do_not_verify_is_never_chosen():
    c = _choose({"eager": 1.0, "compile": 0.6, "planned+compile": 0.3},
                verified={"eager": True, "compile": True, "planned+compile": False})
    assert c.chosen == "compile"
    assert [r["verified"] for r in c.candidates if r["name"] == "planned+compile"] == [False]


def test_compile_modes_are_checked():
    assert parse_compile_modes("default,reduce-overhead") == ("default", "cudagraphs")  # the old name of the mode
    with pytest.raises(FxFusionError, match="unknown --compile-modes fast"):
        parse_compile_modes("default,fast")


def test_apply_hands_back_the_candidate_asked_for():
    plan = typical_plan("resnet_basic")
    from fxfusion.graph.loader import load_model

    loaded = load_model(MODELS / "resnet_basic.py")
    planned = fxfusion.apply(loaded.model, plan, candidate="planned")
    eager = fxfusion.apply(loaded.model, plan, candidate="eager")
    assert planned.fxfusion_candidate == "planned" and any(r.applied for r in planned.fxfusion_rewrites)
    assert eager.fxfusion_candidate == "eager" and eager is not loaded.model
    assert isinstance(eager, type(loaded.model))
    plan.choice = {"chosen": "eager"}
    assert fxfusion.apply(loaded.model, plan).fxfusion_candidate == "eager"  # the measured choice is the default
    with pytest.raises(FxFusionError, match="unknown candidate 'fastest'.*captured\\+compile"):
        fxfusion.apply(loaded.model, plan, candidate="fastest")
    control = fxfusion.apply(loaded.model, plan, candidate="captured+compile")  # compiled lazily: nothing runs here
    assert control.fxfusion_candidate == "captured+compile" and control.fxfusion_rewrites == []
    nhwc = fxfusion.apply(loaded.model, plan, candidate="channels_last+compile")
    assert nhwc.fxfusion_candidate == "channels_last+compile"
    both = fxfusion.apply(loaded.model, plan, candidate="planned+channels_last+compile")
    assert both.fxfusion_candidate == "planned+channels_last+compile" and all(r.applied for r in both.fxfusion_rewrites)
    with torch.no_grad():
        torch.testing.assert_close(both(*loaded.example_inputs), loaded.model(*loaded.example_inputs),
                                   rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous() for p in loaded.model.parameters())  # the user's model keeps its layout


def test_the_layout_candidate_converts_a_copy_and_its_inputs():
    from fxfusion.graph.loader import load_model
    from fxfusion.planning.candidates import ChannelsLast, has_conv2d

    loaded = load_model(MODELS / "resnet_basic.py")
    nhwc = ChannelsLast(loaded.model)
    weights = [p for p in nhwc.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert all(p.is_contiguous() for p in loaded.model.parameters())  # the user's model keeps its layout
    with torch.no_grad():
        torch.testing.assert_close(nhwc(*loaded.example_inputs), loaded.model(*loaded.example_inputs))
    assert has_conv2d(loaded.model) and not has_conv2d(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_candidates_are_verified_timed_and_chosen_end_to_end():
    """resnet_basic on the CPU: whole-model compile and the plan compiled, each checked against float64, timed in the
    same interleaved run; the choice is one of them, and Inductor kept the plan's folded convolutions."""
    from fxfusion.graph.loader import load_model

    torch.manual_seed(0)
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    for i, g in enumerate(plan.groups):  # as if timed compiled: planned + compile's prediction is their sum
        g.regions[Context.COMPILED] = region(0.001 * (i + 1), ci_high_ms=0.01 * (i + 1))
    r = verify_plan(loaded.model, loaded.example_inputs, plan, spec=TINY_SPEC,
                    candidates=CandidateSet(configs=("default",)))
    assert r.ok, r.reason
    c = r.candidates
    names = [row["name"] for row in c["candidates"]]
    assert set(names) >= {"eager", "planned", "compile", "captured+compile", "planned+compile",
                          "channels_last+compile", "planned+channels_last+compile"}  # 2-D convs: layout candidates
    rows = {row["name"]: row for row in c["candidates"]}
    assert all(rows[n]["verified"] for n in ("compile", "planned+compile", "captured+compile", "channels_last+compile",
                                             "planned+channels_last+compile"))
    assert rows["planned+channels_last+compile"]["prediction"]["over"] == "channels_last+compile"
    assert rows["compile"]["setup_s"] > 0 and rows["compile"]["inductor"]["frames_ok"] >= 1
    assert c["chosen"] in names and c["why"]
    fastest = min((row for row in c["candidates"] if row["verified"]), key=lambda row: row["median_ms"])
    assert rows[c["chosen"]]["median_ms"] <= fastest["median_ms"] / 0.98
    pc, pl = rows["planned+compile"]["prediction"], rows["planned"]["prediction"]
    # the rewrites' part of planned + compile's gain: over the same graph compiled without them
    assert pc["over"] == "captured+compile" and pc["predicted_saving_ms"] == pytest.approx(
        sum(0.001 * (i + 1) for i in range(len(plan.groups))))
    assert pc["measured_saving_ms"] == pytest.approx(rows["captured+compile"]["median_ms"]
                                                     - rows["planned+compile"]["median_ms"])
    assert pl["over"] == "eager" and pl["predicted_saving_ms"] == pytest.approx(r.predicted_saving_ms)


def test_groups_slower_when_compiled_are_left_out_of_planned_compile():
    plan = typical_plan("resnet_basic")
    first, rest = plan.groups[0], plan.groups[1:]
    first.regions[Context.COMPILED] = region(-0.02, ci_high_ms=-0.01)  # compiled, its region is slower rewritten
    for g in rest:
        g.regions[Context.COMPILED] = region(0.0, ci_high_ms=0.01)  # within the noise: kept
    assert [g.id for g in plan.groups_for(Context.COMPILED)] == [g.id for g in rest]
    assert plan.groups_for(Context.EAGER) == plan.groups  # planned applies every group


@pytest.mark.slow
def test_a_region_is_timed_compiled():
    """The compiled regime on one group of mobilenet_block: both forms of its region through Inductor."""
    from fxfusion.graph.loader import load_model
    from fxfusion.planning.insitu import measure_in_model
    from fxfusion.measure.timing import TimingSpec

    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = typical_plan("mobilenet_block")
    plan.groups = plan.groups[:1]
    found = measure_in_model(plan.groups, plan.captured, loaded.model, loaded.example_inputs, "cpu",
                             spec=TimingSpec(rounds=5, warmup=1, target_sample_s=0.0, max_inner=1, budget_s=5.0),
                             context=Context.COMPILED)
    im = found[plan.groups[0].id]
    assert isinstance(im, RegionTiming) and im.regime == "compiled" and im.captured_ms > 0 and im.rewritten_ms > 0


def test_each_rewritten_candidate_carries_its_prediction_against_its_own_base():
    c = _choose({"eager": 1.0, "compile": 0.6, "planned": 0.8, "planned+compile": 0.5})
    attach_predictions(c, {"planned": compiled_prediction(0.25, context=Context.EAGER)})
    rows = {r["name"]: r for r in c.candidates}
    planned, pc = rows["planned"]["prediction"], rows["planned+compile"]["prediction"]
    measured = rows["eager"]["median_ms"] - rows["planned"]["median_ms"]
    assert planned["over"] == "eager" and planned["error_pct"] == pytest.approx(100 * (0.25 - measured) / measured)
    assert pc["over"] == "compile" and pc["predicted_saving_ms"] is None and pc["error_pct"] is None  # no control
    assert "prediction" not in rows["compile"] and "prediction" not in rows["eager"]
    assert prediction_cell(pc).startswith("- / ") and prediction_cell(pc).endswith("over compile" + UNPREDICTED)
    assert prediction_cell(planned).endswith("%)") and prediction_cell(None) == "-"


def test_the_optional_candidates_are_chosen_by_name():
    assert parse_candidates(None) == parse_candidates("all") == OPTIONAL and parse_candidates("none") == ()
    assert parse_candidates("planned+compile, captured+compile") == ("planned+compile", "captured+compile")
    with pytest.raises(FxFusionError, match="unknown --candidates fastest; choose all, none or from"):
        parse_candidates("planned+compile,fastest")


def test_without_optional_candidates_only_eager_compile_and_planned_are_timed():
    from fxfusion.graph.loader import load_model

    loaded = load_model(MODELS / "resnet_basic.py")
    r = verify_plan(loaded.model, loaded.example_inputs, typical_plan("resnet_basic"), spec=TINY_SPEC,
                    candidates=CandidateSet(configs=("default",), optional=()))
    assert r.ok and {row["name"] for row in r.candidates["candidates"]} == {"eager", "planned", "compile"}


def test_the_layout_candidate_is_predicted_from_regions_timed_in_its_layout_and_says_so():
    c = _choose({"eager": 1.0, "compile": 0.6, "channels_last+compile": 0.5, "planned+channels_last+compile": 0.4})
    attach_predictions(c, {"planned+compile": REGIONS(0.3), "planned+channels_last+compile": REGIONS(0.09)})
    rows = {r["name"]: r for r in c.candidates}
    p = rows["planned+channels_last+compile"]["prediction"]
    measured = rows["channels_last+compile"]["median_ms"] - rows["planned+channels_last+compile"]["median_ms"]
    assert p["over"] == "channels_last+compile" and p["layout"] == "channels_last"
    assert p["predicted_saving_ms"] == 0.09 and p["error_pct"] == pytest.approx(100 * (0.09 - measured) / measured)
    attach_predictions(c, {"planned+compile": REGIONS(0.3)})  # nothing timed that way
    p = {r["name"]: r for r in c.candidates}["planned+channels_last+compile"]["prediction"]
    assert p["predicted_saving_ms"] is None and "layout" not in p


def test_regions_timed_in_channels_last_run_their_inputs_and_weights_in_that_layout(monkeypatch):
    from fxfusion.graph.loader import load_model
    from fxfusion.planning import insitu

    seen = []

    def not_compiled(region, args):  # the compile itself is the other test's; here: what the region is fed
        seen.append([a.is_contiguous(memory_format=torch.channels_last) for a in args if a.dim() == 4])
        consts = [getattr(region, n.target) for n in region.graph.nodes if n.op == "get_attr"]
        seen.append([t.is_contiguous(memory_format=torch.channels_last) for t in consts if t.dim() == 4])
        return region

    monkeypatch.setattr(insitu, "_compiled", not_compiled)
    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = typical_plan("mobilenet_block")
    weights = {n: p.clone() for n, p in loaded.model.state_dict().items()}
    plan.measure_in_compiled_model(loaded.model, loaded.example_inputs, Context.COMPILED_CHANNELS_LAST, "cpu",
                                   spec=TINY_SPEC)
    assert seen and all(all(flags) and flags for flags in seen)
    assert all(set(g.regions) == {Context.COMPILED_CHANNELS_LAST} for g in plan.groups)
    assert all(g.regions[Context.COMPILED_CHANNELS_LAST].regime == "compiled" for g in plan.groups)
    for n, p in loaded.model.state_dict().items():  # the model's own tensors are not converted
        assert p.is_contiguous() and torch.equal(p, weights[n])


def test_a_layout_prediction_from_the_models_own_layout_says_so_where_it_is_shown():
    c = _choose({"eager": 1.0, "compile": 0.6, "channels_last+compile": 0.5, "planned+channels_last+compile": 0.4})
    attach_predictions(c, {"planned+compile": REGIONS(0.3), "planned+channels_last+compile": REGIONS(0.3)},
                       fallback={"planned+channels_last+compile"})
    p = {r["name"]: r for r in c.candidates}["planned+channels_last+compile"]["prediction"]
    assert prediction_cell(p).endswith(", regions timed in the model's layout, from regions compiled alone")
    p["layout"] = "channels_last"
    assert prediction_cell(p).endswith("%), from regions compiled alone")


def test_a_fraction_measured_at_another_host_speed_is_shown_but_not_scored():
    c = _choose({"eager": 5.0, "compile": 1.9, "captured+compile": 1.68, "planned+compile": 1.56})
    # measured when the base ran 1.14 ms; here it runs 1.68 ms (1.47x slower): a slow host hides the saving
    attach_predictions(c, {"planned+compile": compiled_prediction(0.33, (Source.CLASS,), 0.29, 1.14)})
    p = {r["name"]: r for r in c.candidates}["planned+compile"]["prediction"]
    assert p["comparable"] is False and p["base_ms_predicted"] == 1.14 and p["base_ms"] == pytest.approx(1.68)
    assert p["predicted_saving_ms"] == pytest.approx(0.29 * 1.68)
    assert prediction_cell(p).endswith("; not comparable: its base ran 1.1400 ms when predicted and 1.6800 ms here "
                                       "(the host's speed moved)")
    c = _choose({"eager": 5.0, "compile": 1.9, "captured+compile": 1.30, "planned+compile": 1.0})
    attach_predictions(c, {"planned+compile": compiled_prediction(0.33, (Source.CLASS,), 0.25, 1.14)})
    p = {r["name"]: r for r in c.candidates}["planned+compile"]["prediction"]
    assert p["comparable"] is True and "not comparable" not in prediction_cell(p)  # 1.30 / 1.14 = 1.14x: within 1.25x


def test_a_whole_model_prediction_remembers_its_base_time_the_module_in_channels_last():
    plan = typical_plan("resnet_basic")
    capture = Capture(0.2, 0.2, 0.2, 0.1, 0.1)
    for g in plan.groups:
        g.classes[Context.COMPILED_CHANNELS_LAST] = class_timing([g], 0.01, fraction=0.02, control_ms=2.0,
                                                                 capture=capture)
        g.classes[Context.COMPILED] = class_timing([g], 0.01, fraction=0.02, control_ms=2.0)
    assert plan.predict(Context.COMPILED).base_ms == pytest.approx(2.0)
    assert plan.predict(Context.COMPILED_CHANNELS_LAST).base_ms == pytest.approx(2.2)  # module = control x 1.1


def test_the_fastest_rounds_compare_a_candidate_that_turns_host_bound_in_the_slow_phase():
    from fxfusion.planning.verify import Timing

    def timing(name, samples):
        return Timing(name, "ok", median_ms=sorted(samples)[len(samples) // 2], samples_ms=samples)

    base = [1.10] * 20 + [1.12] * 10  # device-bound: the host's phase does not move it
    cand = [0.74] * 10 + [0.8, 0.85, 0.9, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4, 1.5] * 2  # host-bound once fast: slow phases
    c = choose({"eager": timing("eager", [3.0] * 30), "captured+compile": timing("captured+compile", base),
                "planned+compile": timing("planned+compile", cand)}, {"eager": True, "captured+compile": True,
                                                                      "planned+compile": True}, {})
    attach_predictions(c, {"planned+compile": compiled_prediction(0.36, (Source.CLASS,), 0.33, 1.10, 0.33)})
    p = {r["name"]: r for r in c.candidates}["planned+compile"]["prediction"]
    assert p["error_pct"] > 20  # the medians mix the phases: 0.90 against 1.10 ms over all rounds reads low ...
    assert p["measured_floor_fraction"] == pytest.approx((1.10 - 0.74) / 1.10)  # ... the fast phase does not
    assert abs(p["floor_error_pct"]) < 2 and prediction_cell(p).endswith("fastest rounds: 33.0% / 32.7% of the base (+1%)")


def test_rewrites_in_another_configuration_are_predicted_by_the_share_carried_from_default_compile():
    # Llama decode on an H100 (2026-12-07): the class saved 12.5% of compile's 1.04 ms; with CUDA graphs the rewrites
    # took 0.1938 -> 0.1634 ms (15.7%)
    c = _choose({"eager": 3.10, "compile": 1.04, "compile+cudagraphs": 0.1938, "planned+compile": 0.91,
                 "planned+compile+cudagraphs": 0.1634})
    attach_predictions(c, {"planned+compile": compiled_prediction(0.13, (Source.CLASS,), 0.125, 1.04)})
    p = {r["name"]: r for r in c.candidates}["planned+compile+cudagraphs"]["prediction"]
    assert p["over"] == "compile+cudagraphs" and p["carried_from"] == "planned+compile"
    assert p["predicted_saving_ms"] == pytest.approx(0.125 * 0.1938)
    assert p["measured_saving_ms"] == pytest.approx(0.1938 - 0.1634)
    assert p["error_pct"] == pytest.approx(100 * (0.125 * 0.1938 - 0.0304) / 0.0304)
    assert p["comparable"] is True  # compile ran 1.04 ms here, as when the fraction was measured
    assert "carried to this configuration" in prediction_cell(p)
    # no default-configuration prediction (nothing measured with the whole model): nothing carried
    c = _choose({"eager": 3.10, "compile": 1.04, "compile+cudagraphs": 0.1938, "planned+compile+cudagraphs": 0.1634})
    attach_predictions(c, {})
    assert "prediction" not in {r["name"]: r for r in c.candidates}["planned+compile+cudagraphs"]
