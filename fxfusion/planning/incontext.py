"""Savings measured with the whole model around them: the regime of the planned + compile candidates (and of planned).

A group's region timed compiled on its own (:func:`fxfusion.planning.insitu.measure_in_model` with ``compiled``)
says whether Inductor does better with the rewrite or without it, but as a prediction of what the rewrites save in
the compiled model it leaves out everything Inductor does across the region's edges: the ops it fuses into the
region's inputs and outputs, the launches and the wrapper code of a separate compiled graph.  On the H200 (bench_zoo,
realistic presets in bf16, 2026-12-01 05:27 UTC, docs/results/h200-2026-12-01c) the sum of those region savings
predicted planned + compile's measured saving 23% high on GPT-2 and 72% high on Llama decode.

So (:func:`measure_in_compiled_context`) each *class* of groups -- the groups planned + compile applies with the same
pattern and variant: all of a model's q/k/v merges, all its BN folds -- is applied alone to the model, the whole model
is compiled by Inductor as the candidates are (:func:`fxfusion.planning.candidates.compile_model`), and all of these,
with the captured graph compiled without rewrites (the control, as ``captured+compile``), are timed in one interleaved
run (pipelined on CUDA), again while a class's interval is wide (as the regions are: insitu's ``WIDE``, ``BATCHES``).
A class's saving is the control's median times the saving as a fraction of the control paired per round (robust to a
host whose speed drifts), with a bootstrap interval; each of its groups carries an equal share
(``FusionGroup.in_context``), and the planned + compile prediction sums them
(:func:`compiled_prediction`). With ``channels_last`` the models run in channels-last
layout, as in the planned + channels-last + compile candidate; that candidate is compared with the user's module
compiled in that layout (``channels_last+compile``), not with a captured graph, so the user's module is timed in the
same run and what the captured graph saves over it (``capture_ms``, on every class) is part of that prediction.
Classes are compiled largest saving first while the budget lasts; the groups of a class left out are timed as regions
compiled alone (:func:`fxfusion.planning.pipeline.compiled_regime_timings`), and the prediction says it is mixed.

Cost: one whole-model compile per class, plus the control's (and the module's in channels-last layout).  What stays
unmodelled: interaction between classes (one class's rewrites changing what Inductor fuses around another's).

The *planned* candidate (rewrites, the rest eager) is predicted the same way, without compiling
(:func:`measure_in_eager_context`, ``in_context["eager"]``): each class applied alone to the model run eagerly, against
the captured graph and the user's module, whose difference is what capturing saves (or costs).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from fxfusion.measure.devices import as_device
from fxfusion.measure.stats import MIN_EFFECT, paired_fraction, summarize
from fxfusion.measure.timing import Clock, TimingSpec, measure_tight
from fxfusion.planning.apply import apply
from fxfusion.calibration.variants import first_call, one_line
from fxfusion.planning.candidates import PLANNED, Built, ChannelsLast, CompiledPrediction, compile_model
from fxfusion.planning.insitu import (BATCHES, CHANNELS_LAST, COMPILED_REGION, EAGER, INSITU_BUDGET_S, MODEL, WIDE,
                                     model_clock)
from fxfusion.planning.rewrite import captured_module

# All classes' models and the control, interleaved: enough rounds for a 2% difference of a forward pass.
CONTEXT_SPEC = TimingSpec(rounds=20, warmup=2, target_sample_s=0.02, budget_s=20.0)


def classes(groups: list) -> list[list]:
    """The groups in classes of one pattern and variant, the class with the largest region saving first (the compiled
    region's when it was timed, else the plan's prediction)."""
    by: dict[tuple[str, str], list] = {}
    for g in groups:
        by.setdefault((g.pattern, g.variant), []).append(g)

    def saving(g) -> float:
        return (g.in_compiled_model or {}).get("saving_ms") or g.predicted_saving_ms or 0.0

    return sorted(by.values(), key=lambda members: -sum(saving(g) for g in members))


def measure_in_compiled_context(plan, model: torch.nn.Module, example_inputs: tuple, device=None,
                                spec: TimingSpec | None = None, clock: Clock | None = None,
                                budget_s: float = INSITU_BUDGET_S, channels_last: bool = False) -> list[str]:
    """Measure each class of the groups a planned compile candidate applies (``plan.groups_for_compile(layout)``,
    before this measurement: those its regions in this layout, where timed, do not rule out) with the whole model
    compiled (module doc); the result goes on each group's ``in_context[layout]``.  Returns warnings (one line each):
    the classes that did not compile, or were left out by the budget."""
    return _measure_classes(plan, model, example_inputs, device, spec, clock, budget_s,
                            CHANNELS_LAST if channels_last else MODEL)


def measure_in_eager_context(plan, model: torch.nn.Module, example_inputs: tuple, device=None,
                             spec: TimingSpec | None = None, clock: Clock | None = None,
                             budget_s: float = INSITU_BUDGET_S) -> list[str]:
    """The same for the *planned* candidate (rewrites, the rest eager): each class of ``plan.groups`` applied alone to
    the model, run eagerly, against the captured graph (the control) and the user's module, all in one interleaved
    run; the result goes on each group's ``in_context["eager"]``, with what the captured graph saves over the module
    (``capture_ms``, negative where capturing costs), and :func:`fxfusion.planning.verify.verify_plan` predicts the
    planned candidate from it as a fraction of eager's time.  Why not from the regions alone: a region timed back to
    back, however it sits in the model, is host- or device-bound on its own, while in the model the host runs ahead of
    the device during the large GEMMs; on the H200 (benchmarks/probe_eager_context.py, 2026-12-01 11:25 UTC,
    docs/results/h200-2026-12-01e) the regions predicted GPT-2's planned saving +17% high and Llama decode's +47%, the
    classes -3% and -20%.  No compiles: it costs one timing run."""
    return _measure_classes(plan, model, example_inputs, device, spec, clock, budget_s, EAGER)


def _built(name: str, module: torch.nn.Module, inputs: tuple, device, compiled: bool) -> Built:
    """``module`` ready to time: compiled as the candidates are, or run eagerly (failures are data, not raised)."""
    if compiled:
        return compile_model(name, module, inputs, device, None)
    run = lambda: module(*inputs)  # noqa: E731
    try:
        with torch.no_grad():
            seconds = first_call(run, device)
    except Exception as exc:
        return Built(name, None, "failed", one_line(exc))
    return Built(name, run, setup_s=seconds)


def _measure_classes(plan, model, example_inputs, device, spec, clock, budget_s: float, layout: str) -> list[str]:
    device = as_device(device or plan.device)
    spec, clock = spec or CONTEXT_SPEC, clock or model_clock(device)
    compiled, channels_last = layout != EAGER, layout == CHANNELS_LAST
    wrap = ChannelsLast if channels_last else (lambda m: m)
    where = "with the whole model compiled" if compiled else "with the rest of the model eager"
    inputs, said = tuple(example_inputs), []
    start = time.perf_counter()
    control = _built("control", wrap(captured_module(model, plan.captured)), inputs, device, compiled)
    if control.status != "ok":
        return [f"the captured graph does not {'compile' if compiled else 'run'} ({control.reason}): no saving "
                f"measured {where}"]
    thunks, built = {"control": control.run}, {}
    if layout != MODEL:  # that candidate's base is the user's module in this regime (channels_last+compile, eager)
        module = _built("module", wrap(model), inputs, device, compiled)
        if module.status == "ok":
            thunks["module"] = module.run
        else:  # the prediction then leaves out what capturing saves over the module: say so
            said.append(f"the model {'in channels-last does not compile' if compiled else 'does not run'} "
                        f"({module.reason}): the {'channels-last' if compiled else 'planned'} prediction leaves out "
                        "what the captured graph saves over it")
    groups = plan.groups_for_compile(layout) if compiled else list(plan.groups)
    for i, members in enumerate(classes(groups)):
        name = f"{members[0].pattern}:{members[0].variant}"
        if time.perf_counter() - start > budget_s:
            said.append(f"{name} ({len(members)} group(s)): not measured {where}, the budget ({budget_s:.0f} s) was "
                        f"spent; {'planned + compile' if compiled else 'the planned'} prediction takes its regions' "
                        "timings")
            continue
        b = _built(name, wrap(apply(model, dataclasses.replace(plan, groups=members), candidate=PLANNED)), inputs,
                   device, compiled)
        if b.status != "ok":
            said.append(f"{name}: the model with these rewrites alone does not {'compile' if compiled else 'run'} "
                        f"({b.reason})")
            continue
        thunks[f"class{i}"], built[f"class{i}"] = b.run, (members, b.setup_s)
    if not built:
        return said

    def fractions(samples) -> dict:  # each class's saving as a fraction of the control's time, paired per round
        s = samples.seconds
        return {k: paired_fraction(s["control"], s[k], s["control"]) for k in built}

    def widest(samples):
        return max(fractions(samples).values(), key=lambda f: f.ci_high - f.ci_low)

    with torch.no_grad():  # measured again while some class's interval is wider than WIDE x its saving and MIN_EFFECT
        samples, _, batches = measure_tight(thunks, clock, spec, widest, lambda f: f.ci_high - f.ci_low > max(
            WIDE * abs(f.median), MIN_EFFECT), BATCHES)
    summary = {k: summarize(v) for k, v in samples.seconds.items()}  # medians; floors: each side's fastest rounds
    control_ms, control_floor = summary["control"].median * 1e3, summary["control"].floor
    capture = (paired_fraction(samples.seconds["module"], samples.seconds["control"], samples.seconds["control"])
               if "module" in thunks else None)
    for key, f in fractions(samples).items():
        members, setup_s = built[key]
        share: dict[str, Any] = {
            "saving_ms": f.median * control_ms / len(members), "class_saving_ms": f.median * control_ms,
            "fraction": f.median / len(members), "class_fraction": f.median,
            "class_ci_low_ms": f.ci_low * control_ms, "class_ci_high_ms": f.ci_high * control_ms,
            "class_groups": [g.id for g in members], "control_ms": control_ms,
            "applied_ms": summary[key].median * 1e3, "compile_s" if compiled else "first_call_s": setup_s,
            "clock": getattr(clock, "mode", str(clock.device)), "rounds": len(samples.seconds["control"]),
            "batches": batches, "floor_fraction": (control_floor - summary[key].floor) / control_floor / len(members)}
        if capture is not None:  # what the captured graph saves over the module, both run in this regime
            share.update(capture_ms=capture.median * control_ms, capture_ci_low_ms=capture.ci_low * control_ms,
                         capture_ci_high_ms=capture.ci_high * control_ms, capture_fraction=capture.median,
                         capture_floor_fraction=(summary["module"].floor - control_floor) / control_floor)
        for g in members:
            g.in_context = {**(g.in_context or {}), layout: share}
    return said


def compiled_prediction(groups: list, layout: str = MODEL) -> CompiledPrediction | None:
    """A planned + compile candidate's predicted saving over its compiled control, and what it rests on: per group,
    its share of its class's saving measured with the whole model compiled (``in_context[layout]``,
    :mod:`fxfusion.planning.incontext`), else its region's saving timed compiled (``in_compiled_model``, or
    ``in_compiled_channels_last`` in that layout), plus, in channels-last layout, what the captured graph saves over
    the user's module (``capture_ms``: that candidate's base is the module).  With ``layout`` "eager" the same for the
    planned candidate (``in_context["eager"]``, :func:`fxfusion.planning.incontext.measure_in_eager_context`), whose
    base is the module run eagerly.  The basis is "whole model" when every
    group had the first (then the fraction of the base's time too), "regions" when none did, else "mixed"; None
    unless every group has one or the other."""
    contexts = [(getattr(g, "in_context", None) or {}).get(layout) for g in groups]
    region = COMPILED_REGION.get(layout)  # eager: no region fallback here (the plan's own prediction is that)
    regions = [getattr(g, region, None) if region else None for g in groups]
    if not groups or not all(c or r for c, r in zip(contexts, regions)):
        return None
    first = next((c for c in contexts if c), {})
    ms = sum((c or r)["saving_ms"] for c, r in zip(contexts, regions)) + first.get("capture_ms", 0.0)
    if all(contexts):  # fractions of the control's time; in channels-last the base is the module, capture x slower
        def of_base(key: str, capture_key: str) -> float:
            capture = first.get(capture_key, 0.0)
            return (sum(c[key] for c in contexts) + capture) / (1 + capture)

        floor = of_base("floor_fraction", "capture_floor_fraction") if all("floor_fraction" in c for c in contexts) \
            else None
        base_ms = first["control_ms"] * (1 + first.get("capture_fraction", 0.0)) if first.get("control_ms") else None
        return CompiledPrediction(ms, "whole model", of_base("fraction", "capture_fraction"), base_ms, floor)
    return CompiledPrediction(ms, "mixed" if any(contexts) else "regions")
