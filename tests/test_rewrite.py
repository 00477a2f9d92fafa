"""Applying plans: each rewrite rule's structure (which nodes go, which come) and its numbers against float64.

Plans here are made from hand-written decisions (every legal site decided ``fuse`` with a named variant), so the
tests pin what a rewrite does, not what this machine happened to measure.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxfusion
from fxfusion.graph.sites import Flag
from fxfusion.graph.capture import capture
from fxfusion.measure.correctness import relative_error
from fxfusion.errors import FxFusionError
from fxfusion.graph.lean import original_target
from fxfusion.graph.nodes import arg
from fxfusion.graph.loader import load_model
from fxfusion.fusions.match import find_sites
from fxfusion.planning.plan import FusionGroup, FusionPlan
from fxfusion.profiles.profile import Decision
from fxfusion.planning.rewrite import captured_module, rewrite_group
from fxfusion.planning.apply import apply
from tests.helpers import with_statistics
from fxfusion.fusions.compiled import CompiledRegion
from fxfusion.fusions.registry import rewrite_for

MODELS = Path(__file__).resolve().parent.parent / "models"
aten = torch.ops.aten

# Relative L2 error against float64 allowed for a float32 rewrite: reassociated GEMM/conv accumulations and
# BatchNorm folded in float32 stay near 1e-6; 1e-4 leaves room for reductions over ~1e5 terms.
FLOAT32_TOL = 1e-4


def decide_all(sites, variant_of) -> dict[str, Decision]:
    """Every legal site decided 'fuse' with the variant ``variant_of(site)`` (None: leave the site undecided)."""
    out = {}
    for s in sites:
        v = variant_of(s)
        if s.legal and v is not None:
            out[s.id] = Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", v, None, "test decision")
    return out


def plan_for(model, inputs, variant_of) -> FusionPlan:
    captured = capture(model, inputs)
    sites = find_sites(captured)
    return FusionPlan.from_decisions(captured, sites, decide_all(sites, variant_of))


def float64_error(model, planned, inputs) -> float:
    ref_model = copy.deepcopy(model).double()
    with torch.no_grad():
        ref = ref_model(*[x.double() if x.is_floating_point() else x for x in inputs])
        got = planned(*inputs)
    return relative_error(got, ref)


def targets(gm) -> list:
    """The aten ops a planned graph calls (a lean call counts as the overload it stands for)."""
    return [original_target(n) for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def applied(planned) -> list[str]:
    return [r.variant for r in planned.fxfusion_rewrites if r.applied]


# -- linear --------------------------------------------------------------------------------------------------------

class Linears(nn.Module):
    """One linear+bias(+act) site per way of writing it."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.fc = nn.Linear(16, 8)
        self.R = nn.Parameter(torch.randn(16, 8) * 0.25)

    def forward(self, x):  # x: (2, 4, 16)
        w, b = self.fc.weight, self.fc.bias
        if self.form == "x @ W.T + b, ReLU":
            return torch.relu(x @ w.t() + b)
        if self.form == "x @ R + b, SiLU":
            return F.silu(x @ self.R + b)
        if self.form == "F.linear(x, W) + b, GELU(tanh)":
            return F.gelu(F.linear(x, w) + b, approximate="tanh")
        if self.form == "mm on flattened x, view, + b, ReLU":
            return torch.relu(torch.mm(x.reshape(-1, 16), w.t()).view(2, 4, 8) + b)
        raise AssertionError(self.form)


LINEAR_FORMS = ["x @ W.T + b, ReLU", "x @ R + b, SiLU", "F.linear(x, W) + b, GELU(tanh)",
                "mm on flattened x, view, + b, ReLU"]


@pytest.mark.parametrize("form", LINEAR_FORMS)
def test_linear_chain_becomes_one_addmm(form):
    torch.manual_seed(0)
    model, x = Linears(form).eval(), torch.randn(2, 4, 16)
    plan = plan_for(model, (x,), lambda s: "addmm")
    assert [g.pattern.startswith("linear_bias_") for g in plan.groups] == [True]
    planned = apply(model, plan)
    assert applied(planned) == ["addmm"]
    planned.graph.lint()
    ops = targets(planned)
    assert ops.count(aten.addmm.default) == 1
    assert aten.add.Tensor not in ops and aten.matmul.default not in ops and aten.mm.default not in ops
    assert float64_error(model, planned, (x,)) < FLOAT32_TOL


def test_linear_with_bias_in_gemm_is_no_gain_for_addmm():
    """nn.Linear already runs addmm: a plan whose winner is addmm refuses the site instead of rewriting nothing."""
    model = nn.Sequential(nn.Linear(16, 8), nn.GELU()).eval()
    plan = plan_for(model, (torch.randn(4, 16),), lambda s: "addmm")
    assert plan.groups == []
    assert [(r.why, r.pattern) for r in plan.refused] == [("no_gain", "linear_bias_gelu")]


# -- conv + BatchNorm ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_file", ["resnet_bottleneck", "mobilenet_block", "resnet_basic"])
def test_batchnorm_folded_into_every_conv(model_file):
    loaded = load_model(MODELS / f"{model_file}.py")
    model, inputs = with_statistics(loaded.model), loaded.example_inputs
    plan = plan_for(model, inputs, lambda s: "bn_folded")
    planned = apply(model, plan)
    assert len(plan.groups) == len(applied(planned)) >= 2
    planned.graph.lint()
    assert aten.batch_norm.default not in targets(planned)
    convs = [n for n in planned.graph.nodes if original_target(n) == aten.conv2d.default]
    assert all(n.args[1].target.startswith("_fxfusion_") for n in convs)  # every conv reads folded weights
    assert float64_error(model, planned, inputs) < FLOAT32_TOL


def test_conv1d_batchnorm_folded():
    model = with_statistics(nn.Sequential(nn.Conv1d(4, 6, 3, padding=1, bias=False), nn.BatchNorm1d(6), nn.ReLU()))
    x = torch.randn(2, 4, 10)
    planned = apply(model, plan_for(model, (x,), lambda s: "bn_folded"))
    assert applied(planned) == ["bn_folded"] and aten.batch_norm.default not in targets(planned)
    assert float64_error(model, planned, (x,)) < FLOAT32_TOL


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN for the fused conv+ReLU on CPU")
def test_conv_bn_relu_becomes_one_onednn_call():
    loaded = load_model(MODELS / "mobilenet_block.py")
    model, inputs = with_statistics(loaded.model), loaded.example_inputs
    planned = apply(model, plan_for(model, inputs, lambda s: "conv_relu_fused"))
    assert applied(planned) == ["conv_relu_fused", "conv_relu_fused"]
    ops = targets(planned)
    assert ops.count(torch.ops.mkldnn._convolution_pointwise.default) == 2
    assert aten.relu.default not in ops and aten.relu_.default not in ops and aten.batch_norm.default not in ops
    assert float64_error(model, planned, inputs) < FLOAT32_TOL


def test_channels_last_chain_converts_its_input_once():
    model = with_statistics(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                           nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 8, 8)
    planned = apply(model, plan_for(model, (x,), lambda s: "channels_last"))
    assert applied(planned) == ["channels_last", "channels_last"]
    conversions = [n for n in planned.graph.nodes if original_target(n) == aten.contiguous.default]
    assert len(conversions) == 2 and all(n.kwargs["memory_format"] == torch.channels_last for n in conversions)
    with torch.no_grad():
        out = planned(x)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the second conversion found NHWC: no copy
    assert float64_error(model, planned, (x,)) < FLOAT32_TOL


def test_reused_conv_is_never_folded_and_its_other_path_is_unchanged():
    loaded = load_model(MODELS / "shared_conv.py")
    model, inputs = loaded.model, loaded.example_inputs
    plan = plan_for(model, inputs, lambda s: "bn_folded")
    illegal = [r for r in plan.refused if r.why == "illegal"]
    assert len(illegal) == 2 and all("104593" in r.reasons[0] for r in illegal)
    assert [g.pattern for g in plan.groups] == ["conv2d_bn_relu"]  # the unshared head
    planned = apply(model, plan)
    assert applied(planned) == ["bn_folded"]
    shared = [n for n in planned.graph.nodes if original_target(n) == aten.conv2d.default and original_target(n.args[1]) == "conv.weight"]
    assert len(shared) == 2  # both paths still run the shared conv, on its own weights ...
    assert torch.equal(planned.conv.weight, model.conv.weight)  # ... which are untouched
    assert float64_error(model, planned, inputs) < FLOAT32_TOL


def test_a_forced_fold_into_the_reused_conv_is_refused_by_the_rewrite_itself():
    """Defence in depth: even a group the matcher would refuse is checked again where the rewrite happens."""
    loaded = load_model(MODELS / "shared_conv.py")
    captured = capture(loaded.model, loaded.example_inputs)
    sites = find_sites(captured)
    for s in sites:  # pretend the matcher had found every site legal
        s.status, s.reasons = "fusible", []
    plan = FusionPlan.from_decisions(captured, sites, decide_all(sites, lambda s: "bn_folded"))
    planned = apply(loaded.model, plan)
    records = {r.site_id: r for r in planned.fxfusion_rewrites}
    assert not records["g0.s0"].applied and "104593" in records["g0.s0"].detail
    assert not records["g0.s1"].applied and records["g0.s2"].applied
    assert float64_error(loaded.model, planned, loaded.example_inputs) < FLOAT32_TOL


def test_training_mode_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)).train()
    plan = plan_for(model, (torch.randn(2, 3, 8, 8),), lambda s: "bn_folded")
    assert plan.groups == [] and [r.why for r in plan.refused] == ["illegal"]
    assert "training mode" in plan.refused[0].reasons[0]


# -- attention -----------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form

    def forward(self, q, k, v, keep, additive):  # q, k, v: (B, H, S, D); keep: (S, S) bool; additive: (S, S)
        s = q @ k.transpose(-2, -1)
        if self.form == "scale, then -inf mask":
            s = (s / math.sqrt(q.shape[-1])).masked_fill(~keep, float("-inf"))
        elif self.form == "-inf mask, then scale":
            s = s.masked_fill(~keep, float("-inf")) * 0.25
        elif self.form == "scale, then finite fill":
            s = (s * 0.25).masked_fill(~keep, -1e9)
        elif self.form == "additive mask, then scale":
            s = (s + additive) * 0.3
        elif self.form == "no mask, eval dropout":
            s = s / 8.0
        p = F.dropout(torch.softmax(s, dim=-1), 0.1, training=False)
        return p @ v


ATTENTION_FORMS = ["scale, then -inf mask", "-inf mask, then scale", "scale, then finite fill",
                   "additive mask, then scale", "no mask, eval dropout"]


def attention_inputs(S=8):
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(2, 2, S, 4, generator=g) for _ in range(3)]
    keep = torch.ones(S, S, dtype=torch.bool).tril()
    return (*qkv, keep, torch.randn(S, S, generator=g))


@pytest.mark.parametrize("form", ATTENTION_FORMS)
def test_attention_chain_becomes_one_sdpa(form):
    model, inputs = Attention(form).eval(), attention_inputs()
    planned = apply(model, plan_for(model, inputs, lambda s: "sdpa"))
    assert applied(planned) == ["sdpa"]
    planned.graph.lint()
    ops = targets(planned)
    assert ops.count(aten.scaled_dot_product_attention.default) == 1
    assert not {aten.softmax.int, aten.matmul.default, aten.masked_fill.Scalar} & set(ops)
    assert float64_error(model, planned, inputs) < FLOAT32_TOL


def test_scores_scale_folded_into_baddbmm_alpha():
    class Scores(nn.Module):
        def forward(self, q, k):
            return torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1)

    q, k = attention_inputs()[:2]
    model = Scores()
    planned = apply(model, plan_for(model, (q, k), lambda s: "baddbmm_scale"))
    assert applied(planned) == ["baddbmm_scale"]
    ops = targets(planned)
    assert ops.count(aten.baddbmm.default) == 1 and aten.div.Tensor not in ops
    alpha = next(n for n in planned.graph.nodes if original_target(n) == aten.baddbmm.default).kwargs["alpha"]
    assert alpha == pytest.approx(1 / 8.0)
    assert float64_error(model, planned, (q, k)) < FLOAT32_TOL


def test_constant_causal_mask_becomes_is_causal():
    """transformer_block masks with a buffer (tril, sliced, == 0): evaluated once, recognised, replaced by the flag,
    and the mask's slices and comparison are dropped from the graph."""
    loaded = load_model(MODELS / "transformer_block.py")
    plan = plan_for(loaded.model, loaded.example_inputs, lambda s: "sdpa" if "attention" in s.pattern else None)
    planned = apply(loaded.model, plan)
    assert applied(planned) == ["sdpa"]
    [sdpa] = [n for n in planned.graph.nodes if original_target(n) == aten.scaled_dot_product_attention.default]
    assert arg(sdpa, 3, "attn_mask") is None and arg(sdpa, 5, "is_causal") is True  # no attn_mask, is_causal
    assert aten.eq.Scalar not in targets(planned) and "attn.mask" not in {original_target(n) for n in planned.graph.nodes}
    assert float64_error(loaded.model, planned, loaded.example_inputs) < FLOAT32_TOL


def test_a_mask_given_as_input_stays_an_explicit_mask():
    model, inputs = Attention("scale, then -inf mask").eval(), attention_inputs()
    planned = apply(model, plan_for(model, inputs, lambda s: "sdpa"))
    [sdpa] = [n for n in planned.graph.nodes if original_target(n) == aten.scaled_dot_product_attention.default]
    assert arg(sdpa, 3, "attn_mask") is not None and not arg(sdpa, 5, "is_causal", False)  # a run-time mask


# -- norms ---------------------------------------------------------------------------------------------------------

def test_written_rmsnorm_becomes_rms_norm_op():
    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(16) + 0.5)

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight

    model, x = RMSNorm(), torch.randn(4, 16)
    planned = apply(model, plan_for(model, (x,), lambda s: "rms_norm_op"))
    assert applied(planned) == ["rms_norm_op"]
    ops = targets(planned)
    assert ops.count(aten.rms_norm.default) == 1 and aten.rsqrt.default not in ops
    assert float64_error(model, planned, (x,)) < FLOAT32_TOL


class PreNormStep(nn.Module):
    """A pre-LN residual step: h = x + residual, normalised (LayerNorm or Llama's RMSNorm written out) and read again
    by the next residual add; ``early`` also reads h before the norm runs."""

    def __init__(self, norm: str, early: bool = False):
        super().__init__()
        self.norm, self.early = norm, early
        self.ln = nn.LayerNorm(16)
        self.weight = nn.Parameter(torch.rand(16) + 0.5)
        self.fc = nn.Linear(16, 16)

    def rms(self, h):  # transformers' LlamaRMSNorm, verbatim
        input_dtype = h.dtype
        hidden_states = h.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + 1e-6)
        return self.weight * hidden_states.to(input_dtype)

    def forward(self, x, residual):  # (2, 4, 16) each
        h = x + residual
        z = h * 2.0 if self.early else h
        y = self.ln(h) if self.norm == "layernorm" else self.rms(h)
        return z + self.fc(y)


def _with_torch_twins(monkeypatch):
    """The Triton variants' rewrites, unchanged, with the kernels' torch twins in their place (kernels need CUDA)."""
    from fxfusion.fusions.norm import kernels, rewrite
    from tests.helpers import replace_rewrite

    replace_rewrite(monkeypatch, "triton_add_layernorm_sum", lambda _: lambda gm, nodes, group: (
        rewrite.rewrite_add_layernorm_sum(gm, nodes, group, kernels.add_layernorm_sum_reference)))
    replace_rewrite(monkeypatch, "triton_add_rmsnorm_sum", lambda _: lambda gm, nodes, group: (
        rewrite.rewrite_add_rmsnorm_sum(gm, nodes, group, kernels.add_rmsnorm_sum_reference)))
    return kernels


@pytest.mark.parametrize("norm, dtype, early", [("layernorm", torch.float32, False), ("rmsnorm", torch.float32, False),
                                                ("rmsnorm", torch.bfloat16, False), ("layernorm", torch.float32, True)])
def test_pre_ln_sum_and_norm_are_both_rewired_to_one_two_output_call(monkeypatch, norm, dtype, early):
    kernels = _with_torch_twins(monkeypatch)
    g = torch.Generator().manual_seed(0)
    model = PreNormStep(norm, early).to(dtype).eval()
    inputs = tuple(torch.randn(2, 4, 16, generator=g).to(dtype) for _ in range(2))
    pattern, variant, twin = {"layernorm": ("add_layernorm_sum", "triton_add_layernorm_sum",
                                            kernels.add_layernorm_sum_reference),
                              "rmsnorm": ("add_rmsnorm_sum", "triton_add_rmsnorm_sum",
                                          kernels.add_rmsnorm_sum_reference)}[norm]
    plan = plan_for(model, inputs, lambda s: variant if s.pattern == pattern else None)
    assert [g.pattern for g in plan.groups] == [pattern]
    planned = apply(model, plan)
    assert applied(planned) == [variant]
    planned.graph.lint()
    ops = targets(planned)
    [call] = [n for n in planned.graph.nodes if n.target is twin]
    h, y = sorted(call.users, key=lambda n: n.args[1])
    assert [n.args[1] for n in (h, y)] == [0, 1] and ops.count(twin) == 1
    assert not {aten.layer_norm.default, aten.rsqrt.default, aten.pow.Tensor_Scalar, aten.mean.dim} & set(ops)
    assert ops.count(aten.add.Tensor) == 1  # the next residual add: it reads the fused sum
    # the sum's reader (the next residual add, or the h * 2 that comes before the norm) reads the fused sum
    assert [original_target(u) for u in h.users] == [aten.mul.Tensor if early else aten.add.Tensor]
    assert [original_target(u) for u in y.users] == [aten.linear.default]
    assert float64_error(model, planned, inputs) < (FLOAT32_TOL if dtype == torch.float32 else 2e-2)


def test_triton_sum_rewrites_refuse_off_cuda_and_leave_the_graph_as_it_was():
    for norm, variant in (("layernorm", "triton_add_layernorm_sum"), ("rmsnorm", "triton_add_rmsnorm_sum")):
        model, inputs = PreNormStep(norm).eval(), (torch.randn(2, 4, 16), torch.randn(2, 4, 16))
        plan = plan_for(model, inputs, lambda s: variant if s.pattern.endswith("_sum") else None)
        [group] = plan.groups
        gm = captured_module(model, plan.captured)
        code = gm.code
        record = rewrite_group(gm, group)
        assert not record.applied and record.detail.endswith("is a Triton kernel, for CUDA only") and gm.code == code


# -- torch.compile regions, Dynamo captures ------------------------------------------------------------------------

@pytest.mark.slow
def test_compile_variant_runs_the_group_as_a_compiled_region():
    """One Inductor compile (a few seconds on 2 cores): the group becomes a submodule run through torch.compile."""
    model = nn.Sequential(nn.Linear(16, 8), nn.GELU()).eval()
    x = torch.randn(4, 16)
    planned = apply(model, plan_for(model, (x,), lambda s: "compile"))
    assert applied(planned) == ["compile"]
    regions = [m for m in planned.modules() if isinstance(m, CompiledRegion)]
    assert len(regions) == 1 and {n.target for n in regions[0].region.graph.nodes if n.op == "call_function"} == {
        aten.linear.default, aten.gelu.default}
    assert [n.op for n in planned.graph.nodes if n.op == "call_module" and not n.target.startswith("_")] == ["call_module"]
    assert float64_error(model, planned, (x,)) < FLOAT32_TOL


@pytest.mark.slow
def test_compile_variant_gives_the_pre_ln_site_a_region_with_two_outputs():
    """One Inductor compile: Llama's add + RMSNorm (its sum read again) becomes a compiled region returning the sum and
    the normalised value, both rewired; the float32 h.to(float32) that export makes the next add read goes with it."""
    model, inputs = PreNormStep("rmsnorm").eval(), (torch.randn(2, 4, 16), torch.randn(2, 4, 16))
    plan = plan_for(model, inputs, lambda s: "compile" if s.pattern == "add_rmsnorm_sum" else None)
    planned = apply(model, plan)
    assert applied(planned) == ["compile"]
    [region] = [m for m in planned.modules() if isinstance(m, CompiledRegion)]
    outputs = region.region.graph.output_node().args[0]
    assert isinstance(outputs, tuple) and len(outputs) == 2
    [call] = [n for n in planned.graph.nodes if n.op == "call_module" and n.target.startswith("fxfusion_region")]
    assert sorted(u.args[1] for u in call.users) == [0, 1]
    ops = targets(planned)
    assert aten.rsqrt.default not in ops and ops.count(aten.add.Tensor) == 1
    assert float64_error(model, planned, inputs) < FLOAT32_TOL


def test_dynamo_capture_applies_each_subgraph_by_replay():
    loaded = load_model(MODELS / "dynamic_control.py")
    model, inputs = loaded.model, loaded.example_inputs
    plan = plan_for(model, inputs, lambda s: "addmm_epilogue" if s.pattern.endswith("relu") else "compile")
    assert plan.captured.method == "dynamo" and len(plan.captured.graphs) == 2
    # addmm_epilogue is cuBLASLt-only: on this CPU the rewrite says so and the group runs unchanged
    planned = apply(model, plan)
    records = {r.site_id: r for r in planned.fxfusion_rewrites}
    assert set(records) == {"g0.s0", "g1.s0"}
    if not torch.cuda.is_available():
        assert not records["g0.s0"].applied and "CUDA" in records["g0.s0"].detail
    assert float64_error(model, planned, inputs) < FLOAT32_TOL
    assert planned.fxfusion_backend.calls == 2 and planned.fxfusion_backend.mismatches == []


# -- the contract --------------------------------------------------------------------------------------------------

def test_original_model_and_plan_are_not_modified():
    loaded = load_model(MODELS / "resnet_bottleneck.py")
    model, inputs = with_statistics(loaded.model), loaded.example_inputs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_for(model, inputs, lambda s: "bn_folded")
    code = plan.captured.graphs[0].code
    first, second = apply(model, plan), apply(model, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert plan.captured.graphs[0].code == code
    with torch.no_grad():
        assert torch.equal(first(*inputs), second(*inputs))
    assert first is not second and all(a is not b for a, b in zip(first.parameters(), model.parameters()))


def test_a_rule_that_does_not_fit_leaves_the_graph_as_it_was():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval()
    plan = plan_for(model, (torch.randn(4, 16),), lambda s: "sdpa")  # the wrong variant for a linear site
    assert plan.groups == [] and [r.why for r in plan.refused] == ["no_rewrite"]
    # an attention pattern's sdpa rule handed a linear site's nodes
    group = FusionGroup(id="g0.s0", pattern="full_attention", graph_index=0, nodes=list(plan.sites[0].nodes),
                        variant="sdpa", baseline_variant="addmm", speedup=None, predicted_saving_ms=None,
                        baseline_ms=None, variant_ms=None, decision=None, shape={}, dtype="float32")
    gm = captured_module(model, plan.captured)
    code = gm.code
    record = rewrite_group(gm, group)  # the rule itself refuses, before inserting anything
    assert not record.applied and record.detail == "the group has no softmax"
    assert gm.code == code


def test_planned_graph_checks_its_inputs():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval()
    plan = plan_for(model, (torch.randn(4, 16),), lambda s: None)
    gm = captured_module(model, plan.captured)
    with pytest.raises(FxFusionError, match=r"input 0 is \(5, 16\) torch.float32, but the planned model was captured "
                                            r"for \(4, 16\)"):
        gm(torch.randn(5, 16))


def test_no_groups_gives_a_copy_of_the_model():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval()
    plan = plan_for(model, (torch.randn(4, 16),), lambda s: None)
    planned = fxfusion.apply(model, plan)
    assert isinstance(planned, nn.Sequential) and planned is not model and planned.fxfusion_rewrites == []


def test_every_profile_variant_of_the_library_has_a_rule_or_is_the_baseline():
    from fxfusion.fusions.registry import REGISTRY
    from fxfusion.calibration.variants import COMPILE_MODES

    missing = [(p.name, v) for p in REGISTRY.values() for v in [mv.name for mv in p.manual] + list(COMPILE_MODES)
               if rewrite_for(p.name, v) is None]
    assert missing == []


def test_bad_arguments_fail_with_one_line():
    model = nn.Linear(4, 4)
    with pytest.raises(FxFusionError, match="takes a FusionPlan"):
        apply(model, {"groups": []})
    plan = plan_for(model.eval(), (torch.randn(2, 4),), lambda s: None)
    with pytest.raises(FxFusionError, match="nn.Module"):
        apply("model.py", plan)


# -- other shapes ----------------------------------------------------------------------------------------------------

def test_planned_model_at_other_shapes_errors_or_runs_the_original():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    captured = capture(model, (x,))
    [site] = find_sites(captured)
    plan = FusionPlan.from_decisions(captured, [site], {site.id: Decision(site.pattern, dict(site.shape), "float32",
                                                                          "cpu", "fuse", "bn_folded", None, "hand")})
    other = torch.randn(5, 3, 8, 8)
    strict = apply(model, plan)
    with pytest.raises(FxFusionError, match="plan it again"):
        strict(other)
    dispatch = apply(model, plan, other_shapes="original")
    with torch.no_grad():
        torch.testing.assert_close(dispatch(x), model(x))
        assert applied(dispatch) == ["bn_folded"]
        with pytest.warns(UserWarning, match="running the original model, unfused"):
            torch.testing.assert_close(dispatch(other), model(other))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per signature
            dispatch(other)
    with pytest.raises(FxFusionError, match="other_shapes must be one of"):
        apply(model, plan, other_shapes="pad")


# -- a linear with its activation written out (GPT-2's NewGELU) ----------------------------------------------------

class _NewGELULinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(32, 16) * 0.2), nn.Parameter(torch.randn(32) * 0.1)

    def forward(self, x):
        h = x @ self.w.T + self.b
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))


def test_written_out_gelu_site_is_rewritten_and_verified():
    model, inputs = _NewGELULinear().eval(), (torch.randn(2, 4, 16),)
    plan = plan_for(model, inputs, lambda s: "addmm")
    [group] = plan.groups
    assert group.pattern == "linear_bias_gelu_tanh" and Flag.ACT_WRITTEN in group.flags
    planned = fxfusion.apply(model, plan)
    assert applied(planned) == ["addmm"]
    ops = targets(planned)
    # one addmm with the bias inside; the eight elementwise ops of the activation stay, reading its result
    assert ops.count(aten.addmm.default) == 1 and aten.matmul.default not in ops
    assert ops.count(aten.tanh.default) == 1 and ops.count(aten.pow.Tensor_Scalar) == 1
    assert float64_error(model, planned, inputs) < 1e-5


def test_epilogue_takes_a_written_out_gelu_only_on_cuda():
    from fxfusion.graph.edit import NotApplicable

    loaded = load_model(MODELS / "gpt2_mlp.py")
    plan = plan_for(loaded.model, loaded.example_inputs,
                    lambda s: "addmm_epilogue" if s.pattern == "linear_bias_gelu_tanh" else None)
    [group] = plan.groups
    gm = runnable_graph_for(plan, loaded.model)
    record = rewrite_group(gm, group)
    assert not record.applied and "only in cuBLASLt" in record.detail
    assert issubclass(NotApplicable, Exception)


def runnable_graph_for(plan, model):
    from fxfusion.planning.rewrite import runnable_graph

    return runnable_graph(plan.captured, 0, model)
