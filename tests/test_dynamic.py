"""Dynamic shapes (issue 25 item 2): one planned model for every batch size and sequence length of a declared range
(fxfusion/planning/dynamic.py), verified against float64 at the buckets and at a shape never measured, a causal mask
proved at every length, saved and applied again, and a malformed --dynamic refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import fxfusion
from fxfusion.cli.commands import app
from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import load_model
from fxfusion.planning.apply import apply
from fxfusion.planning.dynamic import buckets, parse_dynamic, plan_over_range, resolve, shapes_to_verify
from fxfusion.planning.dynamic_verify import check_shapes
from fxfusion.graph.capture import capture
from fxfusion.planning.saved import fingerprint, load_plan, save_plan
from fxfusion.profiles.schema import schema_errors
from tests.helpers import runnable_plan_of

MODELS = Path(__file__).resolve().parent.parent / "models"
runner = CliRunner()


def _zoo(name: str):
    library = "transformers" if name.startswith("hf_") else "timm"
    try:
        __import__(library)
    except Exception as exc:  # not installed, or installed broken (a torchvision built for another torch)
        pytest.skip(f"{library} does not import here: {type(exc).__name__}: {str(exc)[:120]}")
    return load_model(MODELS / "zoo" / f"{name}.py")


def _every_site(model):
    """Every legal site rewritten with its first CPU variant, at each bucket: the decisions are not under test."""
    return lambda inputs, sizes: runnable_plan_of(model, inputs)


def _verified(model, plan, inputs) -> list[dict]:
    rows = check_shapes(model, plan.captured.dynamic.dims, inputs, apply(model, plan), "cpu")
    assert len(rows) >= 3 and any(not r["measured"] for r in rows)
    assert all(r["ok"] and r["reference"] == "float64" for r in rows), rows
    return rows


# -- the ranges --------------------------------------------------------------------------------------------------------

def test_ranges_are_read_with_defaults_and_placed_on_the_inputs():
    assert parse_dynamic("batch,seq") == {"batch": (None, None), "seq": (None, None)}
    assert parse_dynamic("batch=1:32, seq=16:512") == {"batch": (1, 32), "seq": (16, 512)}
    ids, mask, x = torch.zeros(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long), torch.randn(2, 16, 8)
    dims = resolve("batch,seq=4:64", nn.Identity(), (ids, mask, x))
    assert [str(r) for r in dims.ranges] == ["batch=1:32", "seq=4:64"]
    assert dims.axes == ({0: "batch", 1: "seq"}, {0: "batch", 1: "seq"}, {0: "batch"})  # seq: token inputs only
    assert buckets(dims) == [{"batch": 1, "seq": 4}, {"batch": 16, "seq": 34}, {"batch": 32, "seq": 64}]
    new = [s for s, measured in shapes_to_verify(dims) if not measured]
    assert new == [{"batch": 9, "seq": 19}]  # between the smallest and the middle bucket, measured nowhere
    resized = dims.resize((ids, mask, x), {"batch": 3, "seq": 5})
    assert [tuple(t.shape) for t in resized] == [(3, 5), (3, 5), (3, 16, 8)] and bool((resized[1] == 1).all())


@pytest.mark.parametrize("text, says", [
    ("width", "unknown dimension 'width'"), ("batch=0:4", "positive sizes"), ("batch=8:8", "more than one size"),
    ("batch=1-4", "is not NAME=LO:HI"), ("batch,batch", "given twice")])
def test_a_malformed_range_is_one_error(text, says):
    with pytest.raises(FxFusionError, match=says):
        parse_dynamic(text)


@pytest.mark.parametrize("args, says", [
    (["--apply", "--dynamic", "batch=1:x"], "--dynamic: 'batch=1:x' is not NAME=LO:HI"),
    (["--dynamic", "batch"], "--dynamic plans and verifies over a range of shapes: add --apply")])
def test_cli_bad_dynamic_is_one_line_exit_1(args, says):
    result = runner.invoke(app, ["analyze", str(MODELS / "mlp_block.py"), *args])
    err = result.stderr if result.stderr_bytes is not None else result.output
    assert result.exit_code == 1 and err.strip().startswith("error: ") and says in err
    assert len(err.strip().splitlines()) == 1


def test_seq_needs_token_inputs_and_stays_within_the_positions():
    with pytest.raises(FxFusionError, match="dim 1 of the token"):
        resolve("seq", nn.Identity(), (torch.randn(2, 8),))
    model = nn.Module()
    model.config = type("Config", (), {"max_position_embeddings": 64})()
    ids = torch.zeros(2, 16, dtype=torch.long)
    assert str(resolve("seq", model, (ids,)).ranges[0]) == "seq=16:64"  # the default, at most the positions
    with pytest.raises(FxFusionError, match="seq=8:128 goes past the model's 64 positions"):
        resolve("seq=8:128", model, (ids,))


# -- one planned model, every shape ------------------------------------------------------------------------------------

def test_gpt2_one_planned_model_verified_at_three_shapes_and_guarded():
    loaded = _zoo("hf_gpt2")
    model, inputs = loaded.model, loaded.example_inputs
    plan = plan_over_range(model, inputs, "batch=1:4,seq=8:32", _every_site(model), torch.device("cpu"))
    attention = [g for g in plan.groups if g.pattern.endswith("attention")]
    assert [(g.pattern, g.variant) for g in attention] == [("causal_attention", "sdpa")] * 2  # one per layer
    sites = {s.id: s for s in plan.sites}
    assert all("mask proved causal at every shape of batch=1:4, seq=8:32" in sites[g.id].notes for g in attention)
    rows = _verified(model, plan, inputs)
    assert [(r["shape"], r["measured"]) for r in rows] == [("batch=1,seq=8", True), ("batch=2,seq=20", True),
                                                          ("batch=4,seq=32", True), ("batch=3,seq=14", False)]
    # the fingerprint a saved plan carries (taken after matching) is a fresh capture's (before matching), with
    # split's tuple of symbolic shapes among its values
    fresh = capture(model, inputs, dynamic=plan.captured.dynamic.dims)
    assert fingerprint(plan.captured) == fingerprint(fresh) and "[batch, seq, " in fresh.dynamic.spec_text("embedding")
    planned = apply(model, plan)
    with pytest.raises(FxFusionError, match=r"size 33 at dim 1, outside the planned range 8\.\.32"):
        planned(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.slow  # 20 s under load; GPT-2's test keeps an LLM in the default run
def test_llama_merged_gemms_hold_at_every_shape():
    loaded = _zoo("hf_llama")
    model, inputs = loaded.model, loaded.example_inputs
    plan = plan_over_range(model, inputs, "batch=1:3,seq=4:24", _every_site(model), torch.device("cpu"))
    assert {g.variant for g in plan.groups} >= {"merged", "rms_norm_op"}
    _verified(model, plan, inputs)


# The zoo's conv nets rewrite 20-80 sites, each application 10-25 s on a busy 2-core machine: slow, as in test_zoo;
# the reference ResNet block keeps a conv net in the default run.
@pytest.mark.parametrize("name, groups", [("resnet_basic", 3),
                                          pytest.param("timm_resnet18", 20, marks=pytest.mark.slow)])
def test_a_cnn_folds_bn_once_for_every_batch_size(name, groups):
    loaded = _zoo(name) if name.startswith("timm") else load_model(MODELS / f"{name}.py")
    model, inputs = loaded.model, loaded.example_inputs
    plan = plan_over_range(model, inputs, "batch=1:4", _every_site(model), torch.device("cpu"))
    assert len(plan.groups) == groups and {g.variant for g in plan.groups} <= {"bn_folded", "conv_relu_fused"}
    assert [r["shape"] for r in _verified(model, plan, inputs)] == ["batch=1", "batch=2", "batch=4", "batch=3"]


# -- a causal mask at every length -------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Hand-written attention whose mask is built from the length: causal, or (``shifty``) one diagonal too wide at
    every length L with L % 7 == 3 -- causal at the buckets 4, 11 and 18 of seq=4:18, not at 10."""

    def __init__(self, shifty: bool = False, vocab: int = 32, d: int = 16):
        super().__init__()
        self.emb, self.q, self.k, self.v = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.shifty = shifty

    def forward(self, ids):  # (B, L) -> (B, L, d)
        x = self.emb(ids)
        i = torch.arange(ids.shape[1], device=ids.device)
        extra = ((i[-1] + 1) % 7 == 3).long() if self.shifty else 0
        drop = i[None, :] > i[:, None] + extra
        s = (self.q(x) @ self.k(x).transpose(-2, -1)) / 4.0
        return s.masked_fill(drop, float("-inf")).softmax(-1) @ self.v(x)


def _attention_plan(shifty: bool):
    model, inputs = Attention(shifty).eval(), (torch.randint(0, 32, (2, 11)),)
    return model, inputs, plan_over_range(model, inputs, "batch=1:3,seq=4:18", _every_site(model),
                                          torch.device("cpu"))


def test_a_causal_mask_is_proved_at_every_length_and_verified_at_a_new_one():
    model, inputs, plan = _attention_plan(shifty=False)
    assert [g.pattern for g in plan.groups] == ["sibling_gemm3_bias", "causal_attention"]
    rows = _verified(model, plan, inputs)
    assert [r["shape"] for r in rows if not r["measured"]] == ["batch=1,seq=7"]
    # other_shapes="original": a shape inside the ranges runs planned, one outside them the original, with a warning
    served = apply(model, plan, other_shapes="original")
    inside, outside = torch.randint(0, 32, (3, 9)), torch.randint(0, 32, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(served(inside), model(inside), rtol=1e-4, atol=1e-5)
        with pytest.warns(UserWarning, match="running the original model"):
            torch.testing.assert_close(served(outside), model(outside))


def test_a_mask_causal_at_the_buckets_only_is_refused_with_the_length():
    model, inputs, plan = _attention_plan(shifty=True)
    refused = {r.site_id: r for r in plan.refused}
    assert not [g for g in plan.groups if g.pattern.endswith("attention")]
    site = next(r for r in refused.values() if r.pattern == "masked_attention")
    assert "not proved at every shape of the range: at batch=1,seq=10 its mask is not causal" in site.reasons[0]
    row = next(s for s in plan.captured.dynamic.buckets if s["id"] == site.site_id)
    assert [b["pattern"] for b in row["buckets"]] == ["causal_attention"] * 3  # each bucket alone: causal


# -- the library's entry point and a saved plan ------------------------------------------------------------------------

def test_fxfusion_plan_takes_dynamic_and_a_saved_plan_serves_every_shape(tmp_path, monkeypatch):
    model, inputs = Attention().eval(), (torch.randint(0, 32, (2, 11)),)
    import fxfusion.planning.pipeline as pipeline
    monkeypatch.setattr(pipeline, "plan_over_range", lambda m, x, dyn, plan_at, device: plan_over_range(
        m, x, dyn, _every_site(m), device))
    plan = fxfusion.plan(model, None, inputs, dynamic="batch=1:3,seq=4:18")
    assert [g.pattern for g in plan.groups] == ["sibling_gemm3_bias", "causal_attention"]
    path = save_plan(plan, tmp_path / "plan.json", model, inputs)
    data = json.loads(path.read_text())
    assert schema_errors(data, "plan") == [] and data["dynamic"]["ranges"] == {"batch": [1, 3], "seq": [4, 18]}
    fast = fxfusion.apply(model, load_plan(path), example_inputs=(torch.randint(0, 32, (3, 5)),))
    assert [r.applied for r in fast.fxfusion_rewrites] == [True, True]
    for shape in [(1, 4), (3, 13), (2, 18)]:
        ids = torch.randint(0, 32, shape)
        with torch.no_grad():
            torch.testing.assert_close(fast(ids), model(ids), rtol=1e-4, atol=1e-5)
    with pytest.raises(FxFusionError, match="outside the planned range 1..3"):
        fast(torch.zeros(4, 5, dtype=torch.long))


# -- the command line, end to end --------------------------------------------------------------------------------------

@pytest.fixture
def quick_dynamic(monkeypatch):
    """As tests/helpers.quick_apply for analyze --apply --dynamic: verification and eager context timed briefly,
    nothing compiled, the captured graph's overhead zero, regions priced by op count."""
    import dataclasses

    import fxfusion.cli.analyze as cli
    import fxfusion.planning.insitu as insitu
    import fxfusion.planning.pipeline as pipeline
    from fxfusion.planning.candidates import CandidateSet
    from fxfusion.planning.insitu import Overhead
    from tests.helpers import TINY_SPEC, OpCountClock

    real = pipeline.apply_and_verify_dynamic

    def quick(model, inputs, planner, dynamic, analyze_at):
        specs = dataclasses.replace(planner.specs, verify=TINY_SPEC, context=TINY_SPEC)
        return real(model, inputs, dataclasses.replace(planner, specs=specs, candidates=CandidateSet.uncompiled()),
                    dynamic, analyze_at)

    monkeypatch.setattr(cli, "apply_and_verify_dynamic", quick)
    monkeypatch.setattr(pipeline, "measure_overhead", lambda *a, **k: Overhead(0.0, 0.0, 0.0))
    monkeypatch.setattr(insitu, "model_clock", lambda device: OpCountClock())


@pytest.mark.slow  # three buckets of analyze --apply, each timed: 2.5 min on the loaded 2-core CPU (2026-12-07)
def test_cli_analyze_dynamic_reports_buckets_saves_and_apply_serves_the_range(folding_profile, quick_dynamic,
                                                                              tmp_path):
    model = MODELS / "mobilenet_block.py"
    result = runner.invoke(app, ["analyze", str(model), "--profile", str(folding_profile), "--apply", "--dynamic",
                                 "batch=1:6", "-o", str(tmp_path / "report.json"), "--save-plan",
                                 str(tmp_path / "plan.json")])
    err = result.stderr if result.stderr_bytes is not None else result.output
    assert result.exit_code == 0, err
    section = json.loads((tmp_path / "report.json").read_text())["verification"]["dynamic"]
    assert section["ranges"] == {"batch": [1, 6]} and section["buckets"] == ["batch=1", "batch=3", "batch=6"]
    assert [(r["shape"], r["measured"], r["ok"]) for r in section["verified_shapes"]] == [
        ("batch=1", True, True), ("batch=3", True, True), ("batch=6", True, True), ("batch=2", False, True)]
    assert [s["kept"] for s in section["sites"]] == [True, True] and len(section["end_to_end"]) == 3
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["dynamic"]["ranges"] == {"batch": [1, 6]} and len(saved["groups"]) == 2

    result = runner.invoke(app, ["apply", str(tmp_path / "plan.json"), str(model)])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert "2 of 2 rewrites applied" in line and "serves batch=1:6" in line
    assert "outputs match float64 at 4 shapes (batch=1; batch=3; batch=6; batch=2; never measured: batch=2" in line


def test_a_model_that_does_not_export_whole_is_one_error_before_any_measurement():
    loaded = load_model(MODELS / "dynamic_control.py")  # data-dependent control flow: Dynamo subgraphs only
    measured = []
    with pytest.raises(FxFusionError, match=r"^torch.export could not capture the model with symbolic batch=1:4: "):
        plan_over_range(loaded.model, loaded.example_inputs, "batch=1:4", lambda x, s: measured.append(s),
                        torch.device("cpu"))
    assert measured == []


def test_the_markdown_report_tells_the_buckets_and_the_shapes_verified():
    from fxfusion.reports.dynamic import dynamic_markdown
    bucket = {"planned": True, "variant": "sdpa", "speedup": {"median": 1.5, "ci_low": 1.2, "ci_high": 1.8}}
    section = {"ranges": {"batch": [1, 4]}, "buckets": ["batch=1", "batch=2", "batch=4"], "chosen": "planned",
               "why": "chosen at 3 of 3 buckets",
               "sites": [{"id": "g0.s1", "pattern": "causal_attention", "kept": True, "why": None,
                          "buckets": [bucket] * 3}],
               "end_to_end": [{"bucket": b, "ok": True, "chosen": "planned",
                               "timings": {"eager": {"median_ms": 2.0, "speedup": None},
                                           "planned": {"median_ms": 1.0, "speedup": {"median": 2.0}}}}
                              for b in ("batch=1", "batch=2", "batch=4")],
               "verified_shapes": [{"shape": "batch=3", "measured": False, "ok": True, "error": 1e-7}]}
    text = dynamic_markdown(section)
    assert "| g0.s1 | causal_attention | yes | sdpa 1.50x | sdpa 1.50x | sdpa 1.50x |  |" in text
    assert "| batch=2 | 2.000 | 1.000 (2.00x) | - | planned | yes |" in text
    assert "| batch=3 | no (never measured) | 1.00e-07 | - | yes |" in text
    # the HTML report has the same section, escaped, inside the verification
    from fxfusion.reports.html import render_analysis_html
    section["sites"][0]["pattern"] = "<causal>"
    page = render_analysis_html({"metadata": {"model": "m"}, "verification": {"ok": True, "dynamic": section}})
    assert '<section id="dynamic"><h2>Dynamic shapes</h2>' in page and "&lt;causal&gt;" in page
    assert "<td>batch=3</td><td>no (never measured)</td><td>1.00e-07</td>" in page
