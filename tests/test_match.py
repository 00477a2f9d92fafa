"""Matching the pattern library on aten graphs: each way of writing each pattern, legality, reference models."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxfusion.graph.sites import Flag
from fxfusion.graph.capture import capture
from fxfusion.graph.loader import load_model
from fxfusion.fusions.match import MATCHERS, find_sites
from fxfusion.fusions.registry import REGISTRY

MODELS = Path(__file__).resolve().parent.parent / "models"


def sites_of(model: nn.Module, *inputs):
    captured = capture(model.eval() if not getattr(model, "keep_mode", False) else model, inputs)
    return captured, find_sites(captured)


def summary(sites):
    return [(s.pattern, s.status) for s in sites]


class Fn(nn.Module):
    """A module around a function of (self, x): the way of writing under test, with parameters W, b, W2."""

    def __init__(self, fn, k=8, n=16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fn = fn
        self.lin = nn.Linear(k, n)
        self.W = nn.Parameter(torch.randn(n, k, generator=g))
        self.b = nn.Parameter(torch.randn(n, generator=g))

    def forward(self, x):
        return self.fn(self, x)


X3 = torch.randn(2, 5, 8)

LINEAR_WAYS = {
    "nn.Linear": (lambda m, x: m.lin(x), "nn.Linear", True),
    "F.linear": (lambda m, x: F.linear(x, m.W, m.b), "F.linear", True),
    "x @ W.T + b": (lambda m, x: x @ m.W.T + m.b, "x @ W.T + b", False),
    "matmul(x, W.t()) + b": (lambda m, x: torch.matmul(x, m.W.t()) + m.b, "x @ W.T + b", False),
    "b + x @ W.transpose(0, 1)": (lambda m, x: m.b + x @ m.W.transpose(0, 1), "x @ W.T + b", False),
    "F.linear(x, W) + b": (lambda m, x: F.linear(x, m.W) + m.b, "F.linear(x, W) + b", False),
    "torch.addmm": (lambda m, x: torch.addmm(m.b, x.reshape(-1, 8), m.W.t()), "torch.addmm", True),
}
ACTIVATIONS = {
    "relu": (F.relu, "relu"), "nn.ReLU(inplace)": (nn.ReLU(inplace=True), "relu"), "gelu": (F.gelu, "gelu"),
    "gelu_tanh": (lambda y: F.gelu(y, approximate="tanh"), "gelu_tanh"), "silu": (F.silu, "silu"),
    "relu6": (F.relu6, "relu6"), "hardtanh(0, 6)": (lambda y: F.hardtanh(y, 0.0, 6.0), "relu6"),
}


@pytest.mark.parametrize("way", LINEAR_WAYS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linear_bias_activation_found_however_written(way, act):
    lin, written, bias_in_gemm = LINEAR_WAYS[way]
    fn, act_name = ACTIVATIONS[act]
    _, sites = sites_of(Fn(lambda m, x: fn(lin(m, x))), X3)
    assert summary(sites) == [(f"linear_bias_{act_name}", "fusible")]
    site = sites[0]
    assert site.shape == {"M": 10, "K": 8, "N": 16} and site.dtype == "float32"
    assert site.written_as.startswith(written)
    assert site.roles["act"] == act_name and site.baseline_variant == ("addmm" if bias_in_gemm else "eager")
    assert site.roles["weight_param"] in ("W", "lin.weight") and site.roles["bias_param"] in ("b", "lin.bias")
    assert site.roles["output"] == site.roles["activation"] == site.nodes[-1]


@pytest.mark.parametrize("way", ["nn.Linear", "F.linear", "torch.addmm"])
def test_lone_linear_with_bias_is_already_fused(way):
    _, sites = sites_of(Fn(LINEAR_WAYS[way][0]), X3)
    assert summary(sites) == [("linear_bias", "already_fused")]


def test_linear_written_out_without_activation_is_fusible():
    _, sites = sites_of(Fn(LINEAR_WAYS["x @ W.T + b"][0]), X3)
    assert summary(sites) == [("linear_bias", "fusible")]
    assert sites[0].nodes == ["numpy_t", "matmul", "add"] and sites[0].roles["bias_add"] == "add"


def test_lone_gemm_without_bias_is_no_site_and_is_counted_unmatched():
    captured, sites = sites_of(Fn(lambda m, x: (x @ m.W.T) * 2.0), X3)
    assert sites == []
    assert captured.unmatched == {"aten.matmul.default": 1, "aten.numpy_T.default": 1, "aten.mul.Tensor": 1}


def test_gemm_without_bias_then_activation_is_a_bias_free_site():
    _, sites = sites_of(Fn(lambda m, x: F.relu(x @ m.W.T)), X3)
    assert [(s.pattern, s.status, s.nodes) for s in sites] == [("linear_relu", "fusible",
                                                                ["numpy_t", "matmul", "relu"])]


# -- conv -----------------------------------------------------------------------------------------------------------

def conv_block(conv, bn=None, act=None):
    return nn.Sequential(*[m for m in (conv, bn, act) if m is not None])


IMG, SEQ = torch.randn(2, 8, 10, 10), torch.randn(2, 8, 20)


@pytest.mark.parametrize("model,x,pattern,shape", [
    (conv_block(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()), IMG, "conv2d_bn_relu",
     dict(B=2, Cin=8, Cout=16, H=10, W=10, k=3, G=1)),
    (conv_block(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)), IMG, "conv2d_bn",
     dict(B=2, Cin=8, Cout=16, H=10, W=10, k=3, G=1)),
    (conv_block(nn.Conv2d(8, 16, 3, padding=1), None, nn.ReLU(inplace=True)), IMG, "conv2d_relu",
     dict(B=2, Cin=8, Cout=16, H=10, W=10, k=3, G=1)),
    (conv_block(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU()), IMG, "conv2d_bn_relu",
     dict(B=2, Cin=8, Cout=8, H=10, W=10, k=3, G=8)),
    (conv_block(nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU()), SEQ, "conv1d_bn_relu",
     dict(B=2, Cin=8, Cout=16, L=20, k=3, G=1)),
    (conv_block(nn.Conv1d(8, 16, 5, padding=2), None, nn.ReLU()), SEQ, "conv1d_relu",
     dict(B=2, Cin=8, Cout=16, L=20, k=5, G=1)),
    (conv_block(nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.BatchNorm1d(8)), SEQ, "conv1d_bn",
     dict(B=2, Cin=8, Cout=8, L=20, k=3, G=8)),
])
def test_conv_bn_activation_found(model, x, pattern, shape):
    _, sites = sites_of(model, x)
    assert summary(sites) == [(pattern, "fusible")]
    assert sites[0].shape == shape and REGISTRY[pattern].check_shape(sites[0].shape) == shape
    assert sites[0].roles["conv_module"] == "0" and sites[0].roles["weight_param"] == "0.weight"
    if "bn" in pattern:
        assert {"bn_weight", "bn_bias", "running_mean", "running_var", "bn_eps"} <= set(sites[0].roles)
    if shape["G"] > 1:
        assert "(depthwise)" in sites[0].written_as


def test_functional_conv_is_found_like_the_module():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 8, 3, 3))
            self.bn = nn.BatchNorm2d(16)

        def forward(self, x):
            return F.relu(self.bn(F.conv2d(x, self.w, padding=1)))

    _, sites = sites_of(Functional(), IMG)
    assert summary(sites) == [("conv2d_bn_relu", "fusible")]
    assert sites[0].written_as == "F.conv2d + nn.BatchNorm2d + ReLU" and sites[0].roles["weight_param"] == "w"


def test_conv_bn_then_an_activation_without_a_conv_pattern_folds_bn_and_leaves_it_with_a_note():
    model = conv_block(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.GELU(approximate="tanh"))
    captured, sites = sites_of(model, IMG)
    assert summary(sites) == [("conv2d_bn", "fusible")]
    assert "GELU(tanh)" in sites[0].notes[0] and captured.unmatched == {"aten.gelu.default": 1}


def test_lone_conv_is_no_site():
    captured, sites = sites_of(nn.Conv2d(8, 16, 3), IMG)
    assert sites == [] and captured.unmatched == {"aten.conv2d.default": 1}


def test_strided_conv_is_decided_at_its_output_size_with_a_note():
    _, sites = sites_of(conv_block(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)), IMG)
    assert sites[0].shape["H"] == 5 and "stride [2, 2]" in sites[0].notes[0]


# -- attention ------------------------------------------------------------------------------------------------------

B, H, S, D = 2, 2, 6, 8
QKV = tuple(torch.randn(B, H, S, D, generator=torch.Generator().manual_seed(i)) for i in range(3))
CAUSAL = torch.ones(S, S, dtype=torch.bool).tril()


class HandAttention(nn.Module):
    def __init__(self, scale="div", mask=None, dropout=False, k_t="transpose"):
        super().__init__()
        self.scale, self.mask, self.k_t = scale, mask, k_t
        self.drop = nn.Dropout(0.1) if dropout else None
        self.register_buffer("causal", CAUSAL)
        self.register_buffer("additive", torch.zeros(S, S).masked_fill(~CAUSAL, float("-inf")))

    def forward(self, q, k, v):
        kt = k.transpose(-2, -1) if self.k_t == "transpose" else k.permute(0, 1, 3, 2)
        s = torch.matmul(q, kt)
        s = s / math.sqrt(D) if self.scale == "div" else s * (1.0 / math.sqrt(D))
        if self.mask == "masked_fill":
            s = s.masked_fill(~self.causal, float("-inf"))
        elif self.mask == "additive":
            s = s + self.additive
        p = torch.softmax(s, dim=-1)
        if self.drop is not None:
            p = self.drop(p)
        return p @ v


@pytest.mark.parametrize("scale", ["div", "mul"])
@pytest.mark.parametrize("mask", [None, "masked_fill", "additive"])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("k_t", ["transpose", "permute"])
def test_hand_written_attention_found_however_written(scale, mask, dropout, k_t):
    _, sites = sites_of(HandAttention(scale, mask, dropout, k_t), *QKV)
    pattern = "full_attention" if mask is None else "causal_attention"
    assert summary(sites) == [(pattern, "fusible")]
    site = sites[0]
    assert site.shape == {"B": B, "H": H, "S": S, "D": D}
    assert site.roles["q"] == "q" and site.roles["k"] == "k" and site.roles["v"] == "v"
    assert site.roles["scale_op"] == scale and ("dropout" in site.roles) == dropout
    assert len(site.nodes) == 5 + (mask is not None) + dropout  # k^T, QK^T, scale, [mask], softmax, [dropout], PV
    if mask:
        assert site.roles["mask_kind"] == mask and site.roles["mask"] in ("bitwise_not", "b_additive")


def test_attention_with_active_dropout_is_refused():
    model = HandAttention(dropout=True).train()
    model.keep_mode = True
    _, sites = sites_of(model, *QKV)
    assert summary(sites) == [("full_attention", "illegal")]
    assert "dropout" in sites[0].reasons[0] and "training mode" in sites[0].reasons[0]


def test_multihead_attention_is_already_fused_sdpa_between_its_linears():
    mha = nn.MultiheadAttention(16, 2, batch_first=True)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    _, sites = sites_of(M(), torch.randn(2, 5, 16))
    assert summary(sites) == [("linear_bias", "already_fused"), ("sdpa", "already_fused"),
                              ("linear_bias", "already_fused")]
    assert sites[1].written_as == "nn.MultiheadAttention (SDPA)" and sites[1].shape == {"B": 2, "H": 2, "S": 5, "D": 8}


def test_sdpa_call_is_already_fused():
    class M(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    _, sites = sites_of(M(), *QKV)
    assert summary(sites) == [("sdpa", "already_fused")]
    assert sites[0].written_as == "F.scaled_dot_product_attention, causal"


def test_scores_without_value_matmul_are_qk_softmax():
    class M(nn.Module):
        def forward(self, q, k):
            return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D), dim=-1)

    _, sites = sites_of(M(), *QKV[:2])
    assert summary(sites) == [("qk_softmax", "fusible")]


# -- norms ----------------------------------------------------------------------------------------------------------

class RMSNormWritten(nn.Module):
    def __init__(self, n=16, style="pow"):
        super().__init__()
        self.weight, self.style = nn.Parameter(torch.ones(n)), style

    def forward(self, x):
        if self.style == "pow":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight
        if self.style == "hf-llama":  # transformers' LlamaRMSNorm, verbatim
            input_dtype = x.dtype
            hidden_states = x.to(torch.float32)
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            hidden_states = hidden_states * torch.rsqrt(variance + 1e-6)
            return self.weight * hidden_states.to(input_dtype)
        if self.style == "hf-t5":  # transformers' T5LayerNorm, verbatim: the square reads x.float(), the scale x
            variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
            hidden_states = x * torch.rsqrt(variance + 1e-6)
            if self.weight.dtype in [torch.float16, torch.bfloat16]:
                hidden_states = hidden_states.to(self.weight.dtype)
            return self.weight * hidden_states
        xf = x.float()  # gpt-fast: normalise in float32, cast back, then scale
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + 1e-6)).type_as(x) * self.weight


@pytest.mark.parametrize("style", ["pow", "gpt-fast", "hf-llama", "hf-t5"])
def test_rmsnorm_written_out_is_found(style):
    _, sites = sites_of(RMSNormWritten(style=style), torch.randn(3, 4, 16))
    assert summary(sites) == [("rmsnorm", "fusible")]
    assert sites[0].shape == {"M": 12, "N": 16} and sites[0].roles["weight_param"] == "weight"
    assert sites[0].roles["input"] == "x" and sites[0].notes == [] and sites[0].nodes[-1] == sites[0].roles["output"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_t5_rmsnorm_in_the_dtype_t5_runs_in_is_found_and_its_rewrite_matches_float64(dtype):
    """T5's norm in bfloat16/float16 squares x.float() but scales x: every norm of the zoo's T5 was unmatched in the
    dtype it runs in (issue 26), though found in float32."""
    from fxfusion.planning.outputs import check_outputs, float64_reference
    from fxfusion.planning.verify import every_group
    from tests.helpers import runnable_plan_of

    model, x = RMSNormWritten(style="hf-t5").to(dtype), torch.randn(3, 4, 16, dtype=dtype)
    _, sites = sites_of(model, x)
    assert summary(sites) == [("rmsnorm", "fusible")] and sites[0].dtype == dtype_name_of(dtype)
    assert sites[0].roles["input"] == "x" and sites[0].roles["weight_param"] == "weight"
    planned = every_group(model, runnable_plan_of(model, (x,)))
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    with torch.no_grad():
        got, orig = planned(x), model(x)
    assert not check_outputs(got, orig, float64_reference(model, (x,))[0], "cpu")[1]
    # the control: where the cast is read by more than the square, the scale's read of x is not the site's
    class Leaky(RMSNormWritten):
        def forward(self, x):
            xf = x.to(torch.float32)
            return self.weight * (x * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype), xf.sum()

    _, sites = sites_of(Leaky().to(dtype), x)
    assert all(s.pattern != "rmsnorm" for s in sites)


class GemmaRMSNorm(nn.Module):  # transformers' GemmaRMSNorm, verbatim: the scale is 1 + w, made every call
    def __init__(self, n=16, leak=False):
        super().__init__()
        self.weight, self.eps, self.leak = nn.Parameter(torch.randn(n) * 0.1), 1e-6, leak

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        scale = 1.0 + self.weight.float()
        output = self._norm(x.float()) * scale
        return (output.type_as(x), scale.sum()) if self.leak else output.type_as(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gemma_rmsnorm_with_its_one_plus_w_scale_is_one_site_and_its_rewrite_matches_float64(dtype):
    """RMSNorm scaled by (1 + w) was matched without its weight, then refused in bfloat16 (issue 26): now the scale,
    its cast and the type_as after it are the site's, w its boundary, and the rewrite feeds 1 + w to rms_norm."""
    from fxfusion.planning.outputs import check_outputs, float64_reference
    from fxfusion.planning.verify import every_group
    from tests.helpers import runnable_plan_of

    model, x = GemmaRMSNorm().to(dtype), torch.randn(3, 4, 16, dtype=dtype)
    _, sites = sites_of(model, x)
    assert summary(sites) == [("rmsnorm", "fusible")] and sites[0].notes == []
    assert sites[0].roles["weight_param"] == "weight" and sites[0].dtype == dtype_name_of(dtype)
    planned = every_group(model, runnable_plan_of(model, (x,)))
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    with torch.no_grad():
        got, orig = planned(x), model(x)
    assert not check_outputs(got, orig, float64_reference(model, (x,))[0], "cpu")[1]
    # the control: a 1 + w read elsewhere too is not the site's; the norm is found without its weight, as before
    _, sites = sites_of(GemmaRMSNorm(leak=True), torch.randn(3, 4, 16))
    assert [s.pattern for s in sites] == ["rmsnorm"] and sites[0].notes == ["no weight multiply after the normalisation"]


def dtype_name_of(dtype):
    return str(dtype).removeprefix("torch.")


def test_rmsnorm_module_is_already_fused():
    _, sites = sites_of(nn.RMSNorm(16), torch.randn(3, 16))
    assert summary(sites) == [("rmsnorm", "already_fused")] and sites[0].written_as == "nn.RMSNorm"


def test_residual_add_then_layernorm_is_found_and_lone_layernorm_is_not():
    class PostNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(16), nn.LayerNorm(16)

        def forward(self, x, r):
            return self.ln2(self.ln1(x) + r)

    captured, sites = sites_of(PostNorm(), torch.randn(4, 16), torch.randn(4, 16))
    assert summary(sites) == [("add_layernorm", "fusible")]
    assert sites[0].roles["module"] == "ln2" and captured.unmatched == {"aten.layer_norm.default": 1}


class PreNorm(nn.Module):
    """A pre-LN residual step: h = x + residual is normalised and read again by the next residual add."""

    def __init__(self, norm="layernorm", n=16, style="hf-llama"):
        super().__init__()
        self.norm = nn.LayerNorm(n) if norm == "layernorm" else RMSNormWritten(n, style)
        self.fc = nn.Linear(n, n)

    def forward(self, x, residual):
        h = x + residual
        return h + self.fc(self.norm(h))


def test_pre_ln_add_layernorm_keeps_the_sum_it_reads_again():
    captured, sites = sites_of(PreNorm(), torch.randn(4, 16), torch.randn(4, 16))
    assert summary(sites) == [("add_layernorm_sum", "fusible"), ("linear_bias", "already_fused")]
    site = sites[0]
    assert site.nodes == ["add", "layer_norm"] and site.shape == {"M": 4, "N": 16} and site.reasons == []
    assert site.roles["sum"] == "add" and site.roles["sum_read_by"] == "add_1" and site.roles["module"] == "norm"
    assert site.written_as == "x + residual, then nn.LayerNorm; the sum is read again"
    assert captured.unmatched == {"aten.add.Tensor": 1}  # the next residual add, which reads the sum


@pytest.mark.parametrize("style", ["hf-llama", "gpt-fast", "pow"])
def test_residual_add_then_rmsnorm_written_out_keeps_the_sum(style):
    _, sites = sites_of(PreNorm("rmsnorm", style=style), torch.randn(2, 3, 16), torch.randn(2, 3, 16))
    assert summary(sites) == [("add_rmsnorm_sum", "fusible"), ("linear_bias", "already_fused")]
    site = sites[0]
    assert site.nodes[0] == "add" and site.roles["sum"] == "add" and site.roles["sum_read_by"] == "add_2"
    assert site.shape == {"M": 6, "N": 16} and site.roles["weight_param"] == "norm.weight" and site.reasons == []
    assert site.roles["output"] == site.nodes[-1]
    if style == "hf-llama":  # in float32 h.to(float32) is h itself: export makes the next add read the cast
        cast = site.nodes[site.nodes.index("add") + 2]  # after export's dtype check of h
        assert cast.startswith("to") and site.roles["input"] == cast


def test_llama_rmsnorm_in_bfloat16_upcasts_the_sum_inside_the_site():
    model = PreNorm("rmsnorm").to(torch.bfloat16)
    x, r = torch.randn(2, 3, 16, dtype=torch.bfloat16), torch.randn(2, 3, 16, dtype=torch.bfloat16)
    _, sites = sites_of(model, x, r)
    site = sites[0]
    assert (site.pattern, site.status, site.dtype) == ("add_rmsnorm_sum", "fusible", "bfloat16")
    assert site.roles["input"] == "add" and site.roles["sum_read_by"] == "add_2"  # the upcast is read inside only


def test_rmsnorm_after_a_residual_add_read_only_by_the_norm_stays_an_rmsnorm_site():
    class FinalNorm(nn.Module):  # Llama's last norm: the sum goes nowhere else
        def __init__(self):
            super().__init__()
            self.norm = RMSNormWritten(16, "hf-llama")

        def forward(self, x, residual):
            return self.norm(x + residual)

    captured, sites = sites_of(FinalNorm(), torch.randn(4, 16), torch.randn(4, 16))
    assert summary(sites) == [("rmsnorm", "fusible")] and sites[0].roles["input"] == "add"
    assert captured.unmatched["aten.add.Tensor"] == 1  # the add, left to run as it is


def test_pre_ln_site_whose_norm_temporary_is_read_outside_is_refused_for_that_reason():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(16) + 0.5)

        def forward(self, x, residual):
            h = x + residual
            inv = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
            return h + h * inv * self.weight, inv

    _, sites = sites_of(Leaky(), torch.randn(4, 16), torch.randn(4, 16))
    assert summary(sites) == [("add_rmsnorm_sum", "illegal")]
    assert sites[0].reasons == ["intermediate rsqrt (rsqrt) is also used by output outside the site: a fused kernel "
                                "would not produce it"]


# -- legality -------------------------------------------------------------------------------------------------------

def test_intermediate_used_elsewhere_is_refused_with_the_user_named():
    _, sites = sites_of(Fn(lambda m, x: (F.relu(m.lin(x)), m.lin(x).sum())), X3)
    # export deduplicates nothing: two linears; the second feeds sum, the first relu (legal)
    assert summary(sites) == [("linear_bias_relu", "fusible"), ("linear_bias", "already_fused")]

    class Tee(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 16)

        def forward(self, x):
            h = self.lin(x)
            return F.gelu(h), h * 2

    _, sites = sites_of(Tee(), X3)
    assert summary(sites) == [("linear_bias_gelu", "illegal")]
    assert sites[0].reasons == ["intermediate linear (linear) is also used by mul outside the site: a fused kernel "
                                "would not produce it"]


def test_batchnorm_in_training_mode_is_refused():
    model = conv_block(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()).train()
    model.keep_mode = True
    _, sites = sites_of(model, IMG)
    assert summary(sites) == [("conv2d_bn_relu", "illegal")]
    assert "batch statistics" in sites[0].reasons[0]


def test_mismatched_dtypes_are_refused():
    class Upcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 16).to(torch.bfloat16)

        def forward(self, x):
            return F.gelu(self.lin(x).float())

    captured, sites = sites_of(Upcast(), X3.to(torch.bfloat16))
    assert summary(sites) == [("linear_bias_gelu", "illegal")]
    assert sites[0].nodes == ["linear", "_assert_tensor_metadata_default", "to", "gelu"] and captured.unmatched == {}
    assert sites[0].reasons[0].startswith("mismatched dtypes (x bfloat16, p_lin_weight bfloat16, p_lin_bias "
                                          "bfloat16, gelu float32)")


def test_shared_conv_is_refused_where_torch_fx_fuse_silently_breaks_it():
    loaded = load_model(MODELS / "shared_conv.py")
    model, (x,) = loaded.model, loaded.example_inputs
    _, sites = sites_of(model, x)
    assert summary(sites) == [("conv2d_bn_relu", "illegal"), ("conv2d_bn", "illegal"), ("conv2d_bn_relu", "fusible")]
    for site in sites[:2]:
        assert "reused on another path" in site.reasons[0] and "104593" in site.reasons[0]
    # PyTorch's own fuser folds bn_a into the shared conv: both paths change (PyTorch issue 104593).
    from torch.fx.experimental.optimization import fuse

    with torch.no_grad():
        expected, got = model(x), fuse(copy.deepcopy(model))(x)
    assert (expected - got).abs().max() > 1e-2


# -- structure: reference models, no overlap, nothing dropped ---------------------------------------------------------

FUSIBLE, ILLEGAL, FUSED = "fusible", "illegal", "already_fused"
REFERENCE = {
    "mlp_block.py": ("export", [("linear_bias_gelu", FUSIBLE), ("linear_bias", FUSED), ("add_layernorm", FUSIBLE)]),
    "resnet_basic.py": ("export", [("conv2d_bn_relu", FUSIBLE), ("conv2d_bn", FUSIBLE), ("conv2d_bn", FUSIBLE)]),
    "resnet_bottleneck.py": ("export", [("conv2d_bn_relu", FUSIBLE), ("conv2d_bn_relu", FUSIBLE),
                                        ("conv2d_bn", FUSIBLE)]),
    "mobilenet_block.py": ("export", [("conv2d_bn_relu", FUSIBLE), ("conv2d_bn_relu", FUSIBLE)]),
    "transformer_block.py": ("export", [("linear_bias", FUSED), ("causal_attention", FUSIBLE), ("linear_bias", FUSED),
                                        ("add_layernorm_sum", FUSIBLE), ("linear_bias_gelu_tanh", FUSIBLE),
                                        ("linear_bias", FUSED)]),
    "shared_conv.py": ("export", [("conv2d_bn_relu", ILLEGAL), ("conv2d_bn", ILLEGAL), ("conv2d_bn_relu", FUSIBLE)]),
    "dynamic_control.py": ("dynamo", [("linear_bias_relu", FUSIBLE), ("linear_bias_gelu", FUSIBLE)]),
    "gpt2_mlp.py": ("export", [("linear_bias_gelu_tanh", FUSIBLE), ("linear_bias", FUSED)]),
}


@pytest.fixture(scope="module")
def reference_sites():
    out = {}
    for name in REFERENCE:
        loaded = load_model(MODELS / name)
        captured = capture(loaded.model, loaded.example_inputs)
        out[name] = (captured, find_sites(captured))
    return out


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_model_sites_are_pinned(name, reference_sites):
    method, expected = REFERENCE[name]
    captured, sites = reference_sites[name]
    assert captured.method == method
    assert summary(sites) == expected


@pytest.mark.parametrize("name", REFERENCE)
def test_sites_never_overlap_and_every_op_is_accounted_for(name, reference_sites):
    captured, sites = reference_sites[name]
    for gi, gm in enumerate(captured.graphs):
        in_sites = [n for s in sites if s.graph_index == gi for n in s.nodes]
        assert len(in_sites) == len(set(in_sites))
        compute = [n.name for n in gm.graph.nodes if n.op == "call_function"]
        assert set(in_sites) <= set(compute)
    total = sum(1 for gm in captured.graphs for n in gm.graph.nodes if n.op == "call_function")
    assert sum(len(s.nodes) for s in sites) + sum(captured.unmatched.values()) == total
    assert [s.id for s in sites] == [f"g{s.graph_index}.s{i}" for gi in range(len(captured.graphs))
                                     for i, s in enumerate(x for x in sites if x.graph_index == gi)]


def test_transformer_block_keeps_the_pre_norm_residual_sum(reference_sites):
    """x + attn(ln_1(x)) feeds ln_2 and the second residual add: once refused ("a fused kernel would not produce it"),
    now a site whose fused variants write the sum too."""
    _, sites = reference_sites["transformer_block.py"]
    add_ln = sites[3]
    assert (add_ln.pattern, add_ln.status, add_ln.reasons) == ("add_layernorm_sum", "fusible", [])
    assert add_ln.nodes == ["add", "layer_norm_1"] and add_ln.roles["module"] == "ln_2"
    assert add_ln.roles["sum"] == "add" and add_ln.roles["sum_read_by"] == "add_1"
    assert sites[1].written_as == "hand-written attention: QK^T * scale, masked_fill, softmax, dropout, @ V"


def test_every_matcher_names_its_family_and_patterns_exist():
    assert {m.family for m in MATCHERS} == {"attention", "conv", "linear", "linear_bn", "norm", "sibling", "rotary"}
    for name in ("linear_bias_relu", "conv1d_bn_relu", "causal_attention", "rmsnorm", "add_layernorm",
                 "add_layernorm_sum", "add_rmsnorm_sum", "sibling_gemm3", "gated_mlp_silu", "linear_silu",
                 "linear_add_rmsnorm_sum", "rotary"):
        assert name in REGISTRY


# -- activations written out ------------------------------------------------------------------------------------------

class _WrittenAct(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.lin, self.form = nn.Linear(16, 32), form

    def forward(self, x):
        h = self.lin(x)
        if self.form == "newgelu":  # Hugging Face's NewGELUActivation
            return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
        if self.form == "erf_gelu":
            return h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
        if self.form == "swish":
            return h * torch.sigmoid(h)
        if self.form == "quick_gelu":  # CLIP's x * sigmoid(1.702 x): close to GELU, not equal to it, and declared
            return h * torch.sigmoid(1.702 * h)
        if self.form == "near_quick_gelu":  # x * sigmoid(1.6 x): close to QuickGELU, and no activation of the library
            return h * torch.sigmoid(1.6 * h)
        if self.form == "affine":
            return h * 2.0 + 1.0
        if self.form == "swish_plus_outside":  # the activation ends where an outside value comes in
            return h * torch.sigmoid(h) + x.sum()
        raise ValueError(self.form)


@pytest.mark.parametrize("form, pattern, n_act", [
    ("newgelu", "linear_bias_gelu_tanh", 8), ("erf_gelu", "linear_bias_gelu", 5), ("swish", "linear_bias_silu", 2),
    ("swish_plus_outside", "linear_bias_silu", 2), ("quick_gelu", "linear_bias_quick_gelu", 3), ("near_quick_gelu", "linear_bias", 0),
    ("affine", "linear_bias", 0)])
def test_activation_written_out_is_recognised_by_value(form, pattern, n_act):
    model = _WrittenAct(form).eval()
    captured = capture(model, (torch.randn(4, 16),))
    [site] = find_sites(captured)
    assert site.pattern == pattern
    assert len(site.nodes) == 1 + n_act
    if n_act:
        assert Flag.ACT_WRITTEN in site.flags and "written out" in site.written_as
        output = next(n for n in captured.graphs[0].graph.nodes if n.name == site.roles["activation"])
        assert all(u.name not in site.nodes for u in output.users)  # the activation's output leaves the site
