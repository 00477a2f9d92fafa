"""The conv family beyond ReLU -- conv + BatchNorm + SiLU / ReLU6 / Hardswish / GELU and the squeeze-excitation convs of
MobileNetV3 and EfficientNet -- and conv + BatchNorm folding after a graph break (parameters lifted to placeholders).

Plans are made from hand-written decisions, so the tests pin what matching and rewriting do, not what this machine
measured.  Every rewritten model is checked against float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxfusion.fusions.conv.fused import fused_unsupported
from fxfusion.fusions.match import find_sites
from fxfusion.fusions.registry import REGISTRY
from fxfusion.graph.capture import capture
from fxfusion.graph.lean import original_target
from fxfusion.measure.correctness import relative_error
from fxfusion.measure.kernelcount import count_launches
from fxfusion.measure.stats import Speedup
from fxfusion.planning.analyze import analyze
from fxfusion.planning.apply import apply
from fxfusion.planning.decide import Lookup
from fxfusion.planning.plan import FusionPlan
from fxfusion.profiles.profile import Decision, Entry, VariantResult
from tests.helpers import with_statistics

aten = torch.ops.aten
ONEDNN_CONV = torch.ops.mkldnn._convolution_pointwise.default
FLOAT32_TOL = 1e-4  # relative L2 against float64: BN folded in float32, conv accumulations reassociated
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn) on CPU")


def sites_of(model, *inputs):
    captured = capture(model, inputs)
    return captured, find_sites(captured)


def plan_for(model, inputs, variant_of, captured=None) -> FusionPlan:
    """Every legal site decided 'fuse' with ``variant_of(site)`` (None: undecided)."""
    captured = captured or capture(model, inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", v, None, "test decision")
                 for s in sites if s.legal and (v := variant_of(s)) is not None}
    return FusionPlan.from_decisions(captured, sites, decisions)


def float64_error(model, planned, inputs) -> float:
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        return relative_error(planned(*inputs), reference(*[x.double() for x in inputs]))


def ops(gm) -> list:
    return [original_target(n) for n in gm.graph.nodes if n.op == "call_function"]


def block(conv, bn=None, act=None):
    return with_statistics(nn.Sequential(*[m for m in (conv, bn, act) if m is not None]))


IMG = torch.randn(1, 8, 10, 10, generator=torch.Generator().manual_seed(1))

# (module, pattern suffix, aten op the activation is captured as)
BN_ACTIVATIONS = {
    "nn.SiLU(inplace)": (nn.SiLU(inplace=True), "silu", aten.silu_.default),
    "nn.ReLU6(inplace)": (nn.ReLU6(inplace=True), "relu6", aten.hardtanh_.default),
    "nn.Hardswish(inplace)": (nn.Hardswish(inplace=True), "hardswish", aten.hardswish_.default),
    "nn.Hardswish": (nn.Hardswish(), "hardswish", aten.hardswish.default),
    "nn.GELU": (nn.GELU(), "gelu", aten.gelu.default),
}


# -- matching --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", BN_ACTIVATIONS)
def test_conv_bn_activation_of_mobilenet_and_efficientnet_blocks_is_one_site(act):
    module, name, _ = BN_ACTIVATIONS[act]
    captured, [site] = sites_of(block(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                                      module), IMG)
    assert (site.pattern, site.status) == (f"conv2d_bn_{name}", "fusible")
    assert len(site.nodes) == 3 and captured.unmatched == {}
    assert site.roles["act"] == name and site.roles["output"] == site.roles["activation"] == site.nodes[-1]
    assert site.written_as.endswith(REGISTRY[site.pattern].title.rsplit("+", 1)[1]) and "(depthwise)" in site.written_as


def test_functional_hardswish_and_hardtanh_0_6_are_the_same_activations_as_the_modules():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = block(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)), \
                block(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))

        def forward(self, x):
            return F.hardswish(self.a(x)) + F.hardtanh(self.b(x), 0.0, 6.0)

    _, sites = sites_of(Functional().eval(), IMG)
    assert [s.pattern for s in sites] == ["conv2d_bn_hardswish", "conv2d_bn_relu6"]


@pytest.mark.parametrize("act, pattern", [(nn.SiLU(inplace=True), "conv2d_silu"), (nn.Sigmoid(), "conv2d_sigmoid"),
                                          (nn.Hardsigmoid(), "conv2d_hardsigmoid"), (nn.ReLU(), "conv2d_relu")])
def test_squeeze_excitation_convs_are_conv_with_bias_and_activation(act, pattern):
    _, [site] = sites_of(block(nn.Conv2d(8, 4, 1), None, act), torch.randn(1, 8, 1, 1))
    assert (site.pattern, site.status) == (pattern, "fusible") and "conv_bias" in site.roles


def test_an_activation_without_a_pattern_stays_a_separate_op_and_says_so():
    captured, [site] = sites_of(block(nn.Conv1d(8, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8), nn.SiLU()),
                                torch.randn(1, 8, 12))
    assert site.pattern == "conv1d_bn" and captured.unmatched == {"aten.silu.default": 1}
    assert site.notes == ["the SiLU after it has no conv1d_bn_silu pattern in the library; it stays a separate op"]
    captured, sites = sites_of(block(nn.Conv2d(8, 8, 1), None, nn.ReLU6()), IMG)  # no conv2d_relu6: no site at all
    assert sites == [] and captured.unmatched == {"aten.conv2d.default": 1, "aten.hardtanh.default": 1}


def test_a_written_out_silu_after_conv_bn_is_left_as_written_not_taken_for_a_sigmoid():
    class Swish(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = block(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))

        def forward(self, x):
            h = self.conv(x)
            return h * torch.sigmoid(h)

    captured, [site] = sites_of(Swish().eval(), IMG)
    assert site.pattern == "conv2d_bn" and "SiLU after it is written out in 2 elementwise ops" in site.notes[0]
    assert captured.unmatched == {"aten.sigmoid.default": 1, "aten.mul.Tensor": 1}


def test_a_linear_followed_by_hardswish_is_no_linear_hardswish_site():
    """Hardswish is declared once for every family; the linear family has no pattern for it and says so."""
    _, [site] = sites_of(nn.Sequential(nn.Linear(8, 16), nn.Hardswish()).eval(), torch.randn(2, 8))
    assert (site.pattern, site.status) == ("linear_bias", "already_fused")
    assert site.notes == ["the Hardswish after it has no linear+Hardswish pattern in the library; it stays a "
                          "separate op"]


# -- the patterns: cost model by hand, one oneDNN call -------------------------------------------------------------

def test_conv_bn_hardswish_counts_by_hand():
    p = REGISTRY["conv2d_bn_hardswish"]
    s = dict(B=1, Cin=4, Cout=4, H=3, W=3, k=3, G=4)  # depthwise
    x, y, w = 4 * 9, 4 * 9, 4 * 1 * 9
    assert p.flops(s) == 2 * y * 1 * 9 + y * (2 + 1)  # conv, BN scale+shift, Hardswish counted as one op
    assert p.bytes(s, 4, False) == 4 * (x + w + y + 2 * y + 4 * 4 + 2 * y)  # conv; BN; activation read + write
    assert p.bytes(s, 4, True) == 4 * (x + w + 4 + y)  # the folded conv with its bias, activation in registers


def test_conv_silu_without_bn_counts_its_bias():
    p = REGISTRY["conv2d_silu"]
    s = dict(B=1, Cin=2, Cout=3, H=1, W=1, k=1, G=1)
    assert p.flops(s) == 2 * 3 * 2 + 3 * (1 + 1)
    assert p.bytes(s, 4, False) == 4 * (2 + 6 + 3 + 3 + 2 * 3) and p.bytes(s, 4, True) == 4 * (2 + 6 + 3 + 3)


@needs_onednn
@pytest.mark.parametrize("pattern", ["conv2d_bn_silu", "conv2d_bn_relu6", "conv2d_bn_hardswish", "conv2d_bn_gelu"])
def test_onednn_conv_bn_activation_is_one_op_where_eager_is_three_and_the_fold_two(pattern):
    p = REGISTRY[pattern]
    inputs = p.make_inputs(p.shapes["quick"][0], torch.float32, "cpu", torch.Generator().manual_seed(0))
    act = pattern.removeprefix("conv2d_bn_")
    eager = count_launches(lambda: p.eager(**inputs), "cpu")
    folded = count_launches(p.variant("bn_folded").build(inputs), "cpu")
    fused = count_launches(p.variant(f"conv_{act}_fused").build(inputs), "cpu")
    assert (eager.kernels_per_call, folded.kernels_per_call, fused.kernels_per_call) == (3, 2, 1)
    assert fused.names == ("mkldnn::_convolution_pointwise",)


def test_no_fused_cudnn_kernel_is_offered_for_activations_other_than_relu():
    assert fused_unsupported("relu", torch.float16, "cuda") is None
    why = fused_unsupported("hardswish", torch.float16, "cuda")
    assert why.startswith("PyTorch exposes no fused cuDNN conv+Hardswish (cudnn_convolution_relu takes ReLU only")
    assert REGISTRY["conv2d_bn_silu"].variant("conv_silu_fused").unsupported({}, torch.float32, "cuda:0") is not None
    assert fused_unsupported("silu", torch.float16, "cpu") == "oneDNN's fused conv+SiLU does not take torch.float16"


# -- rewrites --------------------------------------------------------------------------------------------------------

REWRITE_CASES = {
    "depthwise conv+BN+SiLU": (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),
                               nn.SiLU(inplace=True), IMG),
    "strided conv+BN+Hardswish": (nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish(inplace=True), IMG),
    "conv+BN+ReLU6": (nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True), IMG),
    "conv+BN+GELU": (nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.GELU(), IMG),
    "SE conv+Hardsigmoid": (nn.Conv2d(8, 4, 1), None, nn.Hardsigmoid(), torch.randn(1, 8, 1, 1)),
    "conv1d+ReLU": (nn.Conv1d(8, 8, 5, padding=2), None, nn.ReLU(), torch.randn(2, 8, 12)),
}


@pytest.mark.parametrize("case", [c for c in REWRITE_CASES if "BN" in c])
def test_bn_folded_leaves_conv_then_activation(case):
    conv, bn, act, x = REWRITE_CASES[case]
    model = block(copy.deepcopy(conv), copy.deepcopy(bn), copy.deepcopy(act))
    planned = apply(model, plan_for(model, (x,), lambda s: "bn_folded"))
    assert [r.variant for r in planned.fxfusion_rewrites if r.applied] == ["bn_folded"]
    planned.graph.lint()
    calls = ops(planned)
    assert aten.batch_norm.default not in calls and sum(t in (aten.conv2d.default,) for t in calls) == 1
    assert len(calls) == 2  # the conv with the folded weights, then the activation as it was
    assert float64_error(model, planned, (x,)) < FLOAT32_TOL


@needs_onednn
@pytest.mark.parametrize("case", REWRITE_CASES)
def test_conv_and_activation_become_one_onednn_call(case):
    conv, bn, act, x = REWRITE_CASES[case]
    model = block(copy.deepcopy(conv), copy.deepcopy(bn), copy.deepcopy(act))
    planned = apply(model, plan_for(model, (x,), lambda s: f"conv_{s.roles['act']}_fused"))
    [record] = planned.fxfusion_rewrites
    assert record.applied, record.detail
    planned.graph.lint()
    calls = ops(planned)
    assert calls.count(ONEDNN_CONV) == 1 and aten.batch_norm.default not in calls
    assert [t for t in calls if t != ONEDNN_CONV] == ([aten.unsqueeze.default, aten.squeeze.dim]
                                                      if x.dim() == 3 else [])  # a 1-d conv runs at height 1
    assert float64_error(model, planned, (x,)) < FLOAT32_TOL


# -- after a graph break: parameters arrive as placeholders ---------------------------------------------------------

class AfterABreak(nn.Module):
    """A stem conv+BN+ReLU, then a branch on the data (export fails; Dynamo breaks the graph there), and in it:

    * "fold": conv+BN+Hardswish (its own conv);
    * "siamese": one conv on the features and on their mirror image, each with its own BN (reused on two paths);
    * "across": the stem conv again, on the input (one conv on both sides of the break)."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv, self.bn_a, self.bn_b = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), \
            nn.BatchNorm2d(8)

    def forward(self, x):  # x: (B, 3, H, W)
        h = F.relu(self.bn0(self.stem(x)))  # (B, 8, H, W)
        if h.mean() > 0:  # data-dependent: a graph break
            if self.form == "fold":
                return F.hardswish(self.bn_a(self.conv(h)))
            if self.form == "siamese":
                return F.relu(self.bn_a(self.conv(h)) + self.bn_b(self.conv(h.flip(-1))))
            return h + self.bn_a(self.stem(x))
        return h


X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def after_a_break():
    """form -> (model, its Dynamo capture): one capture each for the module's tests."""
    out = {}
    for form in ("fold", "siamese", "across"):
        model = with_statistics(AfterABreak(form))
        out[form] = (model, capture(model, (X,)))
    return out


def test_conv_bn_after_a_graph_break_is_folded(after_a_break):
    model, captured = after_a_break["fold"]
    assert captured.method == "dynamo" and len(captured.graphs) == 2
    plan = plan_for(model, (X,), lambda s: "bn_folded", captured)
    assert [(g.id, g.pattern) for g in plan.groups] == [("g0.s0", "conv2d_bn_relu"), ("g1.s0", "conv2d_bn_hardswish")]
    planned = apply(model, plan)
    assert [(r.site_id, r.applied) for r in planned.fxfusion_rewrites] == [("g0.s0", True), ("g1.s0", True)]
    for gm in planned.fxfusion_backend.modules:  # the weights were placeholders: the folds read the model's tensors
        gm.graph.lint()
        assert aten.batch_norm.default not in ops(gm)
    assert float64_error(model, planned, (X,)) < FLOAT32_TOL
    assert planned.fxfusion_backend.calls == 2 and planned.fxfusion_backend.mismatches == []


def test_a_conv_reused_after_a_graph_break_is_refused_for_that_and_not_for_the_input_guard(after_a_break):
    model, captured = after_a_break["siamese"]
    sites = find_sites(captured)
    assert [(s.id, s.pattern, s.status) for s in sites] == [
        ("g0.s0", "conv2d_bn_relu", "fusible"), ("g1.s0", "conv2d_bn", "illegal"), ("g1.s1", "conv2d_bn", "illegal")]
    assert "(weight conv.weight) is reused on another path (g1:conv2d_1)" in sites[1].reasons[0]
    for s in sites:  # a fold forced through: the rewrite itself refuses, naming the other conv
        s.status, s.reasons = "fusible", []
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "bn_folded", None, "forced")
                 for s in sites}
    planned = apply(model, FusionPlan.from_decisions(captured, sites, decisions))
    records = {r.site_id: r for r in planned.fxfusion_rewrites}
    assert records["g0.s0"].applied and not records["g1.s0"].applied and not records["g1.s1"].applied
    assert records["g1.s0"].detail.startswith("the conv's weight conv.weight is also read by conv2d_1 (a conv reused "
                                              "on two paths)")
    assert "guard" not in records["g1.s0"].detail
    assert float64_error(model, planned, (X,)) < FLOAT32_TOL


def test_a_conv_on_both_sides_of_a_graph_break_is_refused_with_both_uses_named(after_a_break):
    _, captured = after_a_break["across"]
    sites = find_sites(captured)
    assert [(s.id, s.status) for s in sites] == [("g0.s0", "illegal"), ("g1.s0", "illegal")]
    assert "conv stem (weight stem.weight) is reused on another path (g1:conv2d)" in sites[0].reasons[0]
    assert "(g0:conv2d)" in sites[1].reasons[0] and "104593" in sites[1].reasons[0]


# -- plain analyze counts only what --apply can apply ---------------------------------------------------------------

class DecideEveryConv:
    """A profile-like source: every conv site decided 'fuse' with ``variant`` at 1.0 ms eager, 0.4 ms fused."""

    mode, path = "profile", None

    def __init__(self, variant: str):
        self.variant = variant

    def warnings(self):
        return []

    def lookup(self, pattern, shape, dtype):
        def result(name, kind, ms):
            return VariantResult(name=name, kind=kind, status="ok", samples_ms=[ms * f for f in (0.99, 1, 1.01)],
                                 median_ms=ms)

        d = Decision(pattern.name, dict(shape), dtype, "cpu", "fuse", self.variant, Speedup(2.5, 2.4, 2.6), "test",
                     measured_shape=dict(shape))
        roofline = {"unfused_ms": 1.0, "fused_ms": 0.4, "bound": "memory", "peak_gflops": 1.0, "peak_gbs": 1.0,
                    "basis": "test"}
        entry = Entry(pattern.name, "conv", pattern.title, dict(shape), dtype, "cpu", 1, 2, 1, 0.5, roofline,
                      [result("eager", "eager", 1.0), result(self.variant, "manual", 0.4)], d)
        return Lookup(entry, d)


def test_plain_analyze_counts_a_fold_after_a_graph_break(after_a_break):
    model, _ = after_a_break["fold"]
    result = analyze(model, (X,), DecideEveryConv("bn_folded"), time_forward=False)
    assert [o.verdict for o in result.outcomes] == ["fuse", "fuse"]
    assert [o.not_applied for o in result.outcomes] == [None, None]
    assert result.summary()["saved_ms_per_forward"] == pytest.approx(2 * 0.6)


def test_plain_analyze_leaves_out_the_saving_of_a_site_apply_cannot_rewrite():
    class SamePadding(nn.Module):  # F.conv2d(padding="same") is aten.conv2d.padding: the fused call wants numbers
        def __init__(self):
            super().__init__()
            self.w, self.bn = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.2), nn.BatchNorm2d(8)

        def forward(self, x):
            return F.relu(self.bn(F.conv2d(x, self.w, padding="same")))

    model = with_statistics(SamePadding())
    result = analyze(model, (IMG,), DecideEveryConv("conv_relu_fused"), time_forward=False)
    [o] = result.outcomes
    assert o.verdict == "fuse" and o.saved_ms == pytest.approx(0.6)
    assert o.not_applied == "the fused conv+activation kernels take 1-d and 2-d convolutions with explicit padding only"
    assert any(w.startswith("--apply cannot apply it (the fused conv+activation") for w in o.warnings)
    summary = result.to_dict()["summary"]
    assert summary["fuse"] == 1 and summary["saved_ms_per_forward"] == 0 and summary["bytes_saved_per_forward"] == 0
    folded = analyze(model, (IMG,), DecideEveryConv("bn_folded"), time_forward=False)  # the fold takes any padding
    assert folded.outcomes[0].not_applied is None and folded.summary()["saved_ms_per_forward"] == pytest.approx(0.6)


# -- CUDA (skipped without a GPU) ----------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_conv_rewrites_fold_fuse_relu_in_cudnn_and_refuse_other_fused_activations():
    model = block(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()).cuda()
    x = IMG.cuda()
    planned = apply(model, plan_for(model, (x,), lambda s: "conv_relu_fused"))
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    assert ops(planned).count(aten.cudnn_convolution_relu.default) == 1
    assert relative_error(planned(x), copy.deepcopy(model).double()(x.double())) < 5e-3  # TF32 convs
    model1d, x1d = block(nn.Conv1d(8, 8, 5, padding=2), None, nn.ReLU()).cuda(), torch.randn(2, 8, 12).cuda()
    planned = apply(model1d, plan_for(model1d, (x1d,), lambda s: "conv_relu_fused"))  # as a 2-d conv of height 1
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    assert ops(planned).count(aten.cudnn_convolution_relu.default) == 1
    assert relative_error(planned(x1d), copy.deepcopy(model1d).double()(x1d.double())) < 5e-3
    model = block(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()).cuda()
    for variant, applied in (("conv_hardswish_fused", False), ("channels_last", True), ("bn_folded", True)):
        planned = apply(model, plan_for(model, (x,), lambda s: variant))
        [record] = planned.fxfusion_rewrites
        assert record.applied == applied, record.detail
        if applied:
            assert relative_error(planned(x), copy.deepcopy(model).double()(x.double())) < 5e-3
        else:
            assert "cudnn_convolution_relu takes ReLU only" in record.detail
