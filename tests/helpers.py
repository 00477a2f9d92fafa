"""What several test modules share: the tiny timing spec, the reference models' typical plans, a way to swap a
variant's rewrite, and sample reports (the one helpers module; test modules import from here, never from each
other)."""

from __future__ import annotations

import copy
import dataclasses
import random
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fxfusion.calibration.calibrate import _decide
from fxfusion.fusions.match import find_sites
from fxfusion.fusions.registry import REGISTRY
from fxfusion.graph.capture import capture
from fxfusion.graph.loader import load_model
from fxfusion.graph.sites import Site
from fxfusion.measure.stats import speedup
from fxfusion.measure.timing import TimingSpec
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.prediction import Capture, ClassTiming, Context, Prediction, RegionTiming, Source
from fxfusion.profiles.profile import Decision, Entry, Profile, Timing, decision_to_dict
from fxfusion.profiles.schema import SCHEMA_VERSION
from fxfusion.measure.stats import Speedup

# Enough rounds for a bootstrap interval, little enough to keep the suite fast.
TINY_SPEC = TimingSpec(rounds=6, warmup=1, target_sample_s=0.0005, budget_s=0.5)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def replace_rewrite(monkeypatch, variant: str, make: Callable[[Callable], Callable]) -> None:
    """For the test's duration, every pattern's ``variant`` rewrites with ``make(original_rewrite)``."""
    for name, p in list(REGISTRY.items()):
        mv = p.variant(variant)
        if mv is not None:
            manual = tuple(dataclasses.replace(m, rewrite=make(m.rewrite)) if m is mv else m for m in p.manual)
            monkeypatch.setitem(REGISTRY, name, dataclasses.replace(p, manual=manual))


def ten_percent_off(correct: Callable) -> Callable:
    """For :func:`replace_rewrite`: the site's output scaled by 1.1, a rewrite as wrong as a 10% weight error."""
    def rewrite(gm, nodes, group):
        old, new = correct(gm, nodes, group)
        with gm.graph.inserting_after(new):
            scaled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (new, 1.1))
        return old, scaled
    return rewrite


MODELS = Path(__file__).resolve().parent.parent / "models"

# What a typical profile picks per family; the plan is then determined by the sites' legality and baselines.
TYPICAL = {"conv": "bn_folded", "attention": "sdpa", "linear": "compile", "add_layernorm": "triton_add_layernorm",
           "rmsnorm": "rms_norm_op", "add_layernorm_sum": "triton_add_layernorm_sum",
           "add_rmsnorm_sum": "triton_add_rmsnorm_sum"}


def typical_variant(site: Site) -> str:
    if site.pattern.startswith("conv"):
        return TYPICAL["conv"]
    if site.pattern.endswith("attention"):
        return TYPICAL["attention"]
    if site.pattern.startswith("linear"):
        return TYPICAL["linear"]
    return TYPICAL[site.pattern]


def typical_plan(name: str) -> FusionPlan:
    loaded = load_model(MODELS / f"{name}.py")
    return typical_plan_of(loaded.model, loaded.example_inputs)


def typical_plan_of(model: torch.nn.Module, inputs: tuple) -> FusionPlan:
    """Every legal site of ``model`` decided ``fuse`` with its typical variant."""
    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", typical_variant(s), None, "typical")
                 for s in sites if s.legal}
    return FusionPlan.from_decisions(captured, sites, decisions)


def runnable_plan_of(model: torch.nn.Module, inputs: tuple, dtype: torch.dtype = torch.float32) -> FusionPlan:
    """Every legal site of ``model`` decided ``fuse`` with the first manual variant that runs here on the CPU in
    ``dtype`` (no timing): a plan whose rewrites all apply."""
    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {}
    for s in sites:
        runs = [mv.name for mv in REGISTRY.get(s.pattern).manual
                if mv.unsupported(s.shape, dtype, "cpu") is None] if s.legal and s.pattern in REGISTRY else []
        if runs:
            decisions[s.id] = Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", runs[0], None, "test")
    return FusionPlan.from_decisions(captured, sites, decisions)


# model -> (groups as (site id, pattern, variant), refusals as (site id, why))
EXPECTED = {
    "mlp_block": ([("g0.s0", "linear_bias_gelu", "compile"), ("g0.s2", "add_layernorm", "triton_add_layernorm")],
                  [("g0.s1", "already_fused")]),
    "mobilenet_block": ([("g0.s0", "conv2d_bn_relu", "bn_folded"), ("g0.s1", "conv2d_bn_relu", "bn_folded")], []),
    "resnet_basic": ([("g0.s0", "conv2d_bn_relu", "bn_folded"), ("g0.s1", "conv2d_bn", "bn_folded"),
                      ("g0.s2", "conv2d_bn", "bn_folded")], []),
    "resnet_bottleneck": ([("g0.s0", "conv2d_bn_relu", "bn_folded"), ("g0.s1", "conv2d_bn_relu", "bn_folded"),
                           ("g0.s2", "conv2d_bn", "bn_folded")], []),
    "shared_conv": ([("g0.s2", "conv2d_bn_relu", "bn_folded")], [("g0.s0", "illegal"), ("g0.s1", "illegal")]),
    "transformer_block": ([("g0.s1", "causal_attention", "sdpa"),
                           ("g0.s3", "add_layernorm_sum", "triton_add_layernorm_sum"),
                           ("g0.s4", "linear_bias_gelu_tanh", "compile")],
                          [("g0.s0", "already_fused"), ("g0.s2", "already_fused"), ("g0.s5", "already_fused")]),
    "dynamic_control": ([("g0.s0", "linear_bias_relu", "compile"), ("g1.s0", "linear_bias_gelu", "compile")], []),
    "gpt2_mlp": ([("g0.s0", "linear_bias_gelu_tanh", "compile")], [("g0.s1", "already_fused")]),
}


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class OpCountClock:
    """A deterministic clock: a call costs ``base + per_op * (aten ops it runs)`` microseconds."""

    device = "cpu"

    def __init__(self, per_op_us: float = 1.0, base_us: float = 0.0):
        self.per_op, self.base, self.t = per_op_us, base_us, 0.0

    def sample(self, fn, inner):
        with _Count() as c:
            fn()
        return (self.base + self.per_op * c.ops) * 1e-6

    def now(self):
        self.t += 1e-3
        return self.t


class RegimeClock:
    """A deterministic fake clock in both timing regimes.

    ``costs`` maps a callable's name to (isolated, pipelined) seconds per call; ``names`` maps each callable to its
    name (:func:`fake_entry` fills it).  A sample costs that times log-normal noise from a seeded RNG, times
    ``load(t, name)`` -- contention as a factor >= 1 at virtual time ``t`` (one tick per sample) -- so a test can
    slow some callables more than others, in bursts or throughout."""

    device = "cpu"

    def __init__(self, costs: dict, noise: float = 0.02, seed: int = 0, load=None):
        self.costs, self.noise, self.rng = costs, noise, random.Random(seed)
        self.load = load or (lambda t, name: 1.0)
        self.names: dict = {}
        self.t = 0

    def _cost(self, fn, regime: int) -> float:
        name = self.names[fn]
        self.t += 1
        return self.costs[name][regime] * self.rng.lognormvariate(0.0, self.noise) * self.load(self.t, name)

    def sample(self, fn, inner):
        return self._cost(fn, 0 if inner <= 1 else 1)

    def sample_regimes(self, fn, inner):
        return self._cost(fn, 0), self._cost(fn, 1)

    def now(self):
        return self.t * 1e-6


def fake_entry(monkeypatch, costs: dict, clock: RegimeClock, rounds: int = 20, guard=None, budget_s: float = 1e9):
    """measure_entry of a linear_bias problem whose variants are named by ``costs`` (eager plus fused ones of kind
    compile, each computing the right output) and timed by ``clock``; with ``guard``, its reference kernel is
    timed by the clock as ``costs["reference"]``."""
    import fxfusion.calibration.calibrate as cal
    from fxfusion.calibration.variants import Built
    from fxfusion.measure.hardware import resolve

    def fake_build(pattern, shape, dtype, device, inputs, compile_modes=()):
        built = []
        for name in costs:
            if name == "reference":
                continue
            thunk = lambda: pattern.eager(**inputs)  # noqa: E731
            clock.names[thunk] = name
            built.append(Built(name, "eager" if name == "eager" else "compile", thunk))
        return built

    if guard is not None and guard.reference is not None:
        clock.names[guard.reference] = "reference"
    monkeypatch.setattr(cal, "build_variants", fake_build)
    return cal.measure_entry(REGISTRY["linear_bias"], {"M": 8, "K": 16, "N": 8}, "float32", "cpu",
                             resolve("generic-cpu"), TimingSpec(rounds=rounds, warmup=0, target_sample_s=0.0,
                                                                budget_s=budget_s), clock, guard=guard)


# -- sample reports ------------------------------------------------------------------------------------------------




def pin_speedup(entry: Entry, name: str, times: float) -> None:
    """Give variant ``name`` constant samples, ``times`` faster than eager's fastest sample (``times`` > 1) or slower
    than its slowest (``times`` < 1), and decide the entry again.  Every bootstrap median of eager lies between its
    fastest and slowest sample, so the whole interval lands on one side: fuse for times >= 1.1, avoid for <= 0.9,
    however noisy the real samples were."""
    eager, v = entry.variant("eager"), entry.variant(name)
    base = min(eager.samples_ms) if times >= 1 else max(eager.samples_ms)
    v.samples_ms = [base / times] * len(v.samples_ms)
    v.median_ms, v.iqr_ms = base / times, 0.0
    s = speedup(eager.samples_ms, v.samples_ms)
    v.speedup, v.verdict = Speedup(s.median, s.ci_low, s.ci_high), s.verdict()
    entry.decision = _decide(entry.pattern, entry.shape, entry.dtype, entry.device, entry.variants)
    if entry.pipelined_decision is not None:  # both regimes pinned alike
        pe = eager.pipelined.samples_ms
        pbase = min(pe) if times >= 1 else max(pe)
        p = speedup(pe, [pbase / times] * len(pe))
        v.pipelined = Timing([pbase / times] * len(pe), v.pipelined.calls_per_sample, pbase / times, 0.0, False,
                             Speedup(p.median, p.ci_low, p.ci_high), p.verdict())
        entry.pipelined_decision = _decide(entry.pattern, entry.shape, entry.dtype, entry.device, entry.variants,
                                           "pipelined")


def edited(profile: Profile, edits: dict[tuple[str, int], tuple[str, float]]) -> Profile:
    """A validated copy of ``profile`` with {(pattern, index by FLOPs among its entries): (variant, times)}."""
    out = Profile.from_dict(copy.deepcopy(profile.to_dict()))
    for (pattern, index), (variant, times) in edits.items():
        entries = sorted((e for e in out.entries if e.pattern == pattern), key=lambda e: e.flops)
        pin_speedup(entries[index], variant, times)
    return Profile.from_dict(out.to_dict())


def make_analysis(profile: Profile) -> dict:
    """A small analysis report (schemas/analysis.schema.json) whose decisions come from a real profile."""
    entry = next(e for e in profile.entries if e.pattern == "linear_bias_relu")
    d = entry.decision
    best, eager = entry.variant(d.best_variant), entry.variant("eager")
    fuse = d.verdict == "fuse"
    base = {"title": entry.title, "graph_index": 0, "roles": {"weight": "w", "bias": "b", "input": "x"},
            "written_as": "F.linear", "source": "model.py:3", "warnings": []}
    sites = [
        {**base, "id": "g0.s0", "pattern": entry.pattern, "nodes": ["linear", "relu"], "shape": dict(entry.shape),
         "dtype": entry.dtype, "status": "fusible", "reasons": [], "verdict": d.verdict,
         "best_variant": d.best_variant, "baseline_variant": "eager",
         "speedup": None if d.speedup is None else vars(d.speedup), "decision": decision_to_dict(d),
         "baseline_ms": eager.median_ms, "best_ms": best.median_ms if best else None,
         "saved_ms": max(0.0, eager.median_ms - best.median_ms) if fuse else None,
         "bytes_unfused": entry.bytes_unfused, "bytes_fused": entry.bytes_fused,
         "bytes_saved": entry.bytes_unfused - entry.bytes_fused},
        {**base, "id": "g0.s1", "pattern": "linear_bias_gelu", "nodes": ["linear_1", "gelu"],
         "shape": dict(entry.shape), "dtype": entry.dtype, "status": "illegal",
         "reasons": ["the intermediate <linear_1> is also used by add_1"], "verdict": "illegal",
         "best_variant": None, "baseline_variant": None, "speedup": None, "decision": None, "baseline_ms": None,
         "best_ms": None, "saved_ms": None, "bytes_unfused": None, "bytes_fused": None, "bytes_saved": None},
    ]
    counts = {v: sum(s["verdict"] == v for s in sites) for v in ("fuse", "neutral", "avoid", "undecided")}
    return {
        "schema_version": SCHEMA_VERSION, "kind": "fxfusion.analysis",
        "metadata": {"model": "tests/model.py", "entry": "get_model()+get_inputs()", "device": "cpu",
                     "dtype": entry.dtype, "mode": "profile", "profile": "tiny.json",
                     "hardware": profile.metadata["hardware"], "device_name": profile.metadata["device_name"],
                     "torch_version": profile.metadata["torch_version"], "fxfusion_version": "0.1.0", "threads": 2,
                     "date": profile.metadata["date"], "command": "pytest make_analysis"},
        "capture": {"method": "export", "graphs": 1, "nodes": 6, "graph_breaks": [], "notes": [], "seconds": 0.1},
        "sites": sites,
        "unmatched": {"aten.add.Tensor": 1, "aten.mul.Tensor": 1},
        "summary": {"sites": 2, "fusible": 1, "illegal": 1, "already_fused": 0, **counts,
                    "saved_ms_per_forward": sites[0]["saved_ms"] or 0.0,
                    "bytes_saved_per_forward": sites[0]["bytes_saved"] if fuse else 0,
                    "matched_nodes": 4, "unmatched_nodes": 2},
        "warnings": ["a <warning> with markup"],
    }


class HtmlDoc(HTMLParser):
    """Parses a report and keeps what tests look at: figures with their images, tagged rows, and the tag balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.figures: list[dict] = []  # {"key", "src", "alt", "caption"}
        self.rows: list[dict] = []  # <tr> with data-* attributes: their attributes and cell texts
        self.tags: list[str] = []  # every start tag, in order
        self.stack: list[str] = []
        self.unbalanced: list[str] = []
        self._row = self._cell = self._caption = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "figure":
            self.figures.append({"key": a.get("data-plot"), "src": None, "alt": None, "caption": ""})
        elif tag == "img" and self.figures:
            self.figures[-1].update(src=a.get("src"), alt=a.get("alt"))
        elif tag == "figcaption":
            self._caption = True
        elif tag == "tr" and any(k.startswith("data-") for k in a):
            self._row = {"attrs": a, "cells": []}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._row["cells"].append("")
            self._cell = True

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.unbalanced.append(tag)
        else:
            self.stack.pop()
        if tag == "figcaption":
            self._caption = None
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._caption and self.figures:
            self.figures[-1]["caption"] += data
        if self._cell and self._row is not None:
            self._row["cells"][-1] += data


def with_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so that a wrong fold shows in the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def region(saving_ms: float, ci_high_ms: float | None = None, **figures) -> RegionTiming:
    """A region's timing with the figures a test names: the saving, its interval's upper end (default: the saving),
    any other field of RegionTiming; the rest neutral."""
    ci_high_ms = saving_ms if ci_high_ms is None else ci_high_ms
    return RegionTiming(**{"captured_ms": 1.0, "rewritten_ms": 1.0 - saving_ms, "saving_ms": saving_ms,
                           "ci_low_ms": min(saving_ms, ci_high_ms), "ci_high_ms": ci_high_ms, "nodes": [],
                           **figures})


def class_timing(groups, saving_ms: float, ci_low_ms: float | None = None, fraction: float = 0.0,
                 control_ms: float = 1.0, floor_fraction: float = 0.0, capture: Capture | None = None) -> ClassTiming:
    """A class of rewrites timed in the whole model: its total saving over ``groups`` (ids), the interval's lower end
    (default: the saving), its fraction of the control; the rest neutral."""
    ids = tuple(g if isinstance(g, str) else g.id for g in groups)
    return ClassTiming(ids, saving_ms, fraction, saving_ms if ci_low_ms is None else ci_low_ms, saving_ms,
                       floor_fraction, control_ms, control_ms - saving_ms, None, "cpu", 1, 1, capture)


def compiled_prediction(ms: float, sources=(Source.REGION,), fraction=None, base_ms=None, floor_fraction=None,
                        context: Context = Context.COMPILED) -> Prediction:
    """A compiled candidate's prediction as predict() makes it: from regions (default) or classes (Source.CLASS)."""
    return Prediction(context, ms, frozenset(sources), fraction, base_ms, floor_fraction)


def quick_apply(monkeypatch, **changes):
    """``analyze --apply`` (the CLI's call of fxfusion.planning.pipeline.apply_and_verify) with the planner's knobs a
    test does not test made quick -- the verification and the eager-context run timed briefly (TINY_SPEC), nothing
    compiled -- and ``changes`` to the Planner on top; returns the quick function (a spy can wrap it)."""
    import fxfusion.cli.analyze as cli
    from fxfusion.planning import pipeline
    from fxfusion.planning.candidates import CandidateSet

    real = pipeline.apply_and_verify

    def quick(analysis, model, inputs, planner):
        specs = dataclasses.replace(planner.specs, verify=TINY_SPEC, context=TINY_SPEC)
        return real(analysis, model, inputs, dataclasses.replace(planner, specs=specs,
                                                                 candidates=CandidateSet.uncompiled(), **changes))

    monkeypatch.setattr(cli, "apply_and_verify", quick)
    return quick
