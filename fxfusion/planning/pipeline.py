"""The pipelines the CLI and the library run: ``plan(model, profile, inputs)`` (capture, match, decide, plan, predict
in the model) and :func:`apply_and_verify` (the ``analyze --apply`` path: an analysis made into a plan, predicted
inside the model, charged its overhead, applied and verified end to end).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import fx

from fxfusion.calibration.calibrate import measure_entry
from fxfusion.errors import FxFusionError
from fxfusion.fusions.match import find_sites
from fxfusion.fusions.registry import REGISTRY
from fxfusion.graph.capture import capture, signature_names
from fxfusion.graph.sites import CapturedModel, Site
from fxfusion.measure.devices import as_device, is_cuda
from fxfusion.measure.devices import kind as device_kind
from fxfusion.measure.hardware import detect, resolve
from fxfusion.measure.noise import NoiseGuard
from fxfusion.measure.timing import PIPELINED, QUICK_SPEC, REGIMES, check_regime, clock_for
from fxfusion.planning.analyze import Analysis
from fxfusion.planning.candidates import OPTIONAL, PLANNED_CHANNELS_LAST_COMPILE, PLANNED_COMPILE, has_conv2d
from fxfusion.planning.incontext import measure_in_compiled_context, measure_in_eager_context
from fxfusion.planning.insitu import CHANNELS_LAST, INSITU_BUDGET_S, MODEL, measure_overhead
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.verify import VerificationResult, verify_plan
from fxfusion.profiles.machine import check_profile
from fxfusion.profiles.profile import Profile


def _as_captured(model_or_graph: Any, example_inputs: tuple) -> CapturedModel:
    if isinstance(model_or_graph, CapturedModel):
        return model_or_graph
    if isinstance(model_or_graph, torch.export.ExportedProgram):  # as fxfusion.graph.capture records an export

        ep = model_or_graph
        return CapturedModel("export", [ep.graph_module], tuple(example_inputs), parameters=[signature_names(ep)],
                             programs=[ep], graph_inputs=[tuple(example_inputs)])
    if not isinstance(model_or_graph, torch.nn.Module):
        raise FxFusionError(f"plan() takes an nn.Module, a GraphModule or an ExportedProgram, "
                            f"got {type(model_or_graph).__name__}")
    if isinstance(model_or_graph, fx.GraphModule) and _is_aten(model_or_graph):
        return CapturedModel("export", [model_or_graph], tuple(example_inputs))

    return capture(model_or_graph, example_inputs)


def _is_aten(gm: fx.GraphModule) -> bool:
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    return bool(calls) and all(isinstance(n.target, torch._ops.OpOverload) or n.target.__module__ == "_operator"
                               for n in calls)


def _device_of(example_inputs: tuple) -> torch.device:
    for t in torch.utils._pytree.tree_leaves(example_inputs):
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def measure_sites(sites: list[Site], device: str = "cpu", spec=None, hardware: str | None = None,
                  compile_modes: tuple[str, ...] = ("compile",), clock=None) -> Profile:
    """A profile measured live at exactly the shapes and dtypes of the legal sites (one entry per distinct one)."""
    hw = resolve(hardware, device=device) if hardware else detect(device)
    guard = NoiseGuard.for_device(device) if clock is None else NoiseGuard()  # a caller's clock: no reference kernel
    clock = clock or clock_for(device)
    entries, seen = [], set()
    for site in sites:
        key = (site.pattern, tuple(sorted(site.shape.items())), site.dtype)
        if not site.legal or site.pattern not in REGISTRY or key in seen:
            continue
        seen.add(key)
        entries.append(measure_entry(REGISTRY[site.pattern], dict(site.shape), site.dtype, device, hw,
                                     spec or QUICK_SPEC, clock, compile_modes=compile_modes, guard=guard))
    return Profile(metadata={"device": str(device), "hardware": hw.name, "mode": "measure",
                             "timing": {"regimes": list(REGIMES)}},
                   hardware={"name": hw.name, "device": hw.device}, ceilings={}, entries=entries)


def plan(model_or_graph: Any, profile: Profile | str | None, example_inputs: tuple, device: str | None = None,
         spec=None, compile_modes: tuple[str, ...] = ("compile",), check_overhead: bool = True,
         clock=None, in_model: bool = True, regime: str = PIPELINED, allow_foreign: bool = False) -> FusionPlan:
    """Capture, find the sites, decide each from ``profile`` (or measure them live when it is None), and plan.

    The model runs on ``device`` (default: where its example inputs are), never on the profile's device: a profile
    measured on another device is an FxFusionError naming both unless ``allow_foreign`` (then the plan warns).  Each
    site is decided in ``regime``: pipelined (the default: as a forward pass runs its ops) or isolated.

    ``spec`` sets the timing knobs of the live measurements (sites and in-model regions), ``clock`` times the live
    site measurements (default: the library's, isolated calls on CUDA).  With an nn.Module
    to compare with: ``in_model`` times each group's region inside the captured graph and predicts from that
    (:meth:`FusionPlan.measure_in_model`), and ``check_overhead`` measures the captured graph's call overhead over the
    model and keeps the groups only when their predicted saving covers it.
    """
    if not isinstance(example_inputs, tuple):
        raise FxFusionError(f"example_inputs must be a tuple of the model's positional arguments, "
                            f"got {type(example_inputs).__name__}")
    check_regime(regime)
    source = "the profile"
    if isinstance(profile, str) or hasattr(profile, "__fspath__"):
        source, profile = str(profile), Profile.load(profile)
    device = as_device(device or _device_of(example_inputs))
    warnings, lookup_device = [], device
    if profile is not None:  # before capturing: a foreign profile fails fast
        warnings = check_profile(profile, device, allow_foreign, source)
        there = profile.metadata.get("device", "cpu")
        if device_kind(there) != device_kind(device):  # allowed foreign: its entries are looked up where measured
            lookup_device = as_device(device_kind(there))
    captured = _as_captured(model_or_graph, example_inputs)
    sites = find_sites(captured)
    if profile is None:
        profile = measure_sites(sites, device, spec, compile_modes=compile_modes, clock=clock)
    decisions, undecided = {}, {}
    for site in sites:
        if not site.legal:
            continue
        try:
            decisions[site.id] = profile.decide(site.pattern, site.shape, site.dtype, lookup_device, regime)
        except FxFusionError as exc:
            undecided[site.id] = str(exc)
    result = FusionPlan.from_decisions(captured, sites, decisions, profile=profile, device=device,
                                       undecided=undecided)
    result.regime = regime
    result.warnings = warnings + result.warnings
    module = isinstance(model_or_graph, torch.nn.Module)
    overhead = (measure_overhead(model_or_graph, captured, example_inputs, device)
                if check_overhead and module and (result.groups or result.pending) else None)
    if in_model and module and (result.groups or result.pending):
        result.measure_in_model(model_or_graph, example_inputs, device, spec=spec,
                                reference_ms=overhead.eager_ms if overhead is not None else None)
    if overhead is not None and result.groups:
        result.require_saving_over(overhead)
    return result


def apply_and_verify(analysis: Analysis, model: torch.nn.Module, example_inputs: tuple, device: str,
                     profile: Profile | None = None, include_compile: bool = True,
                     compile_modes: tuple[str, ...] = ("default",), compiled_regime: bool | None = None,
                     insitu_budget_s: float = INSITU_BUDGET_S, extra: tuple[str, ...] = OPTIONAL,
                     compiled_context: bool | None = None,
                     eager_context: bool = True) -> tuple[FusionPlan, VerificationResult]:
    """``analyze --apply``: the analysis's ``fuse`` sites planned (from its live timings, or from ``profile``), each
    group's saving predicted inside the model, the captured graph's overhead charged, the plan applied and verified
    against float64 and timed end to end beside the candidates (whole-model compile in ``compile_modes``, the plan
    compiled, and the ``extra`` ones of :data:`fxfusion.planning.candidates.OPTIONAL`), the best one chosen.  The
    verification (with the plan) is put on ``analysis.verification``.

    ``compiled_regime`` (default: on CUDA when compiling) measures the groups as they run in the planned + compile
    candidates, which then leave out what Inductor does better without (:func:`compiled_regime_timings`; several
    compiles of the model: too slow for a CPU by default): each class of groups with the whole model compiled around
    it (``compiled_context``, default on with the compiled regime; one whole-model compile a class, within
    ``insitu_budget_s``), and each group's region compiled on its own where its class was not (2 compiles a group,
    within the same budget again).  ``eager_context`` measures each class of groups applied alone to the model run
    eagerly (:func:`fxfusion.planning.incontext.measure_in_eager_context`, one timing run, no compiles), from which
    the planned candidate is predicted; without it, from the regions."""
    if profile is None:  # live timings: the plan keeps each site's measured baseline and saving
        fusion_plan = FusionPlan.from_analysis(analysis, device=device)
    else:
        fusion_plan = FusionPlan.from_decisions(analysis.captured, analysis.sites, analysis.decisions(),
                                                profile=profile, device=device, undecided=analysis.undecided())
    # Running the captured graph costs something of its own: a plan must save more than that.
    overhead = measure_overhead(model, analysis.captured, example_inputs, device)
    # Predict from each group's region timed inside the model, not from the standalone pattern timings.
    fusion_plan.measure_in_model(model, example_inputs, device, reference_ms=overhead.eager_ms,
                                 budget_s=insitu_budget_s)
    note_in_model(analysis, fusion_plan)
    fusion_plan.require_saving_over(overhead)
    if eager_context and fusion_plan.groups:
        fusion_plan.warnings += measure_in_eager_context(fusion_plan, model, example_inputs, device,
                                                         budget_s=insitu_budget_s)
    regime_compiled = is_cuda(device) if compiled_regime is None else compiled_regime
    if include_compile and regime_compiled and fusion_plan.groups:
        compiled_regime_timings(fusion_plan, model, example_inputs, device, extra, insitu_budget_s,
                                regime_compiled if compiled_context is None else compiled_context)
    verification = verify_plan(model, example_inputs, fusion_plan, device=device, include_compile=include_compile,
                               compile_modes=compile_modes, extra=extra)
    fusion_plan.choice = verification.candidates  # apply(model, plan) now hands back the chosen candidate
    # The plan travels with the verification: which groups were applied, which refused and why.
    analysis.verification = {**verification.to_dict(), "plan": fusion_plan.to_dict()}
    return fusion_plan, verification


def compiled_regime_timings(plan: FusionPlan, model: torch.nn.Module, example_inputs: tuple, device, extra: tuple,
                            budget_s: float, context: bool = True) -> None:
    """The regime of the planned + compile candidates, for :func:`apply_and_verify`.  With ``context``, each class of
    rewrites is measured with the whole model compiled first (:mod:`fxfusion.planning.incontext`): in the model's
    layout for planned + compile, in channels-last for planned + channels-last + compile on a conv model (each
    layout decides what its candidate leaves out).  Then each group's region is timed compiled on its own
    (:meth:`FusionPlan.measure_in_compiled_model`) only where its class was not measured so -- the budget ran out, or
    without ``context`` every group -- as the fallback prediction and filter."""
    if not {PLANNED_COMPILE, PLANNED_CHANNELS_LAST_COMPILE} & set(extra):
        return
    # each layout only for a candidate that runs in it: planned + channels-last + compile reads its own layout's
    layouts = [False] * (PLANNED_COMPILE in extra) + [True] * (PLANNED_CHANNELS_LAST_COMPILE in extra
                                                               and has_conv2d(model))
    for channels_last in layouts if context else []:
        plan.warnings += measure_in_compiled_context(plan, model, example_inputs, device, budget_s=budget_s,
                                                     channels_last=channels_last)
    for channels_last in layouts:
        layout = CHANNELS_LAST if channels_last else MODEL
        left = [g for g in plan.groups if not (g.in_context or {}).get(layout)]
        if left:  # the same group objects: their timings land on this plan's groups
            dataclasses.replace(plan, groups=left, pending=[]).measure_in_compiled_model(
                model, example_inputs, device, budget_s=budget_s, channels_last=channels_last)


def note_in_model(result: Analysis, plan: FusionPlan) -> None:
    """Say on each site what the model decided where it overrode the library (a written-out activation)."""
    groups = {g.id: g for g in plan.groups}
    refused = {r.site_id: r for r in plan.refused}
    for o in result.outcomes:
        g, r = groups.get(o.site.id), refused.get(o.site.id)
        if g is not None and g.decided_in_model:
            im = g.in_model
            o.warnings.append(f"fused by --apply all the same: inside the model {g.variant} runs the region "
                              f"{im['speedup']:.2f}x [{im['speedup_ci_low']:.2f}, {im['speedup_ci_high']:.2f}] "
                              "(the library measures a written-out activation as one op)")
        elif r is not None and any(x.startswith("inside the model") for x in r.reasons):
            o.warnings.append(next(x for x in r.reasons if x.startswith("inside the model")))
