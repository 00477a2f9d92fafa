"""Sibling GEMMs (q/k/v, gate/up) merged into one GEMM, and gated MLPs: which sites, which nodes, what the rewrite
leaves in the graph, and its numbers against float64 -- on hand-written blocks (the transformers models are checked in
tests/test_hf_models.py)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxfusion
from fxfusion.graph.sites import Flag
from fxfusion.planning.prediction import Context
from fxfusion.calibration.calibrate import measure_entry
from fxfusion.fusions.match import find_sites
from fxfusion.fusions.registry import REGISTRY
from fxfusion.graph.capture import capture
from fxfusion.graph.lean import original_target
from fxfusion.graph.loader import import_file
from fxfusion.graph.runnable import runnable_graph
from fxfusion.measure.correctness import relative_error, to_reference
from fxfusion.measure.hardware import resolve
from fxfusion.measure.kernelcount import count_launches
from fxfusion.measure.stats import Speedup
from fxfusion.measure.timing import TimingSpec, clock_for
from fxfusion.planning.plan import FusionGroup, FusionPlan
from fxfusion.planning.rewrite import rewrite_group
from fxfusion.profiles.profile import Decision, Entry, Profile, VariantResult, entry_to_dict
from fxfusion.profiles.schema import entry_errors
from tests.helpers import TINY_SPEC, OpCountClock

aten = torch.ops.aten
FLOAT32_TOL = 1e-4  # relative L2 against float64 (measure.correctness: float32)
GEMMS = (aten.linear.default, aten.mm.default, aten.addmm.default)


LLAMA = import_file(Path(__file__).resolve().parent.parent / "models" / "llama_block.py")


def block(**changes) -> nn.Module:
    """models/llama_block.py's tiny Llama-style block (GQA: 4 heads, 2 kv heads), changed as asked."""
    return LLAMA.get_model(dataclasses.replace(LLAMA.PRESETS["tiny"], **changes))


X = LLAMA.get_inputs()[0]  # (2, 8, 32)
ATTN = "layers.0.self_attn"
X8 = X[..., :8].contiguous()


def sites_of(model, *inputs):
    captured = capture(model.eval(), inputs)
    return captured, find_sites(captured)


def mine(sites):
    return [s for s in sites if REGISTRY[s.pattern].family == "sibling"] if sites else []


def merged_plan(model, inputs, device="cpu") -> tuple[FusionPlan, list]:
    """Every sibling/gated site decided 'fuse' with the merged variant (hand-made decisions)."""
    captured, sites = sites_of(model, *inputs)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, device, "fuse", "merged", None, "test")
                 for s in mine(sites) if s.legal}
    return FusionPlan.from_decisions(captured, sites, decisions), sites


def float64_error(model, planned, inputs) -> float:
    with torch.no_grad():
        return relative_error(planned(*inputs), copy.deepcopy(model).double()(*[x.double() for x in inputs]))


def targets(gm):
    return [original_target(n) for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def gemm_count(gm) -> int:
    return sum(t in GEMMS for t in targets(gm))


# -- matching ------------------------------------------------------------------------------------------------------

def test_llama_block_qkv_and_gate_up_are_one_site_each():
    _, sites = sites_of(block(), X)
    assert [(s.pattern, s.status) for s in mine(sites)] == [("sibling_gemm3", "fusible"),
                                                           ("gated_mlp_silu", "fusible")]
    qkv, mlp = mine(sites)
    assert qkv.nodes == ["linear", "linear_1", "linear_2"]
    assert qkv.shape == {"M": 16, "K": 32, "N1": 32, "N2": 16, "N3": 16}  # GQA: k and v half as wide as q
    assert qkv.roles["weights"] == ",".join(f"{ATTN}.{p}_proj.weight" for p in "qkv")
    assert qkv.roles["widths"] == "32,16,16"
    assert qkv.written_as == "3 x nn.Linear on one input (q_proj, k_proj, v_proj)"
    assert mlp.nodes == ["linear_4", "silu", "linear_5", "mul_4"] and mlp.shape == {"M": 16, "K": 32, "N": 64}
    assert (mlp.roles["gate_param"], mlp.roles["up_param"]) == ("layers.0.mlp.gate_proj.weight",
                                                                "layers.0.mlp.up_proj.weight")
    # o_proj feeds the residual add and RMSNorm after it: one site with them; down_proj, whose sum only the block's
    # output reads, is a lone bias-free GEMM, left to the linear family, which has nothing to fuse there
    assert [(s.pattern, s.roles.get("proj_weight_param")) for s in sites if s.pattern.startswith("linear")] == [
        ("linear_add_rmsnorm_sum", f"{ATTN}.o_proj.weight")]


@pytest.mark.parametrize("qkv_bias,pattern,noted", [("all", "sibling_gemm3_bias", False),
                                                     ("q", "sibling_gemm3_bias", True)])
def test_qkv_with_biases_merge_and_a_missing_bias_is_zeros(qkv_bias, pattern, noted):
    _, sites = sites_of(block(qkv_bias=qkv_bias), X)
    qkv = mine(sites)[0]
    assert (qkv.pattern, qkv.status) == (pattern, "fusible")
    biases = ",".join(f"{ATTN}.{p}_proj.bias" for p in "qkv") if qkv_bias == "all" else f"{ATTN}.q_proj.bias,,"
    assert qkv.roles["biases"] == biases
    assert any("k_proj, v_proj have no bias: zeros are concatenated for them" in n for n in qkv.notes) == noted


class Siblings(nn.Module):
    def __init__(self, n=4, fn=None):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(8, 8 + 4 * i, bias=False) for i in range(n))
        self.fn = fn

    def forward(self, x):
        return self.fn(self, x)


def test_siblings_must_read_the_very_same_input_node_and_parameter_weights():
    def two_inputs(m, x):  # the same values, but another node: two GEMMs would still read two tensors
        return m.fcs[0](x), m.fcs[1](x * 1.0)

    def computed_weight(m, x):  # a weight computed in the graph is no constant to concatenate at load
        return m.fcs[0](x), F.linear(x, m.fcs[1].weight * 2.0)

    for fn in (two_inputs, computed_weight):
        captured, sites = sites_of(Siblings(2, fn), X8)
        assert sites == [] and captured.unmatched.get("aten.linear.default") == 2


def test_more_siblings_than_a_pattern_takes_leave_the_rest_to_the_linear_family():
    def four(m, x):
        return m.fcs[0](x), m.fcs[1](x), m.fcs[2](x), F.relu(m.fcs[3](x))

    _, sites = sites_of(Siblings(4, four), X8)
    assert [(s.pattern, s.nodes) for s in sites] == [("sibling_gemm3", ["linear", "linear_1", "linear_2"]),
                                                     ("linear_relu", ["linear_3", "relu"])]
    assert "4 GEMMs read x" in sites[0].notes[0]


def test_outputs_read_anywhere_are_recreated_and_a_view_that_needs_memory_gets_a_copy():
    def reused(m, x):  # fcs[0]'s output is read twice, once flattened whole: a slice's strides cannot do that
        a, b = m.fcs[0](x), m.fcs[1](x)
        return a.view(-1), a * 2.0, b.view(2, 8, 3, 4)

    model = Siblings(2, reused).eval()
    plan, sites = merged_plan(model, (X8,))
    assert [(s.pattern, s.status) for s in sites] == [("sibling_gemm2", "fusible")]
    planned = fxfusion.apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    planned.graph.lint()
    ops = targets(planned)
    assert gemm_count(planned) == 1 and ops.count(aten.slice.Tensor) == 2
    assert ops.count(aten.contiguous.default) == 1  # only a's slice is copied; b's view splits its last dim only
    with torch.no_grad():
        got, want = planned(X8), copy.deepcopy(model).double()(X8.double())
    assert all(relative_error(g, w) < FLOAT32_TOL for g, w in zip(got, want))


class WrittenOut(nn.Module):
    """Siblings written as GEMMs: x @ Wq.T + bq, x @ Wk.T (no bias) and x @ R with R already (K, N)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.Wq = nn.Parameter(torch.randn(16, 8, generator=g) * 0.3)
        self.bq = nn.Parameter(torch.randn(16, generator=g))
        self.Wk = nn.Parameter(torch.randn(8, 8, generator=g) * 0.3)
        self.R = nn.Parameter(torch.randn(8, 4, generator=g) * 0.3)

    def forward(self, x):
        return x @ self.Wq.T + self.bq, x @ self.Wk.T, x @ self.R


def test_siblings_written_as_matmuls_become_one_linear_with_the_biases():
    model, x = WrittenOut().eval(), X8
    plan, sites = merged_plan(model, (x,))
    assert [(s.pattern, s.nodes) for s in sites] == [
        ("sibling_gemm3_bias", ["numpy_t", "matmul", "add", "numpy_t_1", "matmul_1", "matmul_2"])]
    assert sites[0].roles["widths"] == "16,8,4"
    planned = fxfusion.apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    ops = targets(planned)
    assert ops.count(aten.linear.default) == 1 and aten.matmul.default not in ops and aten.add.Tensor not in ops
    with torch.no_grad():
        got, want = planned(x), copy.deepcopy(model).double()(x.double())
    assert all(relative_error(g, w) < FLOAT32_TOL for g, w in zip(got, want))


def test_a_parallel_block_splits_its_readers_into_a_gated_site_and_qkv():
    class Parallel(nn.Module):  # attention and MLP read one norm's output (GPT-J / Cohere style)
        def __init__(self):
            super().__init__()
            cfg = LLAMA.PRESETS["tiny"]
            self.norm, self.attn, self.mlp = LLAMA.RMSNorm(cfg.dim), LLAMA.Attention(cfg), LLAMA.GatedMLP(cfg)

        def forward(self, x):
            h = self.norm(x)
            return x + self.attn(h) + self.mlp(h)

    _, sites = sites_of(Parallel(), X)
    assert [(s.pattern, s.nodes, s.notes) for s in mine(sites)] == [
        ("sibling_gemm3", ["linear", "linear_1", "linear_2"], []),
        ("gated_mlp_silu", ["linear_4", "silu", "linear_5", "mul_2"], [])]


# -- gated MLPs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act,pattern,written", [("gelu_tanh", "gated_mlp_gelu_tanh", False),
                                               ("gelu", "gated_mlp_gelu", False),
                                               ("gelu_tanh_written", "gated_mlp_gelu_tanh", True)])
def test_geglu_is_one_site_and_one_gemm(act, pattern, written):
    model = block(act=act).eval()
    plan, sites = merged_plan(model, (X,))
    gated = mine(sites)[1]
    assert (gated.pattern, gated.status) == (pattern, "fusible")
    assert (Flag.ACT_WRITTEN in gated.flags) == written
    planned = fxfusion.apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True, True]
    planned.graph.lint()
    assert gemm_count(planned) == 4  # q/k/v as one, gate/up as one, o_proj, down_proj
    assert float64_error(model, planned, (X,)) < FLOAT32_TOL


def test_a_gate_read_elsewhere_is_no_gated_site_but_still_siblings():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = LLAMA.GatedMLP(LLAMA.PRESETS["tiny"])

        def forward(self, x):
            g = self.mlp.gate_proj(x)
            return self.mlp.down_proj(F.silu(g) * self.mlp.up_proj(x)), g  # the gate's output leaves the MLP

    model = Leaky().eval()
    plan, sites = merged_plan(model, (X,))
    assert [(s.pattern, s.nodes) for s in sites] == [("sibling_gemm2", ["linear", "linear_1"])]
    planned = fxfusion.apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    assert aten.silu.default in targets(planned) and gemm_count(planned) == 2
    with torch.no_grad():
        got, want = planned(X), copy.deepcopy(model).double()(X.double())
    assert all(relative_error(g, w) < FLOAT32_TOL for g, w in zip(got, want))


def test_a_gated_mlp_with_biases_merges_as_siblings_with_a_note():
    _, sites = sites_of(block(mlp_bias=True), X)
    mlp = mine(sites)[1]
    assert mlp.pattern == "sibling_gemm2_bias" and mlp.nodes == ["linear_4", "linear_5"]
    assert any("gated MLP with biases" in n for n in mlp.notes)


# -- plan, in-model timing and apply: the public API -------------------------------------------------------------

def _entry(pattern: str, shape: dict) -> Entry:
    """A hand-made profile entry at ``shape``: merged twice as fast as eager."""
    def variant(name, kind, ms):
        return VariantResult(name=name, kind=kind, status="ok", median_ms=ms,
                             samples_ms=[ms * f for f in (0.98, 0.99, 1.0, 1.0, 1.01, 1.02)])

    d = Decision(pattern, dict(shape), "float32", "cpu", "fuse", "merged", Speedup(2.0, 1.9, 2.1), "hand-made",
                 measured_shape=dict(shape))
    roofline = {"unfused_ms": 1.0, "fused_ms": 0.5, "bound": "memory", "peak_gflops": 100.0, "peak_gbs": 20.0,
                "basis": "test"}
    return Entry(pattern, "sibling", REGISTRY[pattern].title, dict(shape), "float32", "cpu", 1, 1, 1, 0.5, roofline,
                 [variant("eager", "eager", 1.0), variant("merged", "manual", 0.5)], d)


def test_llama_block_planned_timed_in_model_and_applied(monkeypatch):
    model = block().eval()
    _, sites = sites_of(model, X)
    profile = Profile(metadata={"device": "cpu", "device_name": "test"}, hardware={}, ceilings={},
                      entries=[_entry(s.pattern, s.shape) for s in mine(sites)])
    monkeypatch.setattr("fxfusion.planning.insitu.model_clock", lambda device: OpCountClock())
    spec = TimingSpec(rounds=5, warmup=1, target_sample_s=0.0, max_inner=1, budget_s=5.0)
    plan = fxfusion.plan(model, profile, (X,), check_overhead=False, spec=spec, allow_foreign=True,  # a made-up profile
                         live=False)  # its GQA site, which the profile lacks, stays undecided (not this test's)
    assert [(g.pattern, g.variant) for g in plan.groups] == [("sibling_gemm3", "merged"), ("gated_mlp_silu", "merged")]
    # each region (three outputs for q/k/v) was cut out, rewritten and timed: fewer aten ops rewritten
    assert all(Context.EAGER in g.regions and g.regions[Context.EAGER].verdict == "fuse" for g in plan.groups)
    planned = fxfusion.apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True, True]
    planned.graph.lint()
    ops = targets(planned)
    assert gemm_count(planned) == 4 and ops.count(aten.slice.Tensor) == 3 + 2
    merged = [n for n in planned.graph.nodes if n.op == "get_attr" and "_fxfusion_" in str(original_target(n))]
    assert sorted(tuple(getattr(planned, n.target).shape) for n in merged) == [(64, 32), (128, 32)]
    assert float64_error(model, planned, (X,)) < FLOAT32_TOL
    # the planned model holds the merged weights instead of the separate ones; the user's model keeps its own
    held = {n for n, _ in planned.named_parameters()}
    assert not [n for n in held if any(f"{p}_proj" in n for p in "qkv")] and [n for n in held if "o_proj" in n]
    qkv = next(getattr(planned, n.target) for n in merged if getattr(planned, n.target).shape[0] == 64)
    q = model.get_parameter(f"{ATTN}.q_proj.weight")
    assert torch.equal(qkv[: q.shape[0]], q)  # the merged weight starts with the user's q_proj, which is untouched


def test_qwen_style_biases_become_one_linear_with_a_bias():
    model = block(qkv_bias="q").eval()
    plan, _ = merged_plan(model, (X,))
    planned = fxfusion.apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True, True]
    biased = [n for n in planned.graph.nodes if original_target(n) == aten.linear.default and len(n.args) > 2
              and n.args[2] is not None]
    assert len(biased) == 1  # q/k/v, with q's bias and zeros for k and v; gate/up, o and down have none
    assert float64_error(model, planned, (X,)) < FLOAT32_TOL


def test_a_forced_group_is_refused_with_its_reason():
    """Defence in depth: the rewrite checks again what the matcher checked, and says why it refuses."""
    def two_inputs(m, x):
        return m.fcs[0](x), m.fcs[1](x * 1.0)

    model = Siblings(2, two_inputs).eval()
    captured = capture(model, (X8,))
    gm = runnable_graph(captured, 0, model)
    group = FusionGroup("g0.s0", "sibling_gemm2", 0, ["linear", "linear_1"], "merged", "eager", None, None, None,
                        None, None, {}, "float32")
    record = rewrite_group(gm, group)
    assert not record.applied and "do not read the very same input node" in record.detail
    # in the captured graph the weights are inputs, not constants: nothing to concatenate at load
    _, [site] = sites_of(Siblings(2, lambda m, x: (m.fcs[0](x), m.fcs[1](x))), X8)
    lifted = copy.deepcopy(capture(Siblings(2, lambda m, x: (m.fcs[0](x), m.fcs[1](x))).eval(), (X8,))
                           .graphs[0])
    record = rewrite_group(lifted, FusionGroup(site.id, site.pattern, 0, site.nodes, "merged", "eager", None, None,
                                               None, None, None, {}, "float32"))
    assert not record.applied and "not a constant of the module" in record.detail


# -- the patterns ----------------------------------------------------------------------------------------------------

def test_sibling_and_gated_bytes_by_hand():
    p = REGISTRY["sibling_gemm3_bias"]
    s = {"M": 2, "K": 3, "N1": 4, "N2": 1, "N3": 1}
    assert p.flops(s) == 2 * 2 * 3 * 6 + 2 * 6
    # eager: x read 3 times (18), weights 18, biases 6, outputs 12; merged: x once
    assert p.bytes(s, 2, False) == 2 * (18 + 18 + 6 + 12) and p.bytes(s, 2, True) == 2 * (6 + 18 + 6 + 12)
    g = REGISTRY["gated_mlp_silu"]
    s = {"M": 2, "K": 3, "N": 4}
    assert g.flops(s) == 4 * 2 * 3 * 4 + 2 * 8
    # eager: 2 GEMMs (x 6 + W 12 + y 8 each), act 16, product 24; fused: x, both weights, the product's output
    assert g.bytes(s, 4, False) == 4 * (2 * (6 + 12 + 8) + 16 + 24) and g.bytes(s, 4, True) == 4 * (6 + 24 + 8)


def test_merged_variant_launches_one_gemm_where_eager_launches_three():
    p = REGISTRY["sibling_gemm3"]
    inputs = p.make_inputs(p.shapes["quick"][0], torch.float32, "cpu", torch.Generator().manual_seed(0))
    assert count_launches(lambda: p.eager(**inputs), "cpu").kernels_per_call == 3
    merged = count_launches(p.variant("merged").build(inputs), "cpu")
    assert merged.kernels_per_call == 1 and merged.names == ("aten::mm",)  # the slices are views, not kernels


def test_several_outputs_are_each_checked_against_float64():
    p = REGISTRY["sibling_gemm2_bias"]
    entry = measure_entry(p, {"M": 8, "K": 16, "N1": 16, "N2": 8}, "float32", "cpu", resolve("generic-cpu"),
                          TINY_SPEC, clock_for("cpu"), compile_modes=())
    merged = entry.variant("merged")
    assert merged.status == "ok" and merged.rel_error < merged.tolerance and merged.samples_ms
    assert entry_errors(entry_to_dict(entry)) == []  # a profile can hold it (schemas/profile.schema.json)
    inputs = p.make_inputs(entry.shape, torch.float32, "cpu", torch.Generator().manual_seed(0))
    ref = p.eager(**to_reference(inputs))
    wrong = p.variant("merged").build({**inputs, "b2": -inputs["b2"]})()
    assert relative_error(wrong, ref) > 1e-2 and relative_error(wrong[:1], ref) == float("inf")


# -- on a GPU (python3 -m pytest -q -m cuda) ----------------------------------------------------------------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("pattern,shape", [
    ("sibling_gemm3", {"M": 2048, "K": 2048, "N1": 2048, "N2": 512, "N3": 512}),
    ("sibling_gemm3_bias", {"M": 32, "K": 2048, "N1": 2048, "N2": 512, "N3": 512}),
    ("gated_mlp_silu", {"M": 2048, "K": 2048, "N": 8192}),
])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_merged_variant_is_correct_and_launches_fewer_kernels_on_cuda(pattern, shape, dtype):
    from fxfusion.measure.timing import CudaClock

    entry = measure_entry(REGISTRY[pattern], shape, dtype, "cuda", resolve("h200"),
                          TimingSpec(rounds=8, warmup=2, budget_s=2.0), CudaClock(), compile_modes=())
    merged, eager = entry.variant("merged"), entry.variant("eager")
    assert merged.status == "ok", merged.reason  # correct against float64, and not refused as not_a_fusion
    assert merged.kernels_per_call < eager.kernels_per_call


@pytest.mark.cuda
@requires_cuda
def test_llama_block_merged_in_bfloat16_on_cuda():
    model, x = block().to("cuda", torch.bfloat16), X.to("cuda", torch.bfloat16)
    plan, _ = merged_plan(model, (x,), device="cuda")
    planned = fxfusion.apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True, True]
    assert gemm_count(planned) == 4
    reference = copy.deepcopy(model).double().cpu()
    with torch.no_grad():
        want = reference(x.double().cpu())  # the float64 reference, on the CPU
        err, original_err = relative_error(planned(x), want), relative_error(model(x), want)
    assert err <= max(2e-2, 2 * original_err)  # bfloat16's tolerance, or the original's own error with slack
