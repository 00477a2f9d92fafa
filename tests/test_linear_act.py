"""Bias-free Linear + activation (``linear_<act>``): matched however written, measured (eager and compile on the CPU;
cuBLASLt's epilogue with a zero bias on CUDA only), and rewritten into the epilogue with a zero bias made at load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxfusion.calibration.calibrate import measure_entry
from fxfusion.fusions.match import find_sites
from fxfusion.fusions.registry import REGISTRY
from fxfusion.graph.capture import capture
from fxfusion.graph.lean import original_target
from fxfusion.measure.correctness import relative_error
from fxfusion.measure.hardware import resolve
from fxfusion.measure.timing import clock_for
from fxfusion.planning.apply import apply
from fxfusion.planning.plan import FusionPlan
from fxfusion.profiles.profile import Decision
from tests.helpers import TINY_SPEC

aten = torch.ops.aten
FLOAT32_TOL = 1e-4


class BiasFree(nn.Module):
    def __init__(self, form, act):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.form, self.act = form, act
        self.fc = nn.Linear(16, 8, bias=False)
        self.W = nn.Parameter(torch.randn(8, 16, generator=g) * 0.25)
        self.R = nn.Parameter(torch.randn(16, 8, generator=g) * 0.25)

    def forward(self, x):  # x: (2, 4, 16)
        if self.form == "nn.Linear(bias=False)":
            y = self.fc(x)
        elif self.form == "F.linear(x, W)":
            y = F.linear(x, self.W)
        elif self.form == "x @ W.T":
            y = x @ self.W.T
        elif self.form == "x @ R":
            y = x @ self.R
        else:  # mm on x flattened, viewed back
            y = torch.mm(x.reshape(-1, 16), self.W.t()).view(2, 4, 8)
        return self.act(y)


FORMS = ["nn.Linear(bias=False)", "F.linear(x, W)", "x @ W.T", "x @ R", "mm on flattened x, view"]
ACTS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "silu": F.silu,
        "relu6": F.relu6}
X = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))


def sites_of(model):
    captured = capture(model.eval(), (X,))
    return captured, find_sites(captured)


@pytest.mark.parametrize("form,act", [(form, "relu") for form in FORMS] +
                         [("nn.Linear(bias=False)", act) for act in ACTS if act != "relu"])
def test_bias_free_linear_then_activation_is_one_site(form, act):
    _, sites = sites_of(BiasFree(form, ACTS[act]))
    assert [(s.pattern, s.status) for s in sites] == [(f"linear_{act}", "fusible")]
    s = sites[0]
    assert s.shape == {"M": 8, "K": 16, "N": 8} and "bias" not in s.roles and s.baseline_variant == "eager"
    assert "(no bias)" in s.written_as and s.roles["output"] == s.nodes[-1]


def _epilogue_plan(model):
    captured, sites = sites_of(model)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "addmm_epilogue", None, "test")
                 for s in sites}
    return FusionPlan.from_decisions(captured, sites, decisions)


def test_the_epilogue_with_a_zero_bias_is_refused_on_cpu_with_its_reason():
    planned = apply(BiasFree("nn.Linear(bias=False)", F.relu).eval(), _epilogue_plan(BiasFree("nn.Linear(bias=False)",
                                                                                             F.relu)))
    [record] = planned.fxfusion_rewrites
    assert not record.applied and "exists only in cuBLASLt (CUDA)" in record.detail


@pytest.mark.parametrize("form", ["nn.Linear(bias=False)", "x @ R", "mm on flattened x, view"])
@pytest.mark.parametrize("act", ["relu", "gelu_tanh"])
def test_the_epilogue_rewrite_adds_a_zero_bias_buffer(monkeypatch, form, act):
    """The rewrite's structure, run on the CPU by pretending the graph is on CUDA.  torch._addmm_activation exists on
    the CPU too, unfused -- and with use_gelu it computes the exact (erf) GELU there, not cuBLASLt's tanh one -- so
    the numbers are checked here for ReLU only (tests/test_cuda.py checks GELU(tanh) on a GPU)."""
    monkeypatch.setattr("fxfusion.fusions.linear.rewrite.device_of", lambda *nodes: "cuda")
    model = BiasFree(form, ACTS[act]).eval()
    planned = apply(model, _epilogue_plan(model))
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    planned.graph.lint()
    ops = [original_target(n) for n in planned.graph.nodes if n.op in ("call_function", "call_method")]
    assert ops.count(aten._addmm_activation.default) == 1
    assert not {aten.relu.default, aten.gelu.default, aten.matmul.default, aten.linear.default} & set(ops)
    zero = [getattr(planned, n.target) for n in planned.graph.nodes
            if n.op == "get_attr" and "zero_bias" in str(original_target(n))]
    assert len(zero) == 1 and zero[0].shape == (8,) and not zero[0].any()
    if act == "relu":
        with torch.no_grad():
            assert relative_error(planned(X), copy.deepcopy(model).double()(X.double())) < FLOAT32_TOL


def test_bias_free_bytes_by_hand():
    p = REGISTRY["linear_silu"]
    s = {"M": 2, "K": 3, "N": 4}
    assert p.flops(s) == 2 * 24 + 8
    # unfused: x 6 + W 12 + mm out 8 + act read 8 + act write 8; fused: x, W, out
    assert p.bytes(s, 4, False) == 4 * 42 and p.bytes(s, 4, True) == 4 * 26


def test_on_cpu_only_eager_and_compile_remain():
    assert [mv.name for mv in REGISTRY["linear_silu"].manual] == []  # no fused epilogue computes SiLU
    entry = measure_entry(REGISTRY["linear_relu"], {"M": 8, "K": 16, "N": 8}, "float32", "cpu",
                          resolve("generic-cpu"), TINY_SPEC, clock_for("cpu"), compile_modes=())
    epilogue = entry.variant("addmm_epilogue")
    assert epilogue.status == "unsupported" and "same kernels as eager" in epilogue.reason
    assert entry.variant("eager").status == "ok"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("act", ["relu", "gelu_tanh"])
def test_the_zero_bias_epilogue_fuses_on_cuda(act):
    """cuBLASLt's epilogue with a zero bias: one kernel where eager launches two, correct in bfloat16, applied."""
    from fxfusion.measure.timing import CudaClock, TimingSpec

    entry = measure_entry(REGISTRY[f"linear_{act}"], {"M": 2048, "K": 2048, "N": 8192}, "bfloat16", "cuda",
                          resolve("h200"), TimingSpec(rounds=8, warmup=2, budget_s=2.0), CudaClock(), compile_modes=())
    fused, eager = entry.variant("addmm_epilogue"), entry.variant("eager")
    assert fused.status == "ok", fused.reason
    assert fused.kernels_per_call < eager.kernels_per_call
    model = BiasFree("nn.Linear(bias=False)", ACTS[act]).to("cuda", torch.bfloat16).eval()
    x = X.to("cuda", torch.bfloat16)
    captured = capture(model, (x,))
    sites = find_sites(captured)
    plan = FusionPlan.from_decisions(captured, sites, {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cuda",
                                                                      "fuse", "addmm_epilogue", None, "test")
                                                       for s in sites})
    planned = apply(model, plan)
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    with torch.no_grad():
        want = copy.deepcopy(model).double().cpu()(x.double().cpu())  # the float64 reference, on the CPU
        assert relative_error(planned(x), want) <= max(2e-2, 2 * relative_error(model(x), want))
