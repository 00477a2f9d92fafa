"""Fusion plans: which groups and refusals on the reference models, savings from profiles, convexity, the API."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxfusion
from fxfusion.graph.capture import capture
from fxfusion.errors import FxFusionError
from fxfusion.graph.lean import original_target
from fxfusion.planning.plan import FusionPlan, measure_overhead
from fxfusion.planning.prediction import Context
from fxfusion.profiles.profile import Decision, Entry, Profile, VariantResult
from fxfusion.measure.hardware import device_name
from fxfusion.measure.stats import Speedup
from fxfusion.fusions.registry import rewrite_for
from fxfusion.graph.sites import Site
from tests.helpers import EXPECTED, TINY_SPEC, typical_plan

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_model_plan(name):
    plan = typical_plan(name)
    groups, refusals = EXPECTED[name]
    assert [(g.id, g.pattern, g.variant) for g in plan.groups] == groups
    assert sorted((r.site_id, r.why) for r in plan.refused) == refusals
    assert all(r.reasons and all(r.reasons) for r in plan.refused)
    # groups and refusals partition the sites
    assert sorted([g.id for g in plan.groups] + [r.site_id for r in plan.refused]) == sorted(s.id for s in plan.sites)
    assert plan.check_convex() == []


def test_refusal_reasons_name_the_rule():
    shared = {r.site_id: r for r in typical_plan("shared_conv").refused}
    assert "104593" in shared["g0.s0"].reasons[0] and "reused on another path" in shared["g0.s0"].reasons[0]


# -- savings and baselines from a profile ----------------------------------------------------------------------------

SHAPE = {"M": 64, "K": 256, "N": 256}


def _variant(name, kind, ms):
    samples = [ms * f for f in (0.98, 0.99, 1.0, 1.0, 1.01, 1.02)]
    return VariantResult(name=name, kind=kind, status="ok", samples_ms=samples, median_ms=ms)


def _profile(eager, addmm, compile_, shape=SHAPE):
    variants = [_variant("eager", "eager", eager), _variant("addmm", "manual", addmm),
                _variant("compile", "compile", compile_)]
    best = min(variants[1:], key=lambda v: v.median_ms)
    d = Decision("linear_bias_relu", dict(shape), "float32", "cpu", "fuse", best.name,
                 Speedup(eager / best.median_ms, eager / best.median_ms * 0.95, eager / best.median_ms * 1.05),
                 "hand-made", measured_shape=dict(shape))
    roofline = {"unfused_ms": 1.0, "fused_ms": 0.5, "bound": "compute", "peak_gflops": 100.0, "peak_gbs": 20.0,
                "basis": "test"}
    e = Entry("linear_bias_relu", "linear", "Linear+Bias+ReLU", dict(shape), "float32", "cpu", 1, 1, 1, 0.5, roofline,
              variants, d)
    return Profile(metadata={"device": "cpu", "device_name": device_name("cpu")}, hardware={}, ceilings={}, entries=[e])


class WrittenOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.W, self.b = nn.Parameter(torch.randn(256, 256) * 0.06), nn.Parameter(torch.zeros(256))

    def forward(self, x):
        return F.relu(x @ self.W.T + self.b)


def _plan(model, x, profile):
    # the library's predictions, as the profile says: in-model timing is tested in test_insitu.py
    return fxfusion.plan(model.eval(), profile, (x,), check_overhead=False, in_model=False)


def test_written_out_linear_saves_eager_minus_winner():
    plan = _plan(WrittenOut(), torch.randn(64, 256), _profile(eager=1.0, addmm=0.8, compile_=0.5))
    [g] = plan.groups
    assert (g.variant, g.baseline_variant) == ("compile", "eager")
    assert g.predicted_saving_ms == pytest.approx(0.5) and plan.predicted_saving_ms == pytest.approx(0.5)


def test_nn_linear_saves_only_what_beats_addmm():
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU())
    plan = _plan(model, torch.randn(64, 256), _profile(eager=1.0, addmm=0.8, compile_=0.5))
    [g] = plan.groups
    assert (g.variant, g.baseline_variant) == ("compile", "addmm")
    assert g.predicted_saving_ms == pytest.approx(0.3) and g.speedup.median == pytest.approx(0.8 / 0.5)
    # when nothing beats addmm beyond the noise, there is nothing to fuse
    even = _plan(model, torch.randn(64, 256), _profile(eager=1.0, addmm=0.5, compile_=0.499))
    assert even.groups == [] and [r.why for r in even.refused] == ["not_fuse"]


def test_entry_at_another_shape_scales_the_saving():
    plan = _plan(WrittenOut(), torch.randn(128, 256), _profile(eager=1.0, addmm=0.8, compile_=0.5))
    [g] = plan.groups
    assert g.extrapolated and g.decision.measured_shape == SHAPE and g.shape["M"] == 128
    assert g.predicted_saving_ms == pytest.approx(1.0, rel=0.01)  # compute bound: twice the rows, twice the time
    assert any("scaled from the measured shape" in w for w in plan.warnings)


def test_overhead_of_the_captured_graph_is_charged_to_the_plan():
    plan = _plan(WrittenOut(), torch.randn(64, 256), _profile(eager=1.0, addmm=0.8, compile_=0.5))
    plan.require_saving_over(0.1)
    assert plan.overhead_ms == 0.1 and plan.predicted_saving_ms == pytest.approx(0.4)
    plan.require_saving_over(0.6)  # the groups no longer pay for the graph: refused, the model stays as it is
    assert plan.groups == [] and plan.predicted_saving_ms == 0.0
    assert [r.why for r in plan.refused] == ["below_overhead"] and "0.6000 ms" in plan.refused[0].reasons[0]


def test_overhead_interval_upper_end_decides():
    from fxfusion.planning.plan import Overhead

    plan = _plan(WrittenOut(), torch.randn(64, 256), _profile(eager=1.0, addmm=0.8, compile_=0.5))
    plan.require_saving_over(Overhead(0.3, 0.1, 0.55))  # the median is covered, the interval's top is not
    assert plan.groups == [] and plan.overhead_ms == 0.3


def test_measured_overhead_is_small_and_signed():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU()).eval()
    x = torch.randn(8, 32)
    o = measure_overhead(model, capture(model, (x,)), (x,), spec=TINY_SPEC)
    assert -1.0 < o.ms < 1.0 and o.ci_low_ms <= o.ms <= o.ci_high_ms  # tens of microseconds either way


def test_real_profile_plan_partitions_the_sites(tiny_profile):
    """With the session's real calibration: whatever it measured, every site is grouped or refused with reasons."""

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = WrittenOut()
            self.conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())

        def forward(self, x, img):
            return self.lin(x), self.conv(img)

    inputs = (torch.randn(64, 256), torch.randn(1, 16, 16, 16))
    plan = fxfusion.plan(Mixed().eval(), str(tiny_profile), inputs, check_overhead=False)
    assert {s.pattern for s in plan.sites} == {"linear_bias_relu", "conv2d_bn_relu"}
    assert sorted([g.id for g in plan.groups] + [r.site_id for r in plan.refused]) == sorted(s.id for s in plan.sites)
    profile = Profile.load(tiny_profile)
    for g in plan.groups:
        assert g.decision.exact and rewrite_for(g.pattern, g.variant) is not None
        entry = profile.find(g.pattern, g.shape, "float32", "cpu")[0]
        # planned in the pipelined regime: its timings
        base, best = entry.timing(g.baseline_variant, "pipelined"), entry.timing(g.variant, "pipelined")
        # the library's saving is kept; the prediction is the group's region timed inside the model
        assert g.library_saving_ms == pytest.approx(base.median_ms - best.median_ms)
        assert Context.EAGER in g.regions and g.predicted_saving_ms == g.regions[Context.EAGER].saving_ms
    assert plan.prediction == "in_model" or not plan.groups
    assert all(r.reasons for r in plan.refused)
    json.dumps(plan.to_dict(), allow_nan=False)


def test_live_plan_measures_the_sites():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)).eval()
    plan = fxfusion.plan(model, None, (torch.randn(1, 4, 8, 8),), spec=TINY_SPEC, compile_modes=(),
                         check_overhead=False)
    [site] = plan.sites
    decided = plan.groups[0].decision if plan.groups else None
    assert site.pattern == "conv2d_bn"
    assert decided is None or (decided.exact and decided.measured_shape == site.shape)


# -- convexity -----------------------------------------------------------------------------------------------------

def _hand_plan(model, inputs, groups: dict[str, list[str]]) -> FusionPlan:
    captured = capture(model, inputs)
    sites = [Site(gid, "linear_bias_relu", 0, nodes, dict(SHAPE), "float32") for gid, nodes in groups.items()]
    decisions = {s.id: Decision(s.pattern, dict(SHAPE), "float32", "cpu", "fuse", "compile", None, "hand")
                 for s in sites}
    return FusionPlan.from_decisions(captured, sites, decisions)


def test_group_with_a_path_leaving_and_coming_back_is_refused():
    class Diamond(nn.Module):
        def forward(self, x):
            h = x.sin()
            return h.cos() + h  # {sin, add} would need cos, which lies between them

    plan = _hand_plan(Diamond(), (torch.randn(4),), {"g0.s0": ["sin", "add"]})
    assert plan.groups == [] and plan.refused[0].why == "not_convex"
    plan.groups, plan.refused = [_forced_group("g0.s0", ["sin", "add"])], []
    [problem] = plan.check_convex()
    assert "not convex" in problem and "cos" in problem


def _forced_group(gid, nodes):
    from fxfusion.planning.plan import FusionGroup

    return FusionGroup(gid, "linear_bias_relu", 0, nodes, "compile", "eager", None, None, None, None,
                       Decision("linear_bias_relu", {}, "float32", "cpu", "fuse", "compile", None, ""), {}, "float32")


def test_groups_that_are_convex_alone_but_cyclic_together_are_not_both_admitted():
    class Crossed(nn.Module):
        def forward(self, x):
            a1 = x.sin()
            b1 = a1.cos()  # A -> B
            b2 = x.exp()
            a2 = b2.tanh()  # B -> A
            return b1, a2

    plan = _hand_plan(Crossed(), (torch.randn(4),), {"g0.s0": ["sin", "tanh"], "g0.s1": ["cos", "exp"]})
    assert [g.id for g in plan.groups] == ["g0.s0"]
    [refused] = plan.refused
    assert refused.why == "not_convex" and "cycle" in refused.reasons[0]
    assert plan.check_convex() == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_networkx_view_of_every_reference_plan(name):
    plan = typical_plan(name)
    G = plan.to_networkx()
    assert nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == sum(len(gm.graph.nodes) for gm in plan.captured.graphs)
    assert set(G.graph["groups"]) == {g.id for g in plan.groups}
    for g in plan.groups:
        keys = G.graph["groups"][g.id]["nodes"]
        assert {G.nodes[k]["group"] for k in keys} == {g.id}
        assert all(G.nodes[k]["op"] == "call_function" and G.nodes[k]["shape"] is not None for k in keys)
        assert G.graph["groups"][g.id]["variant"] == g.variant
    # fusing every group is safe: contracting each to one node leaves a DAG
    where = {k: gid for gid, info in G.graph["groups"].items() for k in info["nodes"]}
    Q = nx.DiGraph((where.get(u, u), where.get(v, v)) for u, v in G.edges if where.get(u, u) != where.get(v, v))
    assert nx.is_directed_acyclic_graph(Q)
    grouped = [n for n, d in G.nodes(data=True) if d["group"]]
    assert len(grouped) == sum(len(g.nodes) for g in plan.groups)


# -- the API -------------------------------------------------------------------------------------------------------

def test_top_level_names():
    import fxfusion.planning.plan as _  # noqa: F401  the submodule import must not rebind fxfusion.plan
    from fxfusion.planning.pipeline import plan as plan_function

    assert fxfusion.plan is plan_function and callable(fxfusion.apply)


def test_bad_arguments_fail_with_one_line(tmp_path):
    model = nn.Linear(4, 4).eval()
    with pytest.raises(FxFusionError, match="example_inputs holds a dict as input 0; example inputs must be tensors"):
        fxfusion.plan(model, None, {"x": torch.randn(2, 4)})
    for inputs in (torch.randn(2, 4), [torch.randn(2, 4)]):  # a tensor or a list, as a model file may return them
        assert fxfusion.plan(model, None, inputs, check_overhead=False, in_model=False).captured.example_inputs
    with pytest.raises(FxFusionError, match="takes an nn.Module"):
        fxfusion.plan("model.py", None, (torch.randn(2, 4),))
    with pytest.raises(FxFusionError, match="does not exist"):
        fxfusion.plan(model, tmp_path / "missing.json", (torch.randn(2, 4),))
    plan = typical_plan("mobilenet_block")
    with pytest.raises(FxFusionError, match="no group"):
        plan.group("g9.s9")


def test_plan_from_an_analysis_keeps_its_live_timings():
    """The CLI's live mode has no profile file: the analysis's own outcomes carry the timings to the plan."""
    from fxfusion.planning.analyze import LiveSource, analyze

    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(1, 4, 8, 8)
    result = analyze(model, (x,), LiveSource("cpu", spec=TINY_SPEC, compile_modes=()), time_forward=False)
    plan = FusionPlan.from_analysis(result)
    [outcome] = result.outcomes
    if outcome.verdict == "fuse":
        [g] = plan.groups
        assert g.variant == outcome.best_variant and g.predicted_saving_ms == outcome.saved_ms > 0
    else:
        assert plan.groups == [] and plan.refused[0].why in ("not_fuse", "undecided")


@pytest.mark.slow  # about 15-30 s a form on the 2-core CI machine (the suite's budget)
@pytest.mark.parametrize("form", ["ExportedProgram", "exported GraphModule"])
def test_plan_takes_an_exported_graph(form):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(1, 4, 8, 8)
    ep = torch.export.export(model, (x,), strict=False)
    graph = ep if form == "ExportedProgram" else ep.module()
    plan = fxfusion.plan(graph, _conv_profile(), (x,), check_overhead=False)
    assert [s.pattern for s in plan.sites] == ["conv2d_bn_relu"] and [g.variant for g in plan.groups] == ["bn_folded"]
    planned = fxfusion.apply(model, plan)
    assert torch.ops.aten.batch_norm.default not in [original_target(n) for n in planned.graph.nodes]
    with torch.no_grad():
        torch.testing.assert_close(planned(x), model(x), rtol=1e-4, atol=1e-5)


def _conv_profile():
    shape = {"B": 1, "Cin": 4, "Cout": 4, "H": 8, "W": 8, "k": 3, "G": 1}
    variants = [_variant("eager", "eager", 1.0), _variant("bn_folded", "manual", 0.6)]
    d = Decision("conv2d_bn_relu", shape, "float32", "cpu", "fuse", "bn_folded", Speedup(1.6, 1.5, 1.7), "hand-made",
                 measured_shape=dict(shape))
    roofline = {"unfused_ms": 1.0, "fused_ms": 0.5, "bound": "memory", "peak_gflops": 100.0, "peak_gbs": 20.0,
                "basis": "test"}
    e = Entry("conv2d_bn_relu", "conv", "Conv2d+BN+ReLU", shape, "float32", "cpu", 1, 1, 1, 0.5, roofline, variants, d)
    return Profile(metadata={"device": "cpu", "device_name": device_name("cpu")}, hardware={}, ceilings={}, entries=[e])


def test_plan_decides_each_site_once(monkeypatch):
    profile = _profile(eager=1.0, addmm=0.8, compile_=0.5)
    calls = []
    decide = Profile.decide
    monkeypatch.setattr(Profile, "decide", lambda self, *a, **k: calls.append(a[0]) or decide(self, *a, **k))
    plan = _plan(WrittenOut(), torch.randn(64, 256), profile)
    assert len(plan.groups) == 1 and calls == ["linear_bias_relu"]  # not once more when the plan is built
    assert plan.groups[0].decision.exact and plan.groups[0].predicted_saving_ms == pytest.approx(0.5)
