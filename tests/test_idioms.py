"""Idioms real models use that the library now matches (issue 26 item 7): a gated MLP pre-fused in the checkpoint and
split after its GEMM (Phi-3's gate_up_proj), QuickGELU written out (CLIP), Linear + BatchNorm1d folded at inference,
and conv + bias + GELU without BatchNorm (Whisper's audio stem).  Each: how many sites, which nodes, the graph after
the rewrite linted, and the planned model against float64 with the tolerance of its dtype."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.sites import ILLEGAL, Flag
from fxfusion.measure.correctness import relative_error, tolerance
from fxfusion.planning.apply import apply
from fxfusion.graph.runnable import runnable_graph
from fxfusion.planning.plan import FusionGroup, FusionPlan
from fxfusion.planning.rewrite import rewrite_group
from fxfusion.profiles.profile import Decision

DTYPES = [torch.float32, torch.bfloat16]


def _planned(model: nn.Module, inputs: tuple, variants: dict[str, str]):
    """The sites of ``model``, and the model with every site of a pattern in ``variants`` decided 'fuse' with it."""
    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", variants[s.pattern], None, "test")
                 for s in sites if s.legal and s.pattern in variants}
    planned = apply(model, FusionPlan.from_decisions(captured, sites, decisions), candidate="planned")
    return sites, planned


def _check(model: nn.Module, planned, inputs: tuple, dtype: torch.dtype, patterns: set[str]) -> None:
    applied = [r for r in planned.fxfusion_rewrites if r.applied]
    assert {r.pattern for r in applied} == patterns, [(r.pattern, r.detail) for r in planned.fxfusion_rewrites]
    for gm in (m for m in planned.modules() if isinstance(m, torch.fx.GraphModule)):
        gm.graph.lint()
    with torch.no_grad():
        out = planned(*inputs)
        ref = copy.deepcopy(model).double()(*(x.double() for x in inputs))
    assert out.dtype == dtype
    assert relative_error(out, ref) < tolerance(dtype)


def _forced(model: nn.Module, inputs: tuple, pattern: str, variant: str, dtype: torch.dtype) -> None:
    """The one site of ``pattern`` rewritten into ``variant`` by the rewrite itself (a plan never applies the variant
    a site already runs as), the graph linted, and its output against float64."""
    captured = capture(model, inputs)
    [site] = [s for s in find_sites(captured) if s.pattern == pattern]
    gm = runnable_graph(captured, 0, model)
    group = FusionGroup(site.id, site.pattern, 0, site.nodes, variant, site.baseline_variant, None, None, None, None,
                        None, dict(site.shape), site.dtype, dict(site.roles), site.flags)
    record = rewrite_group(gm, group)
    assert record.applied, record.detail
    gm.graph.lint()
    with torch.no_grad():
        out = gm(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        ref = copy.deepcopy(model).double()(*(x.double() for x in inputs))
    assert out.dtype == dtype and relative_error(out, ref) < tolerance(dtype)
    return gm


# -- a gated MLP pre-fused in the checkpoint, split after the GEMM ------------------------------------------------------

class GateUpMLP(nn.Module):
    """Phi-3's MLP: one gate_up_proj GEMM, split in two (chunk, split or slicing), up * act(gate), down_proj."""

    def __init__(self, split: str, act: str = "silu", hidden: int = 32, width: int = 64):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.split, self.act, self.width = split, act, width

    def forward(self, x):  # (B, T, hidden) -> (B, T, hidden)
        h = self.gate_up_proj(x)
        if self.split == "chunk":
            gate, up = h.chunk(2, dim=-1)
        elif self.split == "split":
            gate, up = h.split(self.width, dim=-1)
        elif self.split == "slice":
            gate, up = h[..., :self.width], h[..., self.width:]
        else:  # "swapped": the gate is the second half -- not the pattern's layout, so not this site
            up, gate = h.chunk(2, dim=-1)
        act = F.silu(gate) if self.act == "silu" else gate * torch.sigmoid(gate)  # SiLU as an op, or written out
        return self.down_proj(up * act)


@pytest.mark.parametrize("split", ["chunk", "split", "slice"])
def test_gate_up_split_after_the_gemm_is_one_gated_site_running_as_merged(split):
    model = GateUpMLP(split).eval()
    captured = capture(model, (torch.randn(2, 5, 32),))
    [site] = [s for s in find_sites(captured) if s.pattern.startswith("gated")]
    assert site.pattern == "gated_mlp_silu" and site.legal
    assert site.baseline_variant == "merged"  # one GEMM on [Wg; Wu] already: only act and product are left to fuse
    assert site.shape == {"M": 10, "K": 32, "N": 64}
    ops = [n.split("_")[0] for n in site.nodes]
    assert ops[0] == "linear" and ops[-1] == "mul" and "silu" in ops and len(site.nodes) == (6 if split != "slice"
                                                                                             else 5)


def test_gate_in_the_second_half_is_not_a_gated_site():
    captured = capture(GateUpMLP("swapped").eval(), (torch.randn(2, 5, 32),))
    assert not [s for s in find_sites(captured) if s.pattern.startswith("gated")]


def test_gate_up_split_with_a_written_out_silu_is_flagged():
    captured = capture(GateUpMLP("chunk", act="written").eval(), (torch.randn(2, 5, 32),))
    [site] = [s for s in find_sites(captured) if s.pattern.startswith("gated")]
    assert site.pattern == "gated_mlp_silu" and Flag.ACT_WRITTEN in site.flags


def test_a_plan_never_applies_the_variant_a_presplit_site_already_runs_as():
    model = GateUpMLP("chunk").eval()
    inputs = (torch.randn(2, 5, 32),)
    _, planned = _planned(model, inputs, {"gated_mlp_silu": "merged"})
    assert not [r for r in planned.fxfusion_rewrites if r.applied]  # merged is its baseline: nothing to gain


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", ["chunk", "slice"])
def test_gate_up_split_merged_rewrite_matches_float64(split, dtype):
    """Forced (as a profile without the baseline's entry could decide it): the same computation traced on the GEMM's
    own weight, no copy of it, and the graph still gives float64's answer."""
    torch.manual_seed(0)
    model = GateUpMLP(split).eval().to(dtype)
    gm = _forced(model, (torch.randn(2, 5, 32, dtype=dtype),), "gated_mlp_silu", "merged", dtype)
    assert not [n for n in gm.graph.nodes if n.target is torch.ops.aten.chunk.default]
    assert not any(name.startswith("_fxfusion_") for name, _ in gm.named_buffers())  # no copy of the weight


# -- QuickGELU ----------------------------------------------------------------------------------------------------------

class QuickGeluMLP(nn.Module):
    """CLIP's MLP: fc1, x * sigmoid(1.702 x), fc2."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 128), nn.Linear(128, 32)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))


def test_quick_gelu_after_a_linear_is_one_site_recognised_by_value():
    captured = capture(QuickGeluMLP().eval(), (torch.randn(4, 32),))
    sites = find_sites(captured)
    [site] = [s for s in sites if s.pattern == "linear_bias_quick_gelu"]
    assert len(site.nodes) == 4 and Flag.ACT_WRITTEN in site.flags and site.roles["act"] == "quick_gelu"
    assert "QuickGELU written out (3 ops)" in site.written_as
    assert site.baseline_variant == "addmm"  # nn.Linear's bias is in the GEMM already


@pytest.mark.parametrize("dtype", DTYPES)
def test_quick_gelu_site_addmm_rewrite_matches_float64(dtype):
    torch.manual_seed(0)
    model = QuickGeluMLP().eval().to(dtype)
    gm = _forced(model, (torch.randn(4, 32, dtype=dtype),), "linear_bias_quick_gelu", "addmm", dtype)
    assert [n.target for n in gm.graph.nodes].count(torch.ops.aten.sigmoid.default) == 1  # QuickGELU kept as written


# -- Linear + BatchNorm1d -----------------------------------------------------------------------------------------------

class LinearBnHead(nn.Module):
    """A projection head (SimCLR, DLRM-style MLPs): Linear, BatchNorm1d, ReLU, Linear."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(32, 64, bias=bias), nn.BatchNorm1d(64), nn.Linear(64, 16)
        with torch.no_grad():  # statistics far from the defaults, so a fold that ignored them would show
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.normal_()
            self.bn.bias.normal_()

    def forward(self, x):  # (B, 32) -> (B, 16)
        return self.out(torch.relu(self.bn(self.fc(x))))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_then_batchnorm1d_is_one_site(bias):
    torch.manual_seed(0)
    captured = capture(LinearBnHead(bias).eval(), (torch.randn(8, 32),))
    sites = find_sites(captured)
    [site] = [s for s in sites if s.pattern == "linear_bn"]
    assert site.legal and site.nodes[0] == "linear" and len(site.nodes) in (2, 3)  # + getitem for the tuple form
    assert site.shape == {"M": 8, "K": 32, "N": 64} and site.roles["weight_param"] == "fc.weight"
    assert [s.pattern for s in sites] == ["linear_bn", "linear_bias"]  # the ReLU stays a separate op


def test_batchnorm1d_in_training_mode_is_illegal_with_its_reason():
    torch.manual_seed(0)
    model = LinearBnHead().train()
    captured = capture(model, (torch.randn(8, 32),))
    [site] = [s for s in find_sites(captured) if s.pattern == "linear_bn"]
    assert site.status == ILLEGAL and any("batch statistics" in r for r in site.reasons)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_bn_folded_matches_float64(bias, dtype):
    torch.manual_seed(0)
    model = LinearBnHead(bias).eval().to(dtype)
    inputs = (torch.randn(8, 32, dtype=dtype),)
    _, planned = _planned(model, inputs, {"linear_bn": "bn_folded"})
    _check(model, planned, inputs, dtype, {"linear_bn"})
    assert not any(n.target in (torch.ops.aten.batch_norm.default,
                                torch.ops.aten._native_batch_norm_legit_no_training.default)
                   for gm in planned.modules() if isinstance(gm, torch.fx.GraphModule) for n in gm.graph.nodes)
    assert torch.equal(planned.state_dict().get("fc.weight", model.fc.weight), model.fc.weight)  # untouched


class LinearNorm(nn.Module):
    """timm's LeViT projection: a bias-free Linear, BatchNorm1d over the flattened tokens, reshaped back."""

    def __init__(self):
        super().__init__()
        self.linear, self.bn = nn.Linear(32, 48, bias=False), nn.BatchNorm1d(48)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.normal_()

    def forward(self, x):  # (B, T, 32) -> (B, T, 48)
        y = self.linear(x)
        return self.bn(y.flatten(0, 1)).reshape_as(y)


def test_levit_linear_norm_flattened_and_reshaped_back_is_one_site():
    torch.manual_seed(0)
    captured = capture(LinearNorm().eval(), (torch.randn(2, 5, 32),))
    [site] = find_sites(captured)
    assert site.pattern == "linear_bn" and site.legal and site.shape == {"M": 10, "K": 32, "N": 48}
    assert [n.split("_")[0] for n in site.nodes] == ["linear", "flatten", "batch", "reshape"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_levit_linear_norm_folded_matches_float64(dtype):
    torch.manual_seed(0)
    model = LinearNorm().eval().to(dtype)
    inputs = (torch.randn(2, 5, 32, dtype=dtype),)
    _, planned = _planned(model, inputs, {"linear_bn": "bn_folded"})
    _check(model, planned, inputs, dtype, {"linear_bn"})


# -- conv + bias + GELU, no BatchNorm -----------------------------------------------------------------------------------

class AudioStem(nn.Module):
    """Whisper's stem: conv1d (k 3) + GELU, conv1d (k 3, stride 2) + GELU."""

    def __init__(self, bias: bool = True):  # wav2vec2's feature extractor: bias-free convs, GELU after each
        super().__init__()
        self.conv1 = nn.Conv1d(16, 32, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv1d(32, 32, 3, stride=2, padding=1, bias=bias)

    def forward(self, x):  # (B, 16, L) -> (B, 32, L/2)
        return F.gelu(self.conv2(F.gelu(self.conv1(x))))


def test_conv1d_bias_gelu_without_batchnorm_is_a_site():
    captured = capture(AudioStem().eval(), (torch.randn(2, 16, 40),))
    sites = find_sites(captured)
    assert [(s.pattern, len(s.nodes)) for s in sites] == [("conv1d_gelu", 2), ("conv1d_gelu", 2)]
    assert "stride [2]" in sites[1].notes[0]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the fused conv+GELU is oneDNN's (CPU)")
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_gelu_fused_by_onednn_matches_float64(bias):
    torch.manual_seed(0)
    model = AudioStem(bias).eval()
    inputs = (torch.randn(2, 16, 40),)
    _, planned = _planned(model, inputs, {"conv1d_gelu": "conv_gelu_fused"})
    _check(model, planned, inputs, torch.float32, {"conv1d_gelu"})


def test_phi3_qkv_sliced_after_the_gemm_still_lets_eager_attention_be_matched():
    """Phi-3's qkv_proj is one GEMM sliced into q, k and v: the attention after the slices is matched as usual, and
    the gate_up_proj chunk is the gated site (models/zoo/hf_phi3.py with eager attention)."""
    import dataclasses

    from tests.zoo_entries import require, zoo_module

    require("transformers")
    phi3 = zoo_module("hf_phi3")
    cfg = dataclasses.replace(phi3.PRESETS["tiny"], attn_implementation="eager")
    sites = find_sites(capture(phi3.get_model(cfg), phi3.get_inputs(cfg)))
    patterns = [s.pattern for s in sites]
    assert patterns.count("gqa_attention") == 2 and patterns.count("gated_mlp_silu") == 2
    assert all(s.legal for s in sites if s.pattern in ("gqa_attention", "gated_mlp_silu"))
    qkv = [s for s in sites if s.pattern == "sibling_gemm3"]  # qkv_proj: the sibling pattern, already fused
    assert len(qkv) == 2 and all(s.status == "already_fused" and "qkv_proj" in s.written_as for s in qkv)


class QKVProj(nn.Module):
    """Phi-3's attention input: one qkv_proj GEMM, split in three after it (slices, split_with_sizes or chunk)."""

    def __init__(self, split: str, hidden: int = 32, q: int = 32, kv: int = 16, bias: bool = False):
        super().__init__()
        self.qkv_proj = nn.Linear(hidden, q + 2 * kv, bias=bias)
        self.split, self.q, self.kv = split, q, kv

    def forward(self, x):
        h = self.qkv_proj(x)
        if self.split == "slice":
            a, b, c = h[..., :self.q], h[..., self.q:self.q + self.kv], h[..., self.q + self.kv:]
        elif self.split == "split_with_sizes":
            a, b, c = h.split([self.q, self.kv, self.kv], dim=-1)
        elif self.split == "chunk":
            a, b, c = h.chunk(3, dim=-1)
        else:  # "gap": the middle columns are read by nobody -- not a cover of the output, so no site
            a, c = h[..., :self.q], h[..., self.q + self.kv:]
            b = a
        return a.sum(-1) + b.mean(-1) * c.amax(-1)


@pytest.mark.parametrize("split,q,kv", [("slice", 32, 16), ("split_with_sizes", 32, 16), ("chunk", 16, 16)])
def test_qkv_pre_fused_and_split_after_the_gemm_is_the_sibling_pattern_already_fused(split, q, kv):
    model = QKVProj(split, q=q, kv=kv)
    captured = capture(model.eval(), (torch.randn(2, 5, 32),))
    [site] = find_sites(captured)
    assert site.pattern == "sibling_gemm3" and site.status == "already_fused"
    assert site.shape == {"M": 10, "K": 32, "N1": q, "N2": kv, "N3": kv}
    assert "one GEMM for 3 projections" in site.written_as and "qkv_proj" in site.written_as
    plan = FusionPlan.from_decisions(captured, [site], {})
    assert not plan.groups and plan.refused[0].why == "already_fused"  # reported, never rewritten


def test_a_split_that_leaves_columns_unread_or_a_biased_gemm_is_no_such_site():
    for model in (QKVProj("gap"), QKVProj("slice", bias=True)):
        sites = find_sites(capture(model.eval(), (torch.randn(2, 5, 32),)))
        assert not [s for s in sites if s.pattern.startswith("sibling") and s.status == "already_fused"]


class MixFFN(nn.Module):
    """SegFormer's Mix-FFN: Linear, tokens to a map, depthwise 3x3 conv with bias, back to tokens, GELU, Linear."""

    def __init__(self, width: int = 16, hidden: int = 32, side: int = 6):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.side = side

    def forward(self, x):  # (B, side * side, width) -> the same
        h = self.fc1(x)
        b, n, c = h.shape
        h = self.dwconv(h.transpose(1, 2).view(b, c, self.side, self.side))
        return self.fc2(F.gelu(h.flatten(2).transpose(1, 2)))


def test_conv_then_layout_ops_then_gelu_is_one_conv_gelu_site():
    captured = capture(MixFFN().eval(), (torch.randn(2, 36, 16),))
    [site] = [s for s in find_sites(captured) if s.pattern.startswith("conv")]
    assert site.pattern == "conv2d_gelu" and site.legal
    assert [n.split("_")[0] for n in site.nodes] == ["conv2d", "flatten", "transpose", "gelu"]
    assert "the activation is elementwise" in site.notes[-1]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the fused conv+GELU is oneDNN's (CPU)")
def test_conv_gelu_fused_before_the_layout_ops_matches_float64():
    torch.manual_seed(0)
    model = MixFFN().eval()
    inputs = (torch.randn(2, 36, 16),)
    _, planned = _planned(model, inputs, {"conv2d_gelu": "conv_gelu_fused"})
    _check(model, planned, inputs, torch.float32, {"conv2d_gelu"})
