"""Linear + layer scale (ConvNeXt's ``layer_scale``, timm's ``gamma``): one ``linear_scale`` site, the per-feature scale
folded into the linear's weight and bias, checked against float64; the cases it must leave alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxfusion.fusions.linear_bn.scale import PATTERN
from fxfusion.planning.apply import apply
from tests.test_match import sites_of, summary
from tests.test_rewrite import FLOAT32_TOL, aten, applied, float64_error, plan_for, targets


class Scaled(nn.Module):
    """torchvision's CNBlock tail (linear on NHWC, permute to NCHW, * a (C, 1, 1) scale), timm's LayerScale (linear
    then * gamma (N,)) or timm's ConvNeXt (permute, then * gamma.reshape(1, -1, 1, 1))."""

    def __init__(self, form="torchvision", leak=False, c=8):
        super().__init__()
        self.fc, self.form, self.leak = nn.Linear(4 * c, c), form, leak
        shape = {"torchvision": (c, 1, 1), "timm": (c,), "timm-vit": (c,), "timm-convnext": (c,),
                 "per-pixel": (4, 4)}[form]
        self.drop = nn.Dropout(0.1)
        self.gamma = nn.Parameter(torch.rand(shape) + 0.5)

    def forward(self, x):  # x: (B, H, W, 4C)
        y = self.fc(x)
        if self.form == "timm":
            out = y * self.gamma
        elif self.form == "timm-vit":  # Attention.proj, proj_drop, then LayerScale
            out = self.drop(y) * self.gamma
        elif self.form == "timm-convnext":
            out = y.permute(0, 3, 1, 2).mul(self.gamma.reshape(1, -1, 1, 1))
        else:
            out = self.gamma * y.permute(0, 3, 1, 2)
        return (out, y) if self.leak else out


def x_in(dtype=torch.float32):
    return (torch.randn(2, 4, 4, 32, generator=torch.Generator().manual_seed(0)).to(dtype),)


@pytest.mark.parametrize("form", ["torchvision", "timm", "timm-vit", "timm-convnext"])
def test_a_per_feature_scale_after_a_linear_is_one_site(form):
    _, sites = sites_of(Scaled(form), *x_in())
    assert summary(sites) == [("linear_scale", "fusible")]
    site = sites[0]
    assert site.shape == {"M": 32, "K": 32, "N": 8} and site.roles["gamma_param"] == "gamma"
    assert ("permute" in site.roles) == (form not in ("timm", "timm-vit"))


@pytest.mark.parametrize("model", [Scaled(leak=True), Scaled("per-pixel")], ids=["unscaled-read", "per-pixel"])
def test_no_site_where_the_fold_would_change_what_is_read(model):
    _, sites = sites_of(model, *x_in())
    assert "linear_scale" not in [s.pattern for s in sites]


@pytest.mark.parametrize("form", ["torchvision", "timm", "timm-vit", "timm-convnext"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_folded_linear_matches_float64(form, dtype):
    model = Scaled(form).to(dtype).eval()
    x = x_in(dtype)
    plan = plan_for(model, x, lambda s: "scale_folded" if s.pattern == "linear_scale" else None)
    planned = apply(model, plan)
    assert applied(planned) == ["scale_folded"]
    planned.graph.lint()
    ops = targets(planned)
    assert aten.mul.Tensor not in ops and ops.count(aten.linear.default) == 1
    assert float64_error(model, planned, x) < (FLOAT32_TOL if dtype == torch.float32 else 2e-2)


def test_the_pattern_variant_computes_eager_in_float64():
    shape = {"M": 8, "K": 12, "N": 6}
    inp = PATTERN.make_inputs(shape, torch.float64, "cpu", torch.Generator().manual_seed(1))
    torch.testing.assert_close(PATTERN.variant("scale_folded").build(inp)(), PATTERN.eager(**inp), rtol=1e-12,
                               atol=1e-12)
    assert PATTERN.bytes(shape, 4, True) == 4 * (8 * 12 + 6 * 12 + 6 + 8 * 6)
    assert PATTERN.bytes(shape, 4, False) == 4 * (8 * 12 + 6 * 12 + 2 * 6 + 3 * 8 * 6)
