"""Add + LayerNorm where the add broadcasts (position embeddings) and an eval-mode Dropout sits between them (issue
26, item 7): one add_layernorm(_sum) site; the Triton rewrites follow the dropout (the identity) and refuse a
broadcast residual with their reason; the sites are rewritten against float64 (the Triton kernels' torch twins on the
CPU; torch.compile, which fuses a broadcast residual, in the slow set)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.loader import load_model
from fxfusion.measure.correctness import relative_error, tolerance
from fxfusion.planning.apply import apply
from fxfusion.planning.plan import FusionPlan
from fxfusion.profiles.profile import Decision
from tests.helpers import MODELS, replace_rewrite

S, N, B = 8, 16, 2


class Embeddings(nn.Module):
    """Token embeddings + learned position embeddings (S, N), an eval-mode Dropout, a pre-LN block's LayerNorm whose
    input is read again by the residual add (GPT-2's, ViT's first block); ``broadcast`` False: a full-shape residual."""

    def __init__(self, broadcast: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.broadcast = broadcast
        self.pos = nn.Parameter(torch.randn(S, N) if broadcast else torch.randn(B, S, N))
        self.drop, self.ln, self.fc = nn.Dropout(0.1), nn.LayerNorm(N), nn.Linear(N, N)

    def forward(self, tokens):  # (B, S, N) -> (B, S, N)
        h = self.drop(tokens + self.pos)
        return h + self.fc(self.ln(h))


def _inputs():
    return (torch.randn(B, S, N, generator=torch.Generator().manual_seed(1)),)


def _site(model):
    [site] = [s for s in find_sites(capture(model, _inputs())) if s.pattern.startswith("add_layernorm")]
    return site


def test_position_embeddings_added_then_dropout_then_layernorm_are_one_site():
    site = _site(Embeddings().eval())
    assert site.pattern == "add_layernorm_sum" and site.legal  # the dropout's output is read again: the sum
    assert site.roles["residual_broadcast"] == f"{S}x{N}" and "dropout_eval" in site.roles
    assert dict(site.shape) == {"M": B * S, "N": N}


def test_dropout_in_training_mode_is_not_taken_into_the_site():
    captured = capture(Embeddings().train(), _inputs())
    assert not [s for s in find_sites(captured) if s.pattern.startswith("add_layernorm")]


def _plan(model, variant):
    captured = capture(model, _inputs())
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", variant, None, "test")
                 for s in sites if s.legal and s.pattern == "add_layernorm_sum"}
    return FusionPlan.from_decisions(captured, sites, decisions)


def _twins(monkeypatch):
    """The Triton variant's rewrite, unchanged, with the kernel's torch twin in its place (the kernel needs CUDA)."""
    from fxfusion.fusions.norm import kernels, rewrite

    replace_rewrite(monkeypatch, "triton_add_layernorm_sum", lambda _: lambda gm, nodes, group: (
        rewrite.rewrite_add_layernorm_sum(gm, nodes, group, kernels.add_layernorm_sum_reference)))
    return kernels


def _against_float64(model, planned):
    with torch.no_grad():
        out = planned(*_inputs())
        ref = copy.deepcopy(model).double()(*(x.double() for x in _inputs()))
    return relative_error(out, ref)


def test_the_fused_sum_replaces_the_dropout_its_readers_read(monkeypatch):
    kernels = _twins(monkeypatch)
    model = Embeddings(broadcast=False).eval()
    planned = apply(model, _plan(model, "triton_add_layernorm_sum"), candidate="planned")
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    planned.graph.lint()
    targets = [n.target for n in planned.graph.nodes]
    assert targets.count(kernels.add_layernorm_sum_reference) == 1
    assert not any("dropout" in str(t) or "layer_norm" in str(t) for t in targets)
    assert _against_float64(model, planned) < tolerance(torch.float32)


def test_a_broadcast_residual_is_refused_by_the_triton_rewrite_with_its_reason(monkeypatch):
    _twins(monkeypatch)
    model = Embeddings().eval()
    planned = apply(model, _plan(model, "triton_add_layernorm_sum"), candidate="planned")
    [record] = planned.fxfusion_rewrites
    assert not record.applied and "the residual is broadcast" in record.detail


@pytest.mark.slow  # torch.compile of one region: 10-30 s on the CPU
def test_a_broadcast_residual_site_compiled_matches_float64():
    model = Embeddings().eval()
    planned = apply(model, _plan(model, "compile"), candidate="planned")
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    assert _against_float64(model, planned) < tolerance(torch.float32)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the zoo's GPT-2 needs transformers")
def test_gpt2_first_layernorm_reads_the_position_embeddings_sum():
    loaded = load_model(MODELS / "zoo" / "hf_gpt2.py")  # wte + wpe (1, S, N), dropout, block 0's ln_1
    sites = find_sites(capture(loaded.model, loaded.example_inputs))
    ln = [s for s in sites if s.pattern.startswith("add_layernorm")]
    assert [s.pattern for s in ln].count("add_layernorm_sum") == 4  # every block's ln_1 and ln_2
    [first] = [s for s in ln if "residual_broadcast" in s.roles]
    assert first.legal and first.roles["residual_broadcast"] == "1x16x64" and "dropout_eval" in first.roles
