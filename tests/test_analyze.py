"""Deciding sites at their own shape and dtype (profile or live), and the analysis report built from them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console

from fxfusion.planning.analyze import LiveSource, Lookup, ProfileSource, analyze, decide_site
from fxfusion.reports.text import render_markdown, render_table
from fxfusion.graph.loader import load_model
from fxfusion.fusions.registry import REGISTRY
from fxfusion.profiles.profile import Decision, Entry, Profile, VariantResult
from fxfusion.measure.stats import Speedup
from fxfusion.profiles.schema import schema_errors
from fxfusion.graph.sites import Site
from fxfusion.errors import FxFusionError
from tests.helpers import TINY_SPEC

MODELS = Path(__file__).resolve().parent.parent / "models"


class WrittenLinear(nn.Module):
    """x @ W.T + b then ReLU: a linear_bias_relu site whose baseline is the library's eager chain."""

    def __init__(self, k=256, n=256):
        super().__init__()
        self.W, self.b = nn.Parameter(torch.randn(n, k) * k**-0.5), nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return F.relu(x @ self.W.T + self.b)


def run(model, inputs, source, **kw):
    return analyze(model.eval(), inputs, source, model_label="test", time_forward=False, **kw)


# -- decide_site on hand-made entries: the baseline and saving rules, exactly ----------------------------------------

def variant(name, kind, ms):
    samples = [ms * f for f in (0.98, 0.99, 1.0, 1.0, 1.01, 1.02)]
    return VariantResult(name=name, kind=kind, status="ok", samples_ms=samples, median_ms=ms)


def entry(shape, variants, verdict="fuse", best="compile"):
    d = Decision("linear_bias_relu", dict(shape), "float32", "cpu", verdict, best, Speedup(2.0, 1.9, 2.1), "test",
                 measured_shape=dict(shape))
    return Entry("linear_bias_relu", "linear", "Linear+Bias+ReLU", dict(shape), "float32", "cpu", 1, 1, 1, 0.5,
                 {"unfused_ms": 1.0, "fused_ms": 0.5, "bound": "memory", "peak_gflops": 100.0, "peak_gbs": 20.0,
                  "basis": "test"}, variants, d)


SHAPE = {"M": 64, "K": 256, "N": 256}


def site(bias_in_gemm: bool, status="fusible"):
    return Site("g0.s0", "linear_bias_relu", 0, ["linear", "relu"], dict(SHAPE), "float32", status=status,
                baseline_variant="addmm" if bias_in_gemm else "eager")


def test_written_out_linear_is_compared_with_eager_and_saves_eager_minus_best():
    e = entry(SHAPE, [variant("eager", "eager", 1.0), variant("addmm", "manual", 0.8),
                      variant("compile", "compile", 0.5)])
    out = decide_site(site(False), Lookup(e, e.decision))
    assert (out.verdict, out.baseline_variant, out.best_variant) == ("fuse", "eager", "compile")
    assert out.saved_ms == pytest.approx(0.5) and out.speedup == e.decision.speedup
    pattern = REGISTRY["linear_bias_relu"]
    assert out.bytes_saved == pattern.bytes(SHAPE, 4, False) - pattern.bytes(SHAPE, 4, True)


def test_nn_linear_is_compared_with_addmm_how_it_already_runs():
    e = entry(SHAPE, [variant("eager", "eager", 1.0), variant("addmm", "manual", 0.8),
                      variant("compile", "compile", 0.5)])
    out = decide_site(site(True), Lookup(e, e.decision))
    assert (out.verdict, out.baseline_variant, out.best_variant) == ("fuse", "addmm", "compile")
    assert out.saved_ms == pytest.approx(0.3) and out.speedup.median == pytest.approx(0.8 / 0.5)
    assert out.bytes_saved == 2 * 4 * SHAPE["M"] * SHAPE["N"]  # only the activation's read and write are left


def test_nn_linear_with_nothing_beyond_addmm_is_undecided_not_a_fuse():
    e = entry(SHAPE, [variant("eager", "eager", 1.0), variant("addmm", "manual", 0.8)], best="addmm")
    out = decide_site(site(True), Lookup(e, e.decision))
    assert out.verdict == "undecided" and out.saved_ms is None
    assert "no correct variant other than addmm" in out.warnings[0]


def test_slower_fusion_saves_nothing():
    e = entry(SHAPE, [variant("eager", "eager", 1.0), variant("compile", "compile", 1.5)], verdict="avoid",
              best="eager")
    out = decide_site(site(False), Lookup(e, e.decision))
    assert out.verdict == "avoid" and out.saved_ms is None and out.best_ms == pytest.approx(1.0)


def test_illegal_and_already_fused_sites_are_never_decided():
    e = entry(SHAPE, [variant("eager", "eager", 1.0), variant("compile", "compile", 0.5)])
    assert decide_site(site(False, "illegal"), Lookup(e, e.decision)).decision is None
    fused = decide_site(site(True, "already_fused"), None)
    assert fused.verdict == "already_fused" and fused.bytes_saved is None


# -- from a profile -----------------------------------------------------------------------------------------------

def test_profile_decides_at_the_exact_shape(tiny_profile):
    profile = Profile.load(tiny_profile)
    a = run(WrittenLinear(), (torch.randn(64, 256),), ProfileSource(profile, "cpu", str(tiny_profile)))
    (o,) = a.outcomes
    assert o.site.pattern == "linear_bias_relu" and o.decision.exact and o.baseline_variant == "eager"
    assert o.verdict == o.decision.verdict and o.warnings == [] and o.baseline_ms > 0
    report = a.to_dict()
    assert report["metadata"]["mode"] == "profile" and report["metadata"]["profile"] == str(tiny_profile)
    assert report["sites"][0]["decision"]["measured_shape"] == SHAPE


def test_profile_far_from_the_shape_warns_and_scales_by_the_roofline(tiny_profile):
    profile = Profile.load(tiny_profile)
    a = run(WrittenLinear(64, 64), (torch.randn(8, 64),), ProfileSource(profile, "cpu"))
    (o,) = a.outcomes
    assert not o.decision.exact
    assert any("is far from" in w for w in o.warnings)
    assert any("scaled from the measured shape" in w for w in o.warnings)
    eager = next(e for e in profile.entries if e.shape == o.decision.measured_shape and e.pattern == "linear_bias_relu")
    assert o.baseline_ms < eager.variant("eager").median_ms  # a much smaller problem is predicted faster


def test_profile_without_the_pattern_leaves_the_site_undecided(tiny_profile):
    a = run(nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.ReLU()), (torch.randn(1, 4, 16),),
            ProfileSource(Profile.load(tiny_profile), "cpu", live=False))  # live: tests/test_profile_gaps.py
    (o,) = a.outcomes
    assert o.verdict == "undecided" and "profile has no entries for pattern 'conv1d_relu'" in o.warnings[0]
    assert a.undecided() == {"g0.s0": o.warnings[0]}


def test_profile_from_other_hardware_is_refused_unless_allowed_then_warns(tiny_profile):
    profile = Profile.load(tiny_profile)
    other = copy.deepcopy(profile)
    other.metadata["device_name"] = "Some Other CPU 9000"
    with pytest.raises(FxFusionError, match=r"measured on cpu \(Some Other CPU 9000.*runs on cpu \(.*allow_foreign"):
        ProfileSource(other, "cpu")
    with pytest.raises(FxFusionError, match="measured on cpu .* but the model runs on cuda"):
        ProfileSource(profile, "cuda")
    assert "Some Other CPU 9000" in ProfileSource(other, "cpu", allow_foreign=True).warnings()[0]
    a = run(WrittenLinear(), (torch.randn(64, 256),), ProfileSource(other, "cpu", allow_foreign=True))
    assert "may not transfer" in a.to_dict()["warnings"][0]


# -- live ---------------------------------------------------------------------------------------------------------

def test_live_measures_each_distinct_problem_once(monkeypatch):
    import importlib

    calibrate = importlib.import_module("fxfusion.planning.decide")  # where LiveSource looks measure_entry up
    calls = []
    real = calibrate.measure_entry

    def counting(pattern, shape, *args, **kwargs):
        calls.append((pattern.name, tuple(shape.items())))
        return real(pattern, shape, *args, **kwargs)

    monkeypatch.setattr(calibrate, "measure_entry", counting)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU())
    a = run(model, (torch.randn(16, 32),), LiveSource("cpu", spec=TINY_SPEC, compile_modes=()))
    assert [o.site.pattern for o in a.outcomes] == ["linear_bias_relu"] * 3
    assert calls == [("linear_bias_relu", (("M", 16), ("K", 32), ("N", 32))),
                     ("linear_bias_relu", (("M", 16), ("K", 32), ("N", 64)))]
    assert all(o.baseline_variant == "addmm" for o in a.outcomes)
    report = a.to_dict()
    assert report["metadata"]["mode"] == "measure" and report["metadata"]["timing"]["rounds"] == TINY_SPEC.rounds


@pytest.mark.slow
def test_live_with_torch_compile_decides_an_nn_linear_against_addmm():
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(approximate="tanh"))
    a = run(model, (torch.randn(32, 64),), LiveSource("cpu", spec=TINY_SPEC, compile_modes=("compile",)))
    (o,) = a.outcomes
    assert o.site.pattern == "linear_bias_gelu_tanh" and o.baseline_variant == "addmm"
    assert o.verdict in ("fuse", "neutral", "avoid") and o.speedup is not None
    assert o.best_variant in ("addmm", "compile", "addmm_epilogue")
    assert (o.saved_ms is not None) == (o.verdict == "fuse")


# -- the report -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.py")))
def test_match_only_report_of_every_reference_model_validates(name):
    loaded = load_model(MODELS / name)
    a = run(loaded.model, loaded.example_inputs, None)
    report = a.to_dict()
    assert schema_errors(report, "analysis") == []
    sm = report["summary"]
    assert sm["matched_nodes"] + sm["unmatched_nodes"] == report["capture"]["nodes"]
    assert sm["sites"] == sm["fusible"] + sm["illegal"] + sm["already_fused"] == len(report["sites"])
    assert sm["undecided"] == sm["fusible"] and sm["saved_ms_per_forward"] == 0
    assert report["metadata"]["mode"] == "match_only" and a.decisions() == {}


def test_renderings_list_every_site_refusal_and_the_total():
    loaded = load_model(MODELS / "shared_conv.py")
    report = analyze(loaded.model, loaded.example_inputs, None, model_label="shared_conv.py",
                     forward_spec=TINY_SPEC).to_dict()
    assert report["summary"]["forward_ms"] > 0
    console = Console(width=200, record=True, color_system=None)
    console.print(render_table(report))
    text, markdown = console.export_text(), render_markdown(report)
    for out in (text, markdown):
        assert all(s["id"] in out for s in report["sites"])
        assert "g0.s0 refused: conv conv (weight conv.weight) is reused on another path" in out
        assert "3 sites: 1 fusible, 2 illegal, 0 already fused" in out
        assert "unmatched ops: aten.add.Tensor x1, aten.flip.default x1" in out
    assert markdown.count("\n| g0.s") == 3


def test_training_mode_is_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    a = analyze(model, (torch.randn(2, 3, 8, 8),), None, time_forward=False)
    assert a.outcomes[0].verdict == "illegal" and "training mode" in a.warnings[0]
