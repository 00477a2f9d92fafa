"""In-model prediction: each group's region cut out of the captured graph and timed captured vs rewritten."""

from __future__ import annotations

import pytest
import torch

from fxfusion.planning.candidates import CandidateSet
from fxfusion.planning.insitu import measure_in_model
from fxfusion.planning.prediction import Context, RegionTiming
from fxfusion.planning.regions import cut_region, region_nodes, region_key
from fxfusion.planning.plan import SLOWER_IN_MODEL
from fxfusion.graph.runnable import runnable_graph
from fxfusion.measure.hardware import device_name
from fxfusion.measure.stats import difference
from fxfusion.measure.timing import TimingSpec
from fxfusion.planning.verify import verify_plan
from tests.helpers import MODELS, OpCountClock, typical_plan, typical_plan_of

SPEC = TimingSpec(rounds=5, warmup=1, target_sample_s=0.0, max_inner=1, budget_s=5.0)


def _model(name):
    from fxfusion.graph.loader import load_model

    return load_model(MODELS / f"{name}.py")


def test_region_of_sdpa_includes_the_mask_it_frees():
    plan = typical_plan("transformer_block")
    group = plan.group("g0.s1")
    gm = runnable_graph(plan.captured, 0, _model("transformer_block").model)
    nodes, released = region_nodes(gm, group)
    names = [n.name for n in nodes]
    assert set(group.nodes) <= set(names)
    assert "eq" in released  # mask == 0, read only by the masked_fill the rewrite removes
    assert not set(released) & set(group.nodes)
    # nothing outside the rewrite's reach: the q/k/v views also feed the rewritten SDPA call
    assert all(not n.startswith("linear") for n in released)


def test_cut_region_computes_what_the_graph_computes():
    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    gm = runnable_graph(plan.captured, 0, loaded.model)
    values = {}
    interp = torch.fx.Interpreter(gm)
    orig_run_node = interp.run_node
    interp.run_node = lambda n: values.setdefault(n.name, orig_run_node(n))
    with torch.no_grad():
        interp.run(*loaded.example_inputs)
    for group in plan.groups:
        nodes, _ = region_nodes(gm, group)
        region, inputs = cut_region(gm, nodes)
        with torch.no_grad():
            out = region(*(values[n] for n in inputs))
        torch.testing.assert_close(out, values[group.nodes[-1]])


def test_in_model_saving_is_the_measured_difference_of_the_region():
    loaded = _model("transformer_block")
    plan = typical_plan("transformer_block")
    plan.groups = [plan.group("g0.s1")]  # the SDPA group only: no compile in this test
    found = measure_in_model(plan.groups + plan.pending, plan.captured, loaded.model, loaded.example_inputs, spec=SPEC, clock=OpCountClock())
    im = found["g0.s1"]
    assert isinstance(im, RegionTiming), im
    assert im.captured_ms > im.rewritten_ms > 0
    assert im.saving_ms == pytest.approx(im.captured_ms - im.rewritten_ms)
    assert im.ci_low_ms == pytest.approx(im.saving_ms) and im.ci_high_ms == pytest.approx(im.saving_ms)
    assert "eq" in im.released
    assert im.batches == 1  # a deterministic clock: the first batch's interval is already tight


def test_plan_predicts_from_the_model_and_refuses_a_region_slower_rewritten(monkeypatch):
    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    library = {g.id: g.predicted_saving_ms for g in plan.groups}
    # cost falls with the op count: every rewrite (fewer ops) looks slower inside the model
    plan.measure_in_model(loaded.model, loaded.example_inputs, spec=SPEC,
                          clock=OpCountClock(per_op_us=-1.0, base_us=100.0))
    assert plan.groups == []
    refused = {r.site_id: r for r in plan.refused if r.why == SLOWER_IN_MODEL}
    assert set(refused) == set(library)
    assert all("rewritten against" in r.reasons[0] for r in refused.values())


def test_verification_reports_both_predictions():
    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    plan.measure_in_model(loaded.model, loaded.example_inputs, spec=SPEC, clock=OpCountClock())
    assert plan.prediction == "in_model"
    assert all(Context.EAGER in g.regions and g.regions[Context.EAGER].saving_ms == g.predicted_saving_ms for g in plan.groups)
    r = verify_plan(loaded.model, loaded.example_inputs, plan, spec=SPEC, clock=OpCountClock(),
                    candidates=CandidateSet.uncompiled(captured=False))
    assert r.ok and r.prediction == "in_model" and r.timing == "cpu"
    # with no library timings (decisions without a profile) there is no library prediction to compare
    assert r.library_predicted_saving_ms is None
    # op counts: each BN folded away saves its ops, and the planned model is the captured graph rewritten
    assert r.predicted_saving_ms == pytest.approx(sum(g.predicted_saving_ms for g in plan.groups))
    assert r.predicted_saving_ms > 0


def test_difference_interval_brackets_the_median_difference():
    base, cand = [10.0, 11.0, 12.0, 10.5, 11.5], [7.0, 8.0, 7.5, 8.5, 7.2]
    d = difference(base, cand)
    assert d.median == pytest.approx(11.0 - 7.5)
    assert d.ci_low <= d.median <= d.ci_high and d.ci_low > 0
    with pytest.raises(ValueError):
        difference([], cand)


def test_unknown_cuda_timing_mode_is_refused():
    from fxfusion.measure.timing import CudaClock

    with pytest.raises(ValueError, match="unknown CUDA timing mode"):
        CudaClock("warm")


def test_fractions_paired_per_round_predict_exactly_under_a_deterministic_clock():
    from fxfusion.planning.plan import Overhead

    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    plan.measure_in_model(loaded.model, loaded.example_inputs, spec=SPEC, clock=OpCountClock())
    for g in plan.groups:  # each region's saved ops over the whole model's ops
        im = g.regions[Context.EAGER]
        assert 0 < im.fraction < 1 and im.fraction_ci_low == im.fraction_ci_high == im.fraction
    assert plan.predicted_fraction is None  # the overhead was not measured
    plan.require_saving_over(Overhead(0.0, 0.0, 0.0, None, 0.0))
    predicted = plan.predicted_fraction
    assert predicted == pytest.approx(sum(g.regions[Context.EAGER].fraction for g in plan.groups))
    r = verify_plan(loaded.model, loaded.example_inputs, plan, spec=SPEC, clock=OpCountClock(),
                    candidates=CandidateSet.uncompiled(captured=False))
    # op counts are additive and the captured graph runs the eager model's ops: the prediction is exact
    assert r.predicted_fraction == pytest.approx(predicted)
    assert r.measured_fraction == pytest.approx(predicted) and r.fraction_error_pct == pytest.approx(0.0, abs=1e-6)


def test_paired_fraction_cancels_a_host_speed_swing():
    from fxfusion.measure.stats import paired_fraction

    speed = [1.0, 1.5] * 10  # the host alternates between two speeds, round by round
    eager = [0.20 * k for k in speed]
    planned = [0.15 * k for k in speed]
    f = paired_fraction(eager, planned, eager)
    assert f.median == pytest.approx(0.25) and f.ci_low == pytest.approx(0.25) and f.ci_high == pytest.approx(0.25)


# -- sites the library cannot decide: an activation written out ----------------------------------------------------

class _NewGELULinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(32, 16) * 0.2)
        self.b = torch.nn.Parameter(torch.randn(32) * 0.1)

    def forward(self, x):
        import math

        h = x @ self.w.T + self.b
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))


def _gelu_profile(shape, eager_ms, addmm_ms):
    from fxfusion.profiles.profile import Decision, Entry, Profile, VariantResult
    from fxfusion.measure.stats import Speedup

    def variant(name, kind, ms):
        return VariantResult(name=name, kind=kind, status="ok", samples_ms=[ms * f for f in (0.99, 1.0, 1.01)] * 3,
                             median_ms=ms)

    d = Decision("linear_bias_gelu_tanh", dict(shape), "float32", "cpu", "avoid", "eager",
                 Speedup(eager_ms / addmm_ms, eager_ms / addmm_ms * 0.99, eager_ms / addmm_ms * 1.01), "hand-made",
                 measured_shape=dict(shape))
    roofline = {"unfused_ms": 1.0, "fused_ms": 0.5, "bound": "memory", "peak_gflops": 100.0, "peak_gbs": 20.0,
                "basis": "test"}
    e = Entry("linear_bias_gelu_tanh", "linear", "Linear+Bias+GELU(tanh)", dict(shape), "float32", "cpu", 1, 1, 1,
              0.5, roofline, [variant("eager", "eager", eager_ms), variant("addmm", "manual", addmm_ms)], d)
    return Profile(metadata={"device": "cpu", "device_name": device_name("cpu")}, hardware={}, ceilings={}, entries=[e])


def test_written_out_activation_is_decided_inside_the_model():
    from fxfusion.graph.capture import capture
    from fxfusion.fusions.match import find_sites
    from fxfusion.planning.plan import FusionPlan, NOT_FUSE

    model, inputs = _NewGELULinear().eval(), (torch.randn(2, 4, 16),)
    captured = capture(model, inputs)
    [site] = find_sites(captured)
    # the library (F.gelu as one op) says addmm is slower than eager: avoid
    profile = _gelu_profile(site.shape, eager_ms=1.0, addmm_ms=1.2)
    decision = profile.decide(site.pattern, site.shape, "float32", "cpu")
    plan = FusionPlan.from_decisions(captured, [site], {site.id: decision}, profile=profile, device="cpu")
    assert plan.groups == [] and [r.why for r in plan.refused] == [NOT_FUSE]
    assert [g.variant for g in plan.pending] == ["addmm"] and "written out" in plan.refused[0].reasons[-1]
    # inside the model the rewrite removes ops (matmul + add -> addmm): under a clock that counts ops it is faster
    plan.measure_in_model(model, inputs, spec=SPEC, clock=OpCountClock())
    [g] = plan.groups
    assert g.decided_in_model and g.regions[Context.EAGER].verdict == "fuse" and g.predicted_saving_ms > 0
    assert plan.refused == [] and plan.pending == []
    assert any("decided inside the model" in w for w in plan.warnings)


def test_written_out_activation_not_faster_inside_the_model_stays_refused():
    from fxfusion.graph.capture import capture
    from fxfusion.fusions.match import find_sites
    from fxfusion.planning.plan import FusionPlan, NOT_FUSE

    model, inputs = _NewGELULinear().eval(), (torch.randn(2, 4, 16),)
    captured = capture(model, inputs)
    [site] = find_sites(captured)
    profile = _gelu_profile(site.shape, eager_ms=1.0, addmm_ms=1.2)
    plan = FusionPlan.from_decisions(captured, [site], {site.id: profile.decide(site.pattern, site.shape, "float32",
                                                                                   "cpu")}, profile=profile)
    plan.measure_in_model(model, inputs, spec=SPEC, clock=OpCountClock(per_op_us=-1.0, base_us=100.0))
    assert plan.groups == [] and [r.why for r in plan.refused] == [NOT_FUSE]
    assert "inside the model its region runs" in plan.refused[0].reasons[-1]


def test_the_report_says_where_the_model_overrode_the_library():
    from fxfusion.planning.analyze import ProfileSource, analyze
    from fxfusion.planning.pipeline import note_in_model
    from fxfusion.planning.plan import FusionPlan

    model, inputs = _NewGELULinear().eval(), (torch.randn(2, 4, 16),)
    profile = _gelu_profile({"M": 8, "K": 16, "N": 32}, eager_ms=1.0, addmm_ms=1.2)
    result = analyze(model, inputs, ProfileSource(profile, "cpu", "test"), device="cpu", time_forward=False)
    plan = FusionPlan.from_decisions(result.captured, result.sites, result.decisions(), profile=profile,
                                     device="cpu", undecided=result.undecided())
    plan.measure_in_model(model, inputs, spec=SPEC, clock=OpCountClock())
    note_in_model(result, plan)
    [site] = result.to_dict()["sites"]
    assert site["verdict"] == "avoid"  # the library's verdict, against its one-op GELU
    assert any(w.startswith("fused by --apply all the same") for w in site["warnings"])


def test_in_model_timing_stops_at_its_budget_and_keeps_the_library_prediction():
    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    plan.measure_in_model(loaded.model, loaded.example_inputs, spec=SPEC, clock=OpCountClock(), budget_s=0.0)
    assert len(plan.groups) == 3 and all(not g.regions for g in plan.groups)
    assert plan.prediction == "library"
    assert all("timing budget" in w for w in plan.warnings if "no in-model timing" in w)
    assert sum("no in-model timing" in w for w in plan.warnings) == 3


@pytest.mark.slow  # about 30-60 s on the 2-core CI machine (tests/conftest.py's suite budget)
def test_plan_decides_pending_sites_even_when_no_group_was_admitted(monkeypatch):
    import fxfusion

    model, inputs = _NewGELULinear().eval(), (torch.randn(2, 4, 16),)
    profile = _gelu_profile({"M": 8, "K": 16, "N": 32}, eager_ms=1.0, addmm_ms=1.2)
    monkeypatch.setattr("fxfusion.planning.insitu.model_clock", lambda device: OpCountClock())
    plan = fxfusion.plan(model, profile, inputs, check_overhead=False, spec=SPEC)
    assert [g.id for g in plan.groups if g.decided_in_model] == ["g0.s0"] and plan.pending == []


def test_saving_in_ms_is_the_paired_fraction_times_one_reference_time():
    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    plan.measure_in_model(loaded.model, loaded.example_inputs, spec=SPEC, clock=OpCountClock(), reference_ms=2.0)
    for g in plan.groups:
        assert g.predicted_saving_ms == pytest.approx(g.regions[Context.EAGER].fraction * 2.0)


def _unstable_tightest(thunks, clock, spec):
    """Region timings that say 'slower rewritten' from their medians while the fastest samples say the opposite:
    rewritten 3x slower in ten rounds, 2x faster in two (a timing contention cannot fake: it only adds time)."""
    from fxfusion.measure.stats import paired_fraction
    from fxfusion.measure.timing import Samples

    s = Samples(seconds={"captured": [1e-3] * 12, "rewritten": [0.5e-3] * 2 + [3e-3] * 10, "model": [1e-2] * 12},
                inner={"captured": 1, "rewritten": 1, "model": 1}, rounds=12)
    return s, paired_fraction(s.seconds["captured"], s.seconds["rewritten"], s.seconds["model"]), 3


def test_a_region_whose_timing_is_unstable_is_noisy_neutral_and_decides_nothing(monkeypatch):
    monkeypatch.setattr("fxfusion.planning.insitu._tightest", _unstable_tightest)
    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    groups = [g.id for g in plan.groups]
    found = measure_in_model(plan.groups + plan.pending, plan.captured, loaded.model, loaded.example_inputs, spec=SPEC, clock=OpCountClock())
    im = found[groups[0]]
    assert im.verdict == "neutral" and "fastest tenth" in im.noisy
    assert im.ci_high_ms < 0  # what would refuse the group, were the timing stable
    # in the plan: kept on the library's verdict with a warning, never refused on a timing that flips
    plan.measure_in_model(loaded.model, loaded.example_inputs, spec=SPEC, clock=OpCountClock())
    assert [g.id for g in plan.groups] == groups and not [r for r in plan.refused if r.why == SLOWER_IN_MODEL]
    assert all(any(w.startswith(f"{g}: its in-model timing is noisy") for w in plan.warnings) for g in groups)
    r = verify_plan(loaded.model, loaded.example_inputs, plan, spec=SPEC, clock=OpCountClock(), candidates=CandidateSet.uncompiled(captured=False))  # and the verification, which every renderer prints, says it too
    assert [w for w in r.warnings if "in-model timing is noisy" in w] == [w for w in plan.warnings if "noisy" in w]


def test_a_stable_region_is_not_noisy():
    loaded = _model("resnet_bottleneck")
    plan = typical_plan("resnet_bottleneck")
    spec = TimingSpec(rounds=12, warmup=1, target_sample_s=0.0, max_inner=1, budget_s=5.0)
    found = measure_in_model(plan.groups + plan.pending, plan.captured, loaded.model, loaded.example_inputs, spec=spec, clock=OpCountClock())
    assert all(im.noisy is None and im.verdict == "fuse" for im in found.values())


class _RepeatedBlocks(torch.nn.Module):
    """Three conv+BN+ReLU blocks alike (8 channels, 3x3) and one that differs (16 channels out): the first three
    regions are the same work, the last is not."""

    def __init__(self):
        super().__init__()
        self.same = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                                            torch.nn.BatchNorm2d(8), torch.nn.ReLU())
                                        for _ in range(3))
        self.other = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16),
                                         torch.nn.ReLU())

    def forward(self, x):
        for block in self.same:
            x = block(x)
        return self.other(x)


def _repeated_plan():
    model, inputs = _RepeatedBlocks().eval(), (torch.randn(2, 8, 12, 12),)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding changes the weights
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model, inputs, typical_plan_of(model, inputs)


class _CountingClock(OpCountClock):
    def __init__(self):
        super().__init__()
        self.timed = []

    def sample(self, fn, inner):
        self.timed.append(fn)
        return super().sample(fn, inner)


def test_a_repeated_block_is_timed_once_and_its_twins_share_that_timing():
    model, inputs, plan = _repeated_plan()
    assert len(plan.groups) == 4
    clock = _CountingClock()
    found = measure_in_model(plan.groups + plan.pending, plan.captured, model, inputs, spec=SPEC, clock=clock)
    ims = [found[g.id] for g in plan.groups]
    assert all(isinstance(im, RegionTiming) for im in ims), ims
    by_nodes = {tuple(im.nodes): im for im in ims}
    assert len(by_nodes) == 4  # each group keeps its own nodes
    shared = [im for im in ims if im.same_as is not None]
    assert len(shared) == 2 and {im.same_as for im in shared} <= {g.id for g in plan.groups}
    first = found[shared[0].same_as]
    assert first.same_as is None and all(im.saving_ms == first.saving_ms for im in shared)
    own = [g.id for g, im in zip(plan.groups, ims) if im.same_as is None]
    assert len(own) == 2 and shared[0].same_as in own  # the 16-channel block has its own timing
    # two regions timed (captured, rewritten and the model per round), not four
    assert len({id(fn) for fn in clock.timed}) == 2 * 3


def test_regions_alike_but_for_a_shape_or_a_stride_do_not_share_a_key():

    model, inputs, plan = _repeated_plan()
    gm = runnable_graph(plan.captured, 0, model)
    nodes, _ = region_nodes(gm, plan.groups[0])
    region, names = cut_region(gm, nodes)
    x = torch.randn(2, 8, 12, 12)
    key = region_key(region, region, (x,))
    assert key is not None and region_key(region, region, (torch.randn(2, 8, 12, 12),)) == key  # values do not count
    assert region_key(region, region, (torch.randn(2, 8, 10, 10),)) != key
    assert region_key(region, region, (x.to(memory_format=torch.channels_last),)) != key
    assert region_key(region, region, (x.double(),)) != key
    assert region_key(region, region, (object(),)) is None  # a value it cannot describe: no sharing


def test_the_report_says_which_group_a_shared_timing_was_taken_on():
    from fxfusion.reports.verification import group_rows

    model, inputs, plan = _repeated_plan()
    plan.measure_in_model(model, inputs, spec=SPEC, clock=OpCountClock())
    rows = {r[0]: r for r in group_rows({"plan": plan.to_dict()})}
    shared = [g for g in plan.groups if g.regions[Context.EAGER].same_as]
    assert len(shared) == 2
    for g in shared:
        assert rows[g.id][3].endswith(f"(timed as {g.regions[Context.EAGER].same_as}: the same work)")
    assert sum("timed as" in r[3] for r in rows.values()) == 2
