"""The bias-free projection in front of a pre-LN residual add + RMSNorm (Llama's o_proj / down_proj): one
``linear_add_rmsnorm_sum`` site holding the GEMM, the add and the written-out norm -- matched where the GEMM's output
goes to the add alone, rewritten to addmm with the residual as C (then ``rms_norm``) or to the GEMM then the two-output
add+RMSNorm kernel, each checked against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxfusion.fusions.norm import kernels
from fxfusion.fusions.norm.pattern import PATTERNS
from fxfusion.planning.apply import apply
from tests.helpers import replace_rewrite
from tests.test_match import RMSNormWritten, sites_of, summary
from tests.test_rewrite import FLOAT32_TOL, aten, applied, float64_error, plan_for, targets

PATTERN = next(p for p in PATTERNS if p.name == "linear_add_rmsnorm_sum")


class Block(nn.Module):
    """h = residual + o_proj(x) (no bias); h + fc(RMSNorm(h)): the sum read again by the next residual add."""

    def __init__(self, style="hf-llama", bias=False, dropout=False, leak=False, k=24, n=16):
        super().__init__()
        self.o_proj, self.norm, self.fc = nn.Linear(k, n, bias=bias), RMSNormWritten(n, style), nn.Linear(n, n)
        self.drop, self.leak = nn.Dropout(0.1) if dropout else nn.Identity(), leak
        with torch.no_grad():
            self.norm.weight.copy_(torch.rand(n) + 0.5)

    def forward(self, x, residual):
        p = self.o_proj(x)
        h = residual + self.drop(p)
        out = h + self.fc(self.norm(h))
        return (out, p) if self.leak else out


def inputs(dtype=torch.float32, k=24, n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, k, generator=g).to(dtype), torch.randn(2, 3, n, generator=g).to(dtype)


@pytest.mark.parametrize("style", ["hf-llama", "hf-t5", "pow"])
def test_a_bias_free_projection_joins_the_residual_add_and_norm_it_feeds(style):
    _, sites = sites_of(Block(style), *inputs())
    assert summary(sites) == [("linear_add_rmsnorm_sum", "fusible"), ("linear_bias", "already_fused")]
    site = sites[0]
    assert site.nodes[0] == "linear" and site.shape == {"M": 6, "K": 24, "N": 16} and site.reasons == []
    assert site.roles["proj_weight_param"] == "o_proj.weight" and site.roles["residual"] == "residual"
    assert site.roles["sum_read_by"] and site.written_as.startswith("nn.Linear (no bias) + residual, then ")


def test_an_eval_dropout_between_the_projection_and_the_add_is_inside_the_site():  # Phi-3, T5
    _, sites = sites_of(Block(dropout=True), *inputs())
    assert summary(sites)[0] == ("linear_add_rmsnorm_sum", "fusible")
    assert sites[0].nodes[:2] == ["linear", "dropout"]


@pytest.mark.parametrize("model, why", [(Block(bias=True), "a bias: the GEMM is a linear_bias site"),
                                        (Block(leak=True), "the projection is read outside the add")])
def test_the_projection_stays_out_where_it_is_not_the_adds_alone(model, why):
    _, sites = sites_of(model, *inputs())
    assert "linear_add_rmsnorm_sum" not in [s.pattern for s in sites], why
    assert ("add_rmsnorm_sum", "fusible") in summary(sites), why  # the add and the norm are still a site


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_addmm_with_the_residual_as_c_then_rms_norm_matches_float64(dtype):
    model = Block().to(dtype).eval()
    x = inputs(dtype)
    plan = plan_for(model, x, lambda s: "addmm_rms_norm" if s.pattern == PATTERN.name else None)
    planned = apply(model, plan)
    assert applied(planned) == ["addmm_rms_norm"]
    planned.graph.lint()
    ops = targets(planned)
    assert kernels.linear_residual in ops and aten.rms_norm.default in ops
    assert not {aten.rsqrt.default, aten.pow.Tensor_Scalar, aten.mean.dim} & set(ops)
    assert ops.count(aten.add.Tensor) == 1  # the next residual add, reading the GEMM's sum
    assert float64_error(model, planned, x) < (FLOAT32_TOL if dtype == torch.float32 else 2e-2)


def test_the_gemm_then_the_two_output_kernel_matches_float64(monkeypatch):
    """The Triton variant's rewrite, unchanged, with the kernel's torch twin in its place (the kernel needs CUDA)."""
    from fxfusion.fusions.norm import rewrite

    replace_rewrite(monkeypatch, "linear_triton_add_rmsnorm_sum", lambda _: lambda gm, nodes, group: (
        rewrite.rewrite_add_rmsnorm_sum(gm, nodes, group, kernels.add_rmsnorm_sum_reference)))
    model = Block().eval()
    x = inputs()
    plan = plan_for(model, x, lambda s: "linear_triton_add_rmsnorm_sum" if s.pattern == PATTERN.name else None)
    planned = apply(model, plan)
    assert applied(planned) == ["linear_triton_add_rmsnorm_sum"]
    ops = targets(planned)
    assert aten.linear.default in ops and kernels.add_rmsnorm_sum_reference in ops  # the GEMM stays, feeding the call
    assert float64_error(model, planned, x) < FLOAT32_TOL


def test_the_pattern_variants_compute_eager_in_float64():
    g = torch.Generator().manual_seed(1)
    shape = {"M": 8, "K": 24, "N": 16}
    inp = PATTERN.make_inputs(shape, torch.float64, "cpu", g)
    h_ref, y_ref = PATTERN.eager(**inp)
    h, y = PATTERN.variant("addmm_rms_norm").build(inp)()
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert PATTERN.variant("linear_triton_add_rmsnorm_sum").unsupported(shape, torch.float32, "cpu")
    # the cost model: fused moves the GEMM's operands plus 3MN + N; unfused 11MN + 6M + N besides
    assert PATTERN.bytes(shape, 4, True) == 4 * (8 * 24 + 16 * 24 + 3 * 8 * 16 + 16)
    assert PATTERN.bytes(shape, 4, False) == 4 * (8 * 24 + 16 * 24 + 11 * 8 * 16 + 6 * 8 + 16)


class MatmulBlock(Block):
    """The projection written as ``x @ W.T`` (a transpose of the parameter, then a matmul)."""

    def forward(self, x, residual):
        h = residual + x @ self.o_proj.weight.T
        return h + self.fc(self.norm(h))


@pytest.mark.parametrize("variant", ["addmm_rms_norm"])
def test_a_projection_written_as_a_matmul_of_the_transposed_weight_is_matched_and_rewritten(variant):
    model = MatmulBlock().eval()
    x = inputs()
    _, sites = sites_of(model, *x)
    assert summary(sites)[0] == ("linear_add_rmsnorm_sum", "fusible") and sites[0].roles["proj_weight_param"] == \
        "o_proj.weight"
    planned = apply(model, plan_for(model, x, lambda s: variant if s.pattern == PATTERN.name else None))
    assert applied(planned) == [variant] and float64_error(model, planned, x) < FLOAT32_TOL
