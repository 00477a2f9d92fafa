"""Rotary embeddings as transformers writes them (``apply_rotary_pos_emb``): one ``rotary`` site per tensor, matched on
the slice / neg / cat chain, rewritten to one roll and one addcmul, checked against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fxfusion.fusions.rotary.pattern import PATTERNS, rotate_half
from fxfusion.fusions.rotary.rewrite import rotary_rolled
from fxfusion.planning.apply import apply
from tests.test_match import sites_of, summary
from tests.test_rewrite import FLOAT32_TOL, aten, applied, float64_error, plan_for, targets

PATTERN = PATTERNS[0]


class Rotary(nn.Module):
    """q and k of (B, H, S, D) rotated by the position's angle, as Llama's attention does before its scores."""

    def __init__(self, leak=False, d=16):
        super().__init__()
        self.leak, self.d = leak, d

    def forward(self, q, k, positions):
        freqs = 1.0 / (10000 ** (torch.arange(0, self.d, 2, dtype=torch.float32) / self.d))
        angle = positions[:, :, None].float() * freqs  # (B, S, D/2)
        emb = torch.cat((angle, angle), dim=-1)
        cos, sin = emb.cos().to(q.dtype).unsqueeze(1), emb.sin().to(q.dtype).unsqueeze(1)
        q_embed = (q * cos) + (rotate_half(q) * sin)
        k_rotated = rotate_half(k)
        k_embed = (k * cos) + (k_rotated * sin)
        if self.leak:  # rotate_half(k) read again: the rolled form never writes it
            return q_embed, k_embed, k_rotated
        return q_embed, k_embed


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 8, 16, generator=g).to(dtype), torch.randn(2, 2, 8, 16, generator=g).to(dtype),
            torch.arange(8).expand(2, 8).contiguous())


def test_q_and_k_are_one_rotary_site_each():
    _, sites = sites_of(Rotary(), *inputs())
    assert summary(sites) == [("rotary", "fusible"), ("rotary", "fusible")]
    q, k = sites
    assert q.shape == {"B": 2, "H": 4, "S": 8, "D": 16} and k.shape == {"B": 2, "H": 2, "S": 8, "D": 16}
    assert q.roles["x"] == "q" and k.roles["x"] == "k" and q.roles["cos"] == k.roles["cos"]
    assert len(q.nodes) == 7 and q.reasons == []


def test_a_half_read_outside_the_chain_leaves_no_site_for_that_tensor():
    _, sites = sites_of(Rotary(leak=True), *inputs())
    assert [s.roles["x"] for s in sites if s.pattern == "rotary"] == ["q"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_rolled_form_matches_float64(dtype):
    model = Rotary().to(dtype).eval()
    x = inputs(dtype)
    plan = plan_for(model, x, lambda s: "rolled" if s.pattern == "rotary" else None)
    planned = apply(model, plan)
    assert applied(planned) == ["rolled", "rolled"]
    planned.graph.lint()
    ops = targets(planned)
    assert ops.count(rotary_rolled) == 2 and aten.neg.default not in ops and aten.cat.default in ops  # cos/sin's own cat
    assert float64_error(model, planned, x) < (FLOAT32_TOL if dtype == torch.float32 else 2e-2)


def test_the_pattern_variant_computes_eager_in_float64():
    g = torch.Generator().manual_seed(1)
    shape = {"B": 2, "H": 3, "S": 5, "D": 8}
    inp = PATTERN.make_inputs(shape, torch.float64, "cpu", g)
    torch.testing.assert_close(PATTERN.variant("rolled").build(inp)(), PATTERN.eager(**inp), rtol=1e-12, atol=1e-12)
    n, c = 2 * 3 * 5 * 8, 2 * 5 * 8
    assert PATTERN.bytes(shape, 4, False) == 4 * (10 * n + 2 * c) and PATTERN.bytes(shape, 4, True) == 4 * (2 * n + 2 * c)


def test_a_three_dimensional_tensor_is_rotated_too():
    class Flat(nn.Module):  # (B, S, D) with cos and sin (S, D): heads folded away
        def forward(self, x, cos, sin):
            return (x * cos) + (rotate_half(x) * sin)

    g = torch.Generator().manual_seed(2)
    x, ang = torch.randn(2, 8, 16, generator=g), torch.randn(8, 8, generator=g)
    ang = torch.cat((ang, ang), -1)
    _, sites = sites_of(Flat(), x, ang.cos(), ang.sin())
    assert summary(sites) == [("rotary", "fusible")] and sites[0].shape == {"B": 2, "H": 1, "S": 8, "D": 16}
