"""Attention in every idiom the zoo's eager code writes: each one hand-written block, matched as one site (which nodes,
which pattern, which mask form), rewritten to one SDPA (no softmax, no GEMM left, the right is_causal / attn_mask /
scale / enable_gqa) and checked against float64.  The Hugging Face and timm models themselves are in
tests/test_attention_models.py."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxfusion.fusions.attention.reading import HAS_GQA
from fxfusion.fusions.match import find_sites
from fxfusion.fusions.registry import REGISTRY
from fxfusion.graph.capture import capture
from fxfusion.graph.lean import original_target
from fxfusion.graph.nodes import arg
from fxfusion.measure.correctness import relative_error, tolerance
from fxfusion.planning.apply import apply
from fxfusion.graph.runnable import runnable_graph
from fxfusion.planning.regions import cut_region
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.rewrite import rewrite_group
from fxfusion.profiles.profile import Decision

aten = torch.ops.aten
B, H, S, D = 2, 4, 8, 16
KV = 2  # GQA: K/V heads
SCALE = D ** -0.5
MIN = torch.finfo(torch.float32).min
# Ops of a hand-written attention: none may be left unmatched, none may survive the rewrite.
ATTENTION_OPS = {"aten.matmul.default", "aten.bmm.default", "aten.baddbmm.default", "aten.softmax.int",
                 "aten.masked_fill.Scalar", "aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf",
                 "aten.mul.Tensor", "aten.div.Tensor", "aten.dropout.default", "aten.to.dtype", "aten.type_as.default"}


def _hf4_gpt2(m, q, k, v, pad=None):
    """transformers 4.x GPT2Attention._attn, as written there (causal buffer ``bias``, 0-d scale and fill)."""
    w = torch.matmul(q, k.transpose(-1, -2))
    w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype, device=w.device)
    ql, kl = q.size(-2), k.size(-2)
    causal = m.bias[:, :, kl - ql:kl, :kl]
    fill = torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype, device=w.device)
    w = torch.where(causal, w.to(w.dtype), fill)
    if pad is not None:
        w = w + pad
    w = F.softmax(w, dim=-1).type(v.dtype)
    return torch.matmul(m.drop(w), v)


def _positions_mask():
    """A causal mask built in forward from positions, as transformers 5 builds it: a constant of the graph."""
    i = torch.arange(S)
    return torch.where(i[None, :] <= i[:, None], 0.0, MIN)[None, None]  # (1, 1, S, S)


def _repeat_kv(x, n):  # transformers' repeat_kv: (B, KV, S, D) -> (B, KV * n, S, D)
    b, kv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, n, s, d).reshape(b, kv * n, s, d)


def _llama(m, q, k, v, mask):
    """transformers' Llama/Qwen2 eager_attention_forward."""
    k, v = _repeat_kv(k, H // KV), _repeat_kv(v, H // KV)
    w = torch.matmul(q, k.transpose(2, 3)) * SCALE + mask
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(F.dropout(w, p=0.0, training=False), v)


def _gqa_shared(q, k, v):
    kr, vr = _repeat_kv(k, H // KV), _repeat_kv(v, H // KV)
    return torch.softmax(q @ kr.transpose(-2, -1) * SCALE, -1) @ vr + kr.mean()  # something else reads K repeated


def _baddbmm(q, k, v, base, beta):
    q3, kt3, v3 = q.reshape(B * H, S, D), k.reshape(B * H, S, D).transpose(1, 2), v.reshape(B * H, S, D)
    w = torch.baddbmm(base, q3, kt3, beta=beta, alpha=SCALE)
    return torch.bmm(torch.softmax(w, dim=-1), v3).reshape(B, H, S, D)


def _bloom(m, q, k, v):
    """BLOOM: ALiBi as baddbmm's input on (B*H, L, S), a view to (B, H, L, S), masked_fill, a float32 softmax, a
    view back for bmm."""
    q3, kt3, v3 = q.reshape(B * H, S, D), k.reshape(B * H, S, D).transpose(1, 2), v.reshape(B * H, S, D)
    w = m.alibi.baddbmm(batch1=q3, batch2=kt3, beta=1.0, alpha=SCALE).view(B, H, S, S)
    w = w.masked_fill(~m.tril, MIN)
    p = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.bmm(p.view(B * H, S, S), v3).view(B, H, S, D)


@dataclass(frozen=True)
class Form:
    fn: Callable  # (module, q, k, v, pad, drop) -> out
    pattern: str
    mask: str  # how SDPA gets the mask: none | causal | keep | additive
    kv: int = H  # heads of k and v
    gqa: bool = False  # repeat_kv absorbed: SDPA's enable_gqa
    score_sized_mask: bool = False  # the mask varies per head and per query (ALiBi and causal): written once


FORMS = {
    # scale: by / or *, on the scores, on q, on q and k, on K^T, by a 0-d tensor
    "scores / sqrt(d)": Form(lambda m, q, k, v, p, b: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D), -1) @ v,
                             "full_attention", "none"),
    "scores * d^-0.5 (HF)": Form(lambda m, q, k, v, p, b: torch.softmax(torch.matmul(q, k.transpose(2, 3)) * SCALE,
                                                                         dim=-1) @ v, "full_attention", "none"),
    "q * scale before QK^T (timm)": Form(lambda m, q, k, v, p, b: ((q * SCALE) @ k.transpose(-2, -1)).softmax(-1) @ v,
                                         "full_attention", "none"),
    "q and k * d^-0.25": Form(lambda m, q, k, v, p, b: torch.matmul(q * D ** -0.25, (k * D ** -0.25).transpose(-2, -1))
                              .softmax(dim=-1) @ v, "full_attention", "none"),
    "K^T / sqrt(d)": Form(lambda m, q, k, v, p, b: (q @ (k.transpose(-2, -1) / math.sqrt(D))).softmax(-1) @ v,
                          "full_attention", "none"),
    # masks: GPT-2 4.x's where, masked_fill with -inf or finfo.min, additive padding / causal / both, baddbmm
    "GPT-2 4.x: where(causal, w, finfo.min)": Form(lambda m, q, k, v, p, b: _hf4_gpt2(m, q, k, v),
                                                   "causal_attention", "causal"),
    "GPT-2 4.x: where(causal) + padding mask": Form(lambda m, q, k, v, p, b: _hf4_gpt2(m, q, k, v, p),
                                                    "masked_attention", "additive"),
    "masked_fill(~causal, -inf)": Form(lambda m, q, k, v, p, b: torch.softmax(
        (q @ k.transpose(-2, -1) * SCALE).masked_fill(~m.tril, float("-inf")), -1) @ v, "causal_attention", "causal"),
    "masked_fill(padding, -inf)": Form(lambda m, q, k, v, p, b: torch.softmax(
        (q @ k.transpose(-2, -1) * SCALE).masked_fill(b, float("-inf")), -1) @ v, "masked_attention", "keep"),
    "masked_fill(padding, finfo.min)": Form(lambda m, q, k, v, p, b: torch.softmax(
        (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(b, MIN), -1) @ v, "masked_attention", "additive"),
    "where(padding, -inf, w)": Form(lambda m, q, k, v, p, b: torch.softmax(
        torch.where(b, float("-inf"), q @ k.transpose(-2, -1) * SCALE), -1) @ v, "masked_attention", "keep"),
    "constant band mask (not causal)": Form(lambda m, q, k, v, p, b: torch.softmax(
        (q @ k.transpose(-2, -1) * SCALE).masked_fill(~m.band, float("-inf")), -1) @ v, "masked_attention", "keep"),
    "+ causal mask (1, 1, S, S)": Form(lambda m, q, k, v, p, b: torch.softmax(
        q @ k.transpose(-2, -1) * SCALE + m.causal_add, -1) @ v, "causal_attention", "causal"),
    "+ causal mask built from positions (HF 5)": Form(lambda m, q, k, v, p, b: torch.softmax(
        q @ k.transpose(-2, -1) * SCALE + _positions_mask(), -1) @ v, "causal_attention", "causal"),
    "+ padding mask (B, 1, 1, S)": Form(lambda m, q, k, v, p, b: torch.softmax(
        q @ k.transpose(-2, -1) * SCALE + p, -1) @ v, "masked_attention", "additive"),
    "padding mask + scores": Form(lambda m, q, k, v, p, b: torch.softmax(
        p + q @ k.transpose(-2, -1) * SCALE, -1) @ v, "masked_attention", "additive"),
    "+ causal + padding masks": Form(lambda m, q, k, v, p, b: torch.softmax(
        q @ k.transpose(-2, -1) * SCALE + m.causal_add + p, -1) @ v, "masked_attention", "additive"),
    "(scores + mask) * scale": Form(lambda m, q, k, v, p, b: torch.softmax(
        (q @ k.transpose(-2, -1) + p) * SCALE, -1) @ v, "masked_attention", "additive"),
    "baddbmm(empty, q, k^T, beta=0, alpha)": Form(lambda m, q, k, v, p, b: _baddbmm(
        q, k, v, q.new_empty(B * H, S, S), 0.0), "full_attention", "none"),
    "baddbmm(padding, q, k^T, alpha)": Form(lambda m, q, k, v, p, b: _baddbmm(
        q, k, v, p.expand(B, H, 1, S).reshape(B * H, 1, S), 1.0), "masked_attention", "additive"),
    "BLOOM: baddbmm(alibi), view, masked_fill, bmm": Form(lambda m, q, k, v, p, b: _bloom(m, q, k, v),
                                                          "masked_attention", "additive", score_sized_mask=True),
    # softmax in float32 and cast back; dropout in eval
    "softmax(float32).to(q.dtype) (Llama)": Form(lambda m, q, k, v, p, b: torch.matmul(F.softmax(
        torch.matmul(q, k.transpose(2, 3)) * SCALE + m.causal_add, dim=-1, dtype=torch.float32).to(q.dtype), v),
        "causal_attention", "causal"),
    "scores.float(), softmax, type_as (Meta Llama)": Form(lambda m, q, k, v, p, b: F.softmax(
        (torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D) + p).float(), dim=-1).type_as(q) @ v,
        "masked_attention", "additive"),
    "nn.Dropout in eval": Form(lambda m, q, k, v, p, b: m.drop(torch.softmax(q @ k.transpose(-2, -1) * SCALE, -1)) @ v,
                               "full_attention", "none"),
    # GQA: repeat_kv absorbed (enable_gqa), or left outside when something else reads the repeated K
    "GQA: Llama eager, repeat_kv + causal": Form(lambda m, q, k, v, p, b: _llama(m, q, k, v, m.causal_add),
                                                 "gqa_attention", "causal", kv=KV, gqa=True),
    "GQA: repeat_interleave, padding": Form(lambda m, q, k, v, p, b: torch.softmax(
        q @ k.repeat_interleave(H // KV, dim=1).transpose(-2, -1) * SCALE + p, -1) @ v.repeat_interleave(H // KV, 1),
        "masked_attention", "additive", kv=KV, gqa=True),
    "GQA: repeated K read elsewhere": Form(lambda m, q, k, v, p, b: _gqa_shared(q, k, v), "full_attention", "none",
                                           kv=KV),
}


class Block(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = FORMS[form]
        tril = torch.ones(S, S, dtype=torch.bool).tril()
        self.register_buffer("bias", tril.view(1, 1, S, S), persistent=False)  # GPT-2 4.x's causal buffer
        self.register_buffer("tril", tril)
        self.register_buffer("band", tril & tril.T.tril(2))  # each query sees itself and two keys back
        self.register_buffer("causal_add", torch.zeros(1, 1, S, S).masked_fill(~tril, MIN))
        slopes = 2.0 ** -torch.arange(1, H + 1).float()  # ALiBi: a per-head slope times the key position
        self.register_buffer("alibi", (slopes[:, None] * torch.arange(S)).repeat(B, 1)[:, None, :])  # (B*H, 1, S)
        self.drop = nn.Dropout(0.1)

    def forward(self, q, k, v, pad, drop):
        return self.form.fn(self, q, k, v, pad, drop)


def block_inputs(kv: int = H, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, S, D, generator=g).to(dtype)
    k, v = (torch.randn(B, kv, S, D, generator=g).to(dtype) for _ in range(2))
    drop = torch.zeros(B, 1, 1, S, dtype=torch.bool)
    drop[1, ..., -3:] = True  # the second sequence's last three keys are padding
    pad = torch.zeros(B, 1, 1, S, dtype=dtype).masked_fill(drop, torch.finfo(dtype).min)
    return q, k, v, pad, drop


def sdpa_everywhere(model, inputs):
    """Capture, match, decide every attention site 'fuse' with sdpa, apply: (sites, captured, planned model)."""
    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "sdpa", None, "test")
                 for s in sites if s.legal and REGISTRY[s.pattern].variant("sdpa") is not None}
    return sites, captured, apply(model, FusionPlan.from_decisions(captured, sites, decisions))


def float64_error(model, planned, inputs) -> float:
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        want = ref(*[x.double() if x.is_floating_point() else x for x in inputs])
        return relative_error(planned(*inputs), want)


SCORES = {(B, H, S, S), (B * H, S, S)}  # the shapes of a score matrix written out
VIEWS = {aten.reshape.default, aten.view.default, aten.expand.default}  # (a reshape of a contiguous tensor is one)


def _shape(n: torch.fx.Node) -> tuple | None:
    v = n.meta.get("val")
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def the_sdpa(planned) -> torch.fx.Node:
    [sdpa] = [n for n in planned.graph.nodes if original_target(n) == aten.scaled_dot_product_attention.default]
    return sdpa


@pytest.mark.parametrize("name", list(FORMS))
def test_each_idiom_is_one_site_and_one_sdpa_checked_against_float64(name):
    form = FORMS[name]
    if form.gqa and not HAS_GQA:
        pytest.skip("this torch's SDPA has no enable_gqa: repeat_kv stays outside the site")
    model, inputs = Block(name).eval(), block_inputs(form.kv)
    sites, captured, planned = sdpa_everywhere(model, inputs)
    # matched: one legal site of the expected pattern, and no attention op left out of it
    assert [(s.pattern, s.status) for s in sites] == [(form.pattern, "fusible")], sites[0].reasons if sites else None
    assert sites[0].roles.get("mask_form", "none") == form.mask
    assert ("gqa" in sites[0].roles) == form.gqa
    assert not ATTENTION_OPS & set(captured.unmatched)
    # rewritten: one SDPA, nothing of the eager chain left
    assert [r.applied for r in planned.fxfusion_rewrites] == [True], planned.fxfusion_rewrites[0].detail
    planned.graph.lint()
    ops = {str(original_target(n)) for n in planned.graph.nodes if n.op in ("call_function", "call_method")}
    assert not ops & {"aten.matmul.default", "aten.bmm.default", "aten.baddbmm.default", "aten.softmax.int",
                      "aten.dropout.default"}
    written = [n.name for n in planned.graph.nodes if _shape(n) in SCORES and original_target(n) not in VIEWS]
    assert len(written) == form.score_sized_mask, written  # no score matrix is written (but a score-sized mask)
    sdpa = the_sdpa(planned)
    mask = arg(sdpa, 3, "attn_mask")
    assert bool(arg(sdpa, 5, "is_causal", False)) == (form.mask == "causal")
    assert (mask is None) == (form.mask in ("none", "causal"))
    if mask is not None:
        assert (mask.meta["val"].dtype == torch.bool) == (form.mask == "keep")
    assert sdpa.kwargs["scale"] == pytest.approx(SCALE) and sdpa.kwargs.get("enable_gqa", False) == form.gqa
    assert float64_error(model, planned, inputs) < tolerance(torch.float32)


@pytest.mark.parametrize("name", ["GPT-2 4.x: where(causal) + padding mask", "GQA: Llama eager, repeat_kv + causal",
                                  "scores.float(), softmax, type_as (Meta Llama)"])
def test_idioms_in_bfloat16_are_one_sdpa_within_bfloat16_tolerance(name):
    """The float32 softmax of Llama and the finfo.min masks of GPT-2 in bfloat16: SDPA accumulates in float32."""
    form = FORMS[name]
    if form.gqa and not HAS_GQA:
        pytest.skip("this torch's SDPA has no enable_gqa")
    model, inputs = Block(name).eval().to(torch.bfloat16), block_inputs(form.kv, torch.bfloat16)
    sites, _, planned = sdpa_everywhere(model, inputs)
    assert [(s.pattern, s.status, s.dtype) for s in sites] == [(form.pattern, "fusible", "bfloat16")]
    assert [r.applied for r in planned.fxfusion_rewrites] == [True]
    assert float64_error(model, planned, inputs) < tolerance(torch.bfloat16)


@pytest.mark.parametrize("name,causal", [("+ causal mask built from positions (HF 5)", True),
                                         ("+ padding mask (B, 1, 1, S)", False)])
def test_a_region_cut_for_in_model_timing_runs_the_sdpa_the_model_will(name, causal):
    """In-model timing rewrites the site cut out of the graph, its mask an input it cannot evaluate: a mask proved
    causal when matching still becomes is_causal there (the pattern carries the proof); a run-time mask stays one."""
    model, inputs = Block(name).eval(), block_inputs()
    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "sdpa", None, "test") for s in sites}
    [group] = FusionPlan.from_decisions(captured, sites, decisions).groups
    gm = runnable_graph(captured, 0, model)
    region, _ = cut_region(gm, [n for n in gm.graph.nodes if n.name in group.nodes])
    assert rewrite_group(region, group).applied
    sdpa = the_sdpa(region)
    assert bool(arg(sdpa, 5, "is_causal", False)) == causal and (arg(sdpa, 3, "attn_mask") is None) == causal


def test_a_run_time_scale_is_matched_and_refused_with_its_reason():
    class Temperature(nn.Module):
        def forward(self, q, k, v, t):  # t: a 0-d tensor given at run time
            return torch.softmax(q @ k.transpose(-2, -1) * t, -1) @ v

    q, k, v = block_inputs()[:3]
    sites = find_sites(capture(Temperature(), (q, k, v, torch.tensor(0.3))))
    assert [(s.pattern, s.status) for s in sites] == [("full_attention", "illegal")]
    assert sites[0].reasons == ["the scores are scaled by a run-time tensor: SDPA's scale must be a number"]


def test_gqa_repeat_read_elsewhere_stays_outside_and_sdpa_takes_the_repeated_kv():
    model, inputs = Block("GQA: repeated K read elsewhere").eval(), block_inputs(KV)
    sites, _, planned = sdpa_everywhere(model, inputs)
    assert "outside the site" in " ".join(sites[0].notes)
    sdpa = the_sdpa(planned)
    assert sdpa.args[1].meta["val"].shape[1] == H and "enable_gqa" not in sdpa.kwargs


def test_gqa_site_shape_names_the_kv_heads():
    if not HAS_GQA:
        pytest.skip("this torch's SDPA has no enable_gqa")
    sites = find_sites(capture(Block("GQA: Llama eager, repeat_kv + causal").eval(), block_inputs(KV)))
    assert sites[0].shape == {"B": B, "H": H, "KV": KV, "S": S, "D": D}
    REGISTRY["gqa_attention"].check_shape(sites[0].shape)


def test_masked_and_gqa_patterns_count_bytes_by_hand():
    masked, gqa = REGISTRY["masked_attention"], REGISTRY["gqa_attention"]
    s = dict(B=1, H=2, S=4, D=2)
    n, m = 1 * 2 * 4 * 2, 1 * 2 * 4 * 4
    # unfused: QK^T (2n + m), scale (2m), + mask (2m and the (B, S) mask), softmax (2m), PV (m + 2n)
    assert masked.bytes(s, 4, False) == 4 * (2 * n + m + 2 * m + 2 * m + 4 + 2 * m + m + 2 * n)
    assert masked.bytes(s, 4, True) == 4 * (4 * n + 4)
    g = dict(B=1, H=2, KV=1, S=4, D=2)
    kv = 1 * 1 * 4 * 2
    # float32: repeat_kv (2 kv + 2n), QK^T, scale, + (S, S) mask, softmax (m read, m written), no cast, PV
    assert gqa.bytes(g, 4, False) == 4 * (2 * kv + 2 * n + 2 * n + m + 2 * m + 2 * m + 16 + 2 * m + m + 2 * n)
    # bfloat16: the softmax reads bfloat16 and writes float32 scores; the cast back reads those, writes bfloat16
    assert gqa.bytes(g, 2, False) == 2 * (2 * kv + 6 * n + 6 * m + 16) + (2 * m + 4 * m) + (4 * m + 2 * m)
    assert gqa.bytes(g, 2, True) == 2 * (2 * n + 2 * kv)
