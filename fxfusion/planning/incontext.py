"""Savings measured with the whole model around them: the regime of the planned + compile candidates (and of planned).

A group's region timed compiled on its own (:func:`fxfusion.planning.insitu.measure_in_model` with ``compiled``)
says whether Inductor does better with the rewrite or without it, but as a prediction of what the rewrites save in
the compiled model it leaves out everything Inductor does across the region's edges: the ops it fuses into the
region's inputs and outputs, the launches and the wrapper code of a separate compiled graph.  On the H200 (bench_zoo,
realistic presets in bf16, 2026-12-01 05:27 UTC, docs/results/h200-2026-12-01c) the sum of those region savings
predicted planned + compile's measured saving 23% high on GPT-2 and 72% high on Llama decode.

So (:func:`measure_in_context`) each *class* of groups -- the groups planned + compile applies with the same
pattern and variant: all of a model's q/k/v merges, all its BN folds -- is applied alone to the model, the whole model
is compiled by Inductor as the candidates are (:func:`fxfusion.planning.candidates.compile_model`), and all of these,
with the captured graph compiled without rewrites (the control, as ``captured+compile``), are timed in one interleaved
run (pipelined on CUDA), again while a class's interval is wide (as the regions are: insitu's ``WIDE``, ``BATCHES``).
A class's saving is the control's median times the saving as a fraction of the control paired per round (robust to a
host whose speed drifts), with a bootstrap interval (a :class:`~fxfusion.planning.prediction.ClassTiming`); each of
its groups carries it (``FusionGroup.classes``) and an equal share of it, and
:func:`fxfusion.planning.prediction.predict` sums the shares. In channels-last the models run in that
layout, as in the planned + channels-last + compile candidate; that candidate is compared with the user's module
compiled in that layout (``channels_last+compile``), not with a captured graph, so the user's module is timed in the
same run and what the captured graph saves over it (``Capture``, on every class) is part of that prediction.
Classes are compiled largest saving first while the budget lasts; the groups of a class left out are timed as regions
compiled alone (:func:`fxfusion.planning.pipeline.measure_compiled`), and the prediction says it is mixed.

Cost: one whole-model compile per class, plus the control's (and the module's in channels-last layout).  What stays
unmodelled: interaction between classes (one class's rewrites changing what Inductor fuses around another's).

The *planned* candidate (rewrites, the rest eager) is predicted the same way, without compiling
(``Context.EAGER``): each class applied alone to the model run eagerly, against
the captured graph and the user's module, whose difference is what capturing saves (or costs).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from fxfusion.measure.devices import as_device
from fxfusion.measure.stats import MIN_EFFECT, paired_fraction, summarize
from fxfusion.measure.timing import Clock, TimingSpec, measure_tight
from fxfusion.planning.apply import apply
from fxfusion.calibration.variants import first_call, one_line
from fxfusion.planning.candidates import PLANNED, Built, ChannelsLast, compile_model
from fxfusion.planning import insitu
from fxfusion.planning.insitu import BATCHES, INSITU_BUDGET_S, WIDE, clock_name
from fxfusion.planning.prediction import Capture, ClassTiming, Context
from fxfusion.planning.rewrite import captured_module

# All classes' models and the control, interleaved: enough rounds for a 2% difference of a forward pass.
CONTEXT_SPEC = TimingSpec(rounds=20, warmup=2, target_sample_s=0.02, budget_s=20.0)
# What a context keeps of its budget for its timing run: a class is built only where it, the longest build so far and
# this fit; the timing run's batches share what is left (at least this).  Without it tv_resnet50 32x224 on an H100
# (2026-12-07 22:02 UTC) took 20.9 s of the eager context's 10.8 s and 31.4 s of the compiled contexts' 12 s.
CONTEXT_FLOOR_S = 2.0


def classes(groups: list) -> list[list]:
    """The groups in classes of one pattern and variant, the class with the largest region saving first (the compiled
    region's when it was timed, else the plan's prediction)."""
    by: dict[tuple[str, str], list] = {}
    for g in groups:
        by.setdefault((g.pattern, g.variant), []).append(g)

    def saving(g) -> float:
        region = g.regions.get(Context.COMPILED)
        return (region.saving_ms if region else None) or g.predicted_saving_ms or 0.0

    return sorted(by.values(), key=lambda members: -sum(saving(g) for g in members))


def measure_in_context(plan, model: torch.nn.Module, example_inputs: tuple, context: Context, device=None,
                       spec: TimingSpec | None = None, clock: Clock | None = None,
                       budget_s: float = INSITU_BUDGET_S, compile_fn: Callable | None = None,
                       builds: list[float] | None = None) -> list[str]:
    """Measure each class of the groups the candidate of ``context`` applies with the rest of the model run as that
    candidate runs it (module doc): eager (``plan.groups``), or compiled (``plan.groups_for(context)`` before this
    measurement: those its regions in this context, where timed, do not rule out).  The result goes on each group's
    ``classes[context]``.  Returns warnings (one line each): the classes that did not compile or run, or were left out
    by the budget.

    Eager, for the *planned* candidate: against the captured graph (the control) and the user's module, whose
    difference is what capturing saves (``Capture``, negative where it costs).  Why not from the regions alone: a
    region timed back to back, however it sits in the model, is host- or device-bound on its own, while in the model
    the host runs ahead of the device during the large GEMMs; on the H200 (2026-12-01 11:25 UTC,
    docs/results/h200-2026-12-01e) the regions predicted GPT-2's planned saving +17% high and Llama decode's +47%, the
    classes -3% and -20%.  No compiles: it costs one timing run.  ``compile_fn`` compiles a model in a compiled
    context (default: :func:`fxfusion.planning.candidates.compile_model`, as the candidates are).

    ``budget_s`` bounds the whole call: nothing is built that would end past it (the longest build so far -- of this
    call, and of ``builds``, the compile seconds of this --apply so far, which a compiled context appends to -- plus
    :data:`CONTEXT_FLOOR_S`), and the timing run's batches share what is left."""
    device = as_device(device or plan.device)
    spec, clock = spec or CONTEXT_SPEC, clock or insitu.model_clock(device)  # the one default of in-model timing
    compiled = context.compiled
    compile_fn = compile_fn or compile_model
    wrap = ChannelsLast if context is Context.COMPILED_CHANNELS_LAST else (lambda m: m)
    where = "with the whole model compiled" if compiled else "with the rest of the model eager"
    inputs, said = tuple(example_inputs), []
    if budget_s <= 0:  # not even the control's compile: a conv net's took --apply past its budget (tv_resnet50)
        return [f"no class of rewrites measured {where}: the measuring share of the budget was spent before this "
                f"stage; {'planned + compile' if compiled else 'the planned'} prediction takes its regions' timings"]
    builds = builds if builds is not None else []
    if compiled and builds and 2 * max(builds) + CONTEXT_FLOOR_S > budget_s:  # the control and one class: no room
        return [f"no class of rewrites measured {where}: a compile of the model took {max(builds):.0f} s, and this "
                f"stage's {budget_s:.0f} s hold no control and class; planned + compile prediction takes its regions' "
                "timings"]
    start = time.perf_counter()
    control = _built("control", wrap(captured_module(model, plan.captured)), inputs, device, compiled, compile_fn)
    longest = _note(control, compiled, builds)
    if control.status != "ok":
        return [f"the captured graph does not {'compile' if compiled else 'run'} ({control.reason}): no saving "
                f"measured {where}"]
    thunks, built = {"control": control.run}, {}
    if context is not Context.COMPILED:  # that candidate's base is the user's module (channels_last+compile, eager)
        module = _built("module", wrap(model), inputs, device, compiled, compile_fn)
        longest = max(longest, _note(module, compiled, builds))
        if module.status == "ok":
            thunks["module"] = module.run
        else:  # the prediction then leaves out what capturing saves over the module: say so
            said.append(f"the model {'in channels-last does not compile' if compiled else 'does not run'} "
                        f"({module.reason}): the {'channels-last' if compiled else 'planned'} prediction leaves out "
                        "what the captured graph saves over it")
    groups = plan.groups_for(context)
    for i, members in enumerate(classes(groups)):
        name = f"{members[0].pattern}:{members[0].variant}"
        elapsed = time.perf_counter() - start
        if elapsed + longest + CONTEXT_FLOOR_S > budget_s:
            said.append(f"{name} ({len(members)} group(s)): not measured {where}, the budget ({budget_s:.0f} s) "
                        + ("was spent" if elapsed > budget_s else f"would be spent before it was built and timed "
                           f"({budget_s - elapsed:.0f} s left, the longest build so far {longest:.0f} s)")
                        + f"; {'planned + compile' if compiled else 'the planned'} prediction takes its regions' "
                        "timings")
            continue
        b = _built(name, wrap(apply(model, dataclasses.replace(plan, groups=members), candidate=PLANNED)), inputs,
                   device, compiled, compile_fn)
        longest = max(longest, _note(b, compiled, builds))
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

    left = budget_s - (time.perf_counter() - start)  # the batches share what the builds left
    spec = dataclasses.replace(spec, budget_s=max(CONTEXT_FLOOR_S / BATCHES, min(spec.budget_s, left / BATCHES)))
    with torch.no_grad():  # measured again while some class's interval is wider than WIDE x its saving and MIN_EFFECT
        samples, _, batches = measure_tight(thunks, clock, spec, widest, lambda f: f.ci_high - f.ci_low > max(
            WIDE * abs(f.median), MIN_EFFECT), BATCHES)
    summary = {k: summarize(v) for k, v in samples.seconds.items()}  # medians; floors: each side's fastest rounds
    control_ms, control_floor = summary["control"].median * 1e3, summary["control"].floor
    capture = None
    if "module" in thunks:  # what the captured graph saves over the module, both run in this context
        c = paired_fraction(samples.seconds["module"], samples.seconds["control"], samples.seconds["control"])
        capture = Capture(c.median * control_ms, c.ci_low * control_ms, c.ci_high * control_ms, c.median,
                          (summary["module"].floor - control_floor) / control_floor)
    for key, f in fractions(samples).items():
        members, setup_s = built[key]
        timing = ClassTiming(tuple(g.id for g in members), f.median * control_ms, f.median, f.ci_low * control_ms,
                             f.ci_high * control_ms, (control_floor - summary[key].floor) / control_floor, control_ms,
                             summary[key].median * 1e3, setup_s, clock_name(clock), len(samples.seconds["control"]),
                             batches, capture)
        for g in members:
            g.classes[context] = timing
    return said


def _note(b: Built, compiled: bool, builds: list[float]) -> float:
    """``b``'s build seconds (0 where it failed), appended to ``builds`` where it was a compile."""
    seconds = b.setup_s or 0.0
    if compiled and b.setup_s is not None:
        builds.append(b.setup_s)
    return seconds


def _built(name: str, module: torch.nn.Module, inputs: tuple, device, compiled: bool, compile_fn: Callable) -> Built:
    """``module`` ready to time: compiled as the candidates are, or run eagerly (failures are data, not raised)."""
    if compiled:
        return compile_fn(name, module, inputs, device, None)
    run = lambda: module(*inputs)  # noqa: E731
    try:
        with torch.no_grad():
            seconds = first_call(run, device)
    except Exception as exc:
        return Built(name, None, "failed", one_line(exc))
    return Built(name, run, setup_s=seconds)
