"""End-to-end verification of a plan: is the planned model right, and is it faster, by as much as predicted?

Method (:func:`verify_plan`):
  1. apply the plan (:func:`fxfusion.planning.rewrite.apply`); a crash here is a failed verification, not an exception;
  2. run the original and the planned model at the example inputs (no grad); the reference is the original model
     run in float64 on the CPU where the model allows it, else the original model itself;
  3. every output of the planned model must be within the dtype's tolerance of the reference
     (:mod:`fxfusion.measure.correctness`), or within ``ORIGINAL_ERROR_SLACK`` x the original model's own error where the
     model itself is further than that from float64: a rewrite may not be measurably less accurate than the model;
  4. time the original, the captured graph before rewriting, the planned model and torch.compile of the whole model,
     interleaved (:func:`fxfusion.measure.timing.measure`); speedups over the original with bootstrap intervals.  On CUDA
     the forward passes are timed pipelined (back to back, ``CudaClock("pipelined")``): the steady-state time per
     forward that a serving or training loop sees, and the regime the in-model predictions are measured in;
  5. measured saving = median(original) - median(planned), with the interval implied by the speedup's interval;
     prediction error = (predicted - measured) / measured, where the prediction sums the applied groups only, less
     the captured graph's overhead the plan measured.

A plan whose outputs do not verify has ``ok == False`` and is rendered as NOT VERIFIED; nothing reports it as a
success.  Slower-than-original beyond the noise interval is reported (``planned_verdict == "avoid"``) separately.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from fxfusion.measure.correctness import relative_error, tolerance
from fxfusion.planning.apply import apply
from fxfusion.planning.candidates import (CAPTURED_COMPILE, CHANNELS_LAST_COMPILE, COMPILE_MODES, OPTIONAL, PLANNED,
                                         PLANNED_CHANNELS_LAST_COMPILE, PLANNED_COMPILE, Built, ChannelsLast,
                                         CompiledPrediction, attach_predictions, choose, compile_model, compile_name,
                                         has_conv2d, reset_compiled_state)
from fxfusion.planning.incontext import compiled_prediction
from fxfusion.planning.insitu import CHANNELS_LAST, EAGER, MODEL, model_clock
from fxfusion.planning.rewrite import captured_module
from fxfusion.measure.profiling import cupti_warning
from fxfusion.measure.stats import paired_fraction, speedup, summarize
from fxfusion.measure.timing import Clock, TimingSpec, measure
from fxfusion.calibration.variants import compile_limits, first_call, one_line
from fxfusion.measure.devices import as_device, dtype_name, is_cuda

# End-to-end timing of whole models: longer samples than a pattern's, so Python overhead averages out.
# Samples of about 50 ms: a pipelined sample's edges (one sync, one primed call) are then a small share of it.
VERIFY_SPEC = TimingSpec(rounds=30, warmup=3, target_sample_s=0.05, budget_s=30.0)
# A planned model may be up to this many times further from float64 than the original model is, where the original
# itself misses the dtype tolerance (deep bfloat16 models): a rewrite must not be measurably less accurate.
ORIGINAL_ERROR_SLACK = 2.0


@dataclass
class OutputCheck:
    index: int
    dtype: str
    error: float | None  # relative L2 error of the planned output against the reference
    original_error: float | None  # the original model's own error against the reference
    limit: float
    ok: bool


@dataclass
class Timing:
    name: str
    status: str  # "ok" | "failed" | "skipped"
    reason: str | None = None
    median_ms: float | None = None
    iqr_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    calls_per_sample: int | None = None
    first_call_s: float | None = None  # includes compilation for the compiled variants
    speedup: dict[str, float] | None = None  # over the original: median, ci_low, ci_high
    verdict: str | None = None


@dataclass
class VerificationResult:
    ok: bool
    reason: str
    device: str
    reference: str  # "float64" | "original"
    outputs: list[OutputCheck]
    rewrites: list[dict[str, Any]]
    timings: dict[str, Timing]
    predicted_saving_ms: float | None  # over the applied groups
    measured_saving_ms: float | None
    measured_saving_ci_ms: tuple[float, float] | None
    prediction_error_pct: float | None  # (predicted - measured) / |measured|
    prediction_error_pct_of_eager: float | None  # (predicted - measured) / original median
    planned_verdict: str | None  # fuse (faster) | neutral | avoid (slower), from the planned speedup's interval
    warnings: list[str] = field(default_factory=list)
    timing: str = ""  # the clock's regime: cpu, or on CUDA pipelined / isolated
    prediction: str = ""  # where the savings came from: in_context | in_model | mixed | library (FusionPlan.prediction)
    # The same prediction from the pattern library's standalone timings, when the plan also has in-model ones.
    library_predicted_saving_ms: float | None = None
    library_prediction_error_pct: float | None = None
    # With prediction "in_context" (each class of rewrites applied alone to the model, the rest eager): whether eager
    # ran at the speed it was predicted at (candidates.HOST_MOVED), and the regions' own prediction beside it.
    prediction_comparable: bool | None = None
    regions_predicted_saving_ms: float | None = None
    regions_prediction_error_pct: float | None = None
    # The same comparison in fractions of the original model's time, each measured paired per round with the model
    # (stats.paired_fraction), so a host whose speed drifts between the plan and this run does not bias it:
    # predicted = the groups' in-model fractions less the overhead's; measured = (original - planned) / original.
    predicted_fraction: float | None = None
    measured_fraction: float | None = None
    measured_fraction_ci: tuple[float, float] | None = None
    fraction_error_pct: float | None = None  # (predicted - measured) / |measured|, of the fractions
    # The candidates timed in the same run and the one chosen (fxfusion.planning.candidates.Choice.to_dict()).
    candidates: dict[str, Any] | None = None

    @property
    def saving_within_noise(self) -> bool:
        ci = self.measured_saving_ci_ms
        return ci is not None and ci[0] <= 0.0 <= ci[1]

    def to_dict(self) -> dict[str, Any]:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return x

        d = asdict(self)
        d["saving_within_noise"] = self.saving_within_noise
        return clean(d)


def _to_reference(x: Any) -> Any:
    return x.detach().to("cpu", torch.float64) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _float64_reference(model: torch.nn.Module, inputs: tuple) -> tuple[Any, str | None]:
    """The original model's outputs in float64 on the CPU, or (None, why not)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_model = copy.deepcopy(model).to("cpu", torch.float64)
            with torch.no_grad():
                return tree_map(_to_reference, ref_model(*tree_map(_to_reference, inputs))), None
    except Exception as exc:  # a model that does not run in float64 (dtype-specific ops, device-only kernels)
        return None, one_line(exc)


def _tf32(device: str) -> bool:
    return is_cuda(device) and bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def check_outputs(planned_out: Any, original_out: Any, reference: Any, device: str) -> tuple[list[OutputCheck], str]:
    got, spec_got = tree_flatten(planned_out)
    orig, spec_orig = tree_flatten(original_out)
    ref, _ = tree_flatten(reference)
    if spec_got != spec_orig or len(got) != len(ref):
        return [], f"the planned model returns {len(got)} outputs in another structure than the original's {len(orig)}"
    checks, failures = [], []
    for i, (g, o, r) in enumerate(zip(got, orig, ref)):
        if not isinstance(g, torch.Tensor) or not g.is_floating_point():
            same = torch.equal(g, o) if isinstance(g, torch.Tensor) and isinstance(o, torch.Tensor) else g == o
            checks.append(OutputCheck(i, str(getattr(g, "dtype", type(g).__name__)), None, None, 0.0, bool(same)))
            if not same:
                failures.append(f"output {i} differs from the original")
            continue
        tol = tolerance(g.dtype, _tf32(device))
        err, orig_err = relative_error(g, r), relative_error(o, r)
        limit = max(tol, ORIGINAL_ERROR_SLACK * orig_err) if math.isfinite(orig_err) else tol
        ok = err <= limit
        checks.append(OutputCheck(i, dtype_name(g.dtype), err, orig_err, limit, ok))
        if not ok:
            failures.append(f"output {i} ({dtype_name(g.dtype)}) has relative error {err:.3g}, "
                            f"over the {limit:.1e} limit")
    return checks, "; ".join(failures)


def _kept(plan, layout: str) -> list:
    """The groups a planned compile candidate applies in ``layout`` (``FusionPlan.groups_for_compile``)."""
    return plan.groups_for_compile(layout) if hasattr(plan, "groups_for_compile") else plan.groups


def _planned_with(model, plan, planned, kept: list, name: str, said: list[str]):
    """The planned model with only the ``kept`` groups (``planned`` itself when that is all of them); the groups left
    out of candidate ``name`` go to ``said``."""
    if len(kept) == len(plan.groups):
        return planned
    dropped = ", ".join(sorted({g.id for g in plan.groups} - {g.id for g in kept}))
    where = " in channels-last" if name == PLANNED_CHANNELS_LAST_COMPILE else ""
    said.append(f"{name} leaves out {dropped}: compiled{where}, the model is not faster with those rewrites beyond "
                "the noise (or, where not measured so, their regions are slower)")
    return apply(model, dataclasses.replace(plan, groups=kept), candidate=PLANNED)


def verify_plan(model: torch.nn.Module, example_inputs: tuple, plan, device: str | torch.device = "cpu",
                spec: TimingSpec | None = None, clock: Clock | None = None, include_compile: bool = True,
                include_captured: bool = True, seed: int = 0, compile_modes: tuple[str, ...] = ("default",),
                planned_compile: bool = True, fresh_compile: bool = True,
                extra: tuple[str, ...] = OPTIONAL) -> VerificationResult:
    """Apply ``plan`` to ``model`` and verify the planned model's outputs and end-to-end time, against eager and the
    candidates of :mod:`fxfusion.planning.candidates` (whole-model compile in ``compile_modes``; with
    ``planned_compile`` the planned model compiled by Inductor), all timed in one interleaved run.
    ``extra`` names the optional candidates to build (:data:`fxfusion.planning.candidates.OPTIONAL`, all by default).
    ``fresh_compile`` resets Dynamo's compiled state first (as a new process would start), so earlier compiles of
    the same code cannot fill its cache and make a compiled candidate silently run eager."""
    device = as_device(device)
    if fresh_compile and include_compile:
        reset_compiled_state()

    inputs = tuple(example_inputs)
    spec = spec or VERIFY_SPEC
    clock = clock or model_clock(device)
    timings: dict[str, Timing] = {}
    result_warnings: list[str] = []

    def failed(reason, rewrites=(), outputs=(), reference="original"):
        return VerificationResult(False, reason, str(device), reference, list(outputs), list(rewrites), timings, None,
                                  None, None, None, None, None, result_warnings)

    try:
        planned = apply(model, plan, candidate=PLANNED)
    except Exception as exc:
        return failed(f"applying the plan failed: {one_line(exc)}")
    rewrites = [r.to_dict() for r in getattr(planned, "fxfusion_rewrites", [])]
    result_warnings += [w for w in getattr(plan, "warnings", []) if "noisy" in w]  # where the user looks, too
    result_warnings += [f"group {r['site_id']} not applied: {r['detail']}" for r in rewrites if not r["applied"]]

    with torch.no_grad():
        original_out = model(*inputs)
        try:
            with compile_limits():
                planned_first = first_call(lambda: planned(*inputs), device)
            planned_out = planned(*inputs)
        except Exception as exc:
            return failed(f"the planned model failed to run: {one_line(exc)}", rewrites)
    reference, why_not = _float64_reference(model, inputs)
    ref_name = "float64"
    if reference is None:
        reference, ref_name = tree_map(_to_reference, original_out), "original"
        result_warnings.append(f"the model does not run in float64 ({why_not}); checked against the original")
    checks, failure = check_outputs(planned_out, original_out, reference, device)
    if failure:
        result_warnings.append("outputs do not match: timings are reported for diagnosis only")

    thunks = {"eager": lambda: model(*inputs), "planned": lambda: planned(*inputs)}
    timings["eager"] = Timing("eager", "ok")
    timings["planned"] = Timing("planned", "ok", first_call_s=planned_first)
    if include_captured:
        try:
            captured = captured_module(model, plan.captured)
            with torch.no_grad():
                first = first_call(lambda: captured(*inputs), device)
            thunks["captured"] = lambda: captured(*inputs)
            timings["captured"] = Timing("captured", "ok", first_call_s=first)
        except Exception as exc:
            timings["captured"] = Timing("captured", "failed", one_line(exc))
    built: dict[str, Built] = {}
    applied, planned_compile_pred = {r["site_id"] for r in rewrites if r["applied"]}, None
    planned_layout_pred: tuple[CompiledPrediction, str] | None = None  # (saving, layout it was measured in)
    verified = {"eager": True, PLANNED: not failure}
    if include_compile:
        for mode in compile_modes:
            built[compile_name(mode)] = compile_model(compile_name(mode), model, inputs, device, COMPILE_MODES[mode],
                                                      record_post_grad=mode == "default")
        if CHANNELS_LAST_COMPILE in extra and has_conv2d(model):  # the layout decision for the whole model
            built[CHANNELS_LAST_COMPILE] = compile_model(CHANNELS_LAST_COMPILE, ChannelsLast(model), inputs, device,
                                                         None)
        if planned_compile and applied and {PLANNED_COMPILE, PLANNED_CHANNELS_LAST_COMPILE} & set(extra):
            kept = _kept(plan, MODEL)
            planned_compile_pred = compiled_prediction([g for g in kept if g.id in applied], MODEL)
            layout_pred = None
            if PLANNED_COMPILE in extra:
                built[PLANNED_COMPILE] = compile_model(
                    PLANNED_COMPILE, _planned_with(model, plan, planned, kept, PLANNED_COMPILE, result_warnings),
                    inputs, device, None, record_post_grad=True)
            if PLANNED_CHANNELS_LAST_COMPILE in extra and has_conv2d(model):  # its groups as measured in its layout
                kept_cl = _kept(plan, CHANNELS_LAST)
                layout_pred = compiled_prediction([g for g in kept_cl if g.id in applied], CHANNELS_LAST)
                base = _planned_with(model, plan, planned, kept_cl, PLANNED_CHANNELS_LAST_COMPILE, result_warnings)
                built[PLANNED_CHANNELS_LAST_COMPILE] = compile_model(PLANNED_CHANNELS_LAST_COMPILE, ChannelsLast(base),
                                                                     inputs, device, None, record_post_grad=True)
            if layout_pred is not None:
                planned_layout_pred = (layout_pred, "channels_last")
            elif planned_compile_pred is not None:  # else the model's own layout's, an approximation it says
                planned_layout_pred = (planned_compile_pred, "model layout")
        if CAPTURED_COMPILE in extra and planned_compile and "captured" in thunks:
            # the captured graph compiled without rewrites (a copy of it): planned + compile's control, and a
            # candidate of its own where nothing is applied
            built[CAPTURED_COMPILE] = compile_model(CAPTURED_COMPILE, captured_module(model, plan.captured), inputs,
                                                    device, None)
        for name, b in built.items():
            if b.status != "ok":
                timings[name] = Timing(name, b.status, b.reason)
                continue
            with torch.no_grad():
                out = b.run()
            cand_checks, cand_failure = check_outputs(out, original_out, reference, device)
            verified[name] = not cand_failure
            if cand_failure:
                result_warnings.append(f"{name}: outputs do not match ({cand_failure}); it cannot be chosen")
            thunks[name], timings[name] = b.run, Timing(name, "ok", first_call_s=b.setup_s)
    else:
        timings["compile"] = Timing("compile", "skipped", "include_compile=False")

    with torch.no_grad(), compile_limits():  # a guard that fails while timing recompiles instead of running eager
        samples = measure(thunks, clock, spec)
    result_warnings += [w for w in [cupti_warning()] if w]
    eager_s = samples.seconds["eager"]
    for name, secs in samples.seconds.items():
        t = timings[name]
        s = summarize(secs)
        t.median_ms, t.iqr_ms = s.median * 1e3, s.iqr * 1e3
        t.samples_ms, t.calls_per_sample = [x * 1e3 for x in secs], samples.inner[name]
        if name != "eager":
            sp = speedup(eager_s, secs, seed=seed)
            t.speedup, t.verdict = {"median": sp.median, "ci_low": sp.ci_low, "ci_high": sp.ci_high}, sp.verdict()
        if s.noisy:
            result_warnings.append(f"{name} timing is noisy (IQR {s.iqr / s.median:.0%} of the median)")
    if samples.budget_exhausted:
        result_warnings.append(f"timing stopped after {samples.rounds} rounds (budget {spec.budget_s:.0f} s)")

    eager_ms, planned_t = timings["eager"].median_ms, timings["planned"]
    measured = eager_ms - planned_t.median_ms
    sp = planned_t.speedup
    ci = (eager_ms * (1 - 1 / sp["ci_low"]), eager_ms * (1 - 1 / sp["ci_high"]))
    known = [g.predicted_saving_ms for g in plan.groups if g.id in applied and g.predicted_saving_ms is not None]
    applied_groups = [g for g in plan.groups if g.id in applied]
    in_context = (compiled_prediction(applied_groups, EAGER) if applied_groups
                  and all((getattr(g, "in_context", None) or {}).get(EAGER) for g in applied_groups) else None)
    predicted = None
    if not applied:
        predicted = 0.0  # the planned model is a copy of the original
    elif len(known) == len(applied):
        predicted = sum(known) - (plan.overhead_ms or 0.0)
    else:
        result_warnings.append(f"{len(applied) - len(known)} applied group(s) have no predicted saving")
    if applied and plan.overhead_ms is None:
        result_warnings.append("the plan did not measure the captured graph's overhead; the prediction omits it")
    source, regions, regions_error, comparable = getattr(plan, "prediction", "library"), None, None, None
    if in_context is not None:  # each class applied alone with the rest eager: the regions' sum is shown beside it
        regions, predicted, source = predicted, in_context.ms(eager_ms), "in_context"
        comparable = in_context.comparable(eager_ms)
        if regions is not None and measured != 0:
            regions_error = 100.0 * (regions - measured) / abs(measured)
    error_pct = error_of_eager = library = library_error = None
    if predicted is not None and applied:  # with nothing applied there is no prediction to check
        error_of_eager = 100.0 * (predicted - measured) / eager_ms
        error_pct = 100.0 * (predicted - measured) / abs(measured) if measured != 0 else None
        lib = [g.library_saving_ms for g in plan.groups if g.id in applied and g.library_saving_ms is not None]
        if source in ("in_model", "in_context") and len(lib) == len(applied):
            library = sum(lib) - (plan.overhead_ms or 0.0)
            library_error = 100.0 * (library - measured) / abs(measured) if measured != 0 else None
    measured_f = paired_fraction(eager_s, samples.seconds["planned"], eager_s)
    predicted_f = plan.fraction_of(applied) if applied and hasattr(plan, "fraction_of") else None
    if in_context is not None:
        predicted_f = in_context.fraction
    fraction_error = None
    if predicted_f is not None and measured_f.median != 0:
        fraction_error = 100.0 * (predicted_f - measured_f.median) / abs(measured_f.median)
    choice = choose({n: t for n, t in timings.items() if n != "captured"}, verified, built)
    attach_predictions(choice, (in_context or predicted) if applied else None, planned_compile_pred,
                       planned_layout_pred)
    ok = not failure
    reason = failure or (f"outputs match the {ref_name} reference; planned model "
                         f"{sp['median']:.2f}x the original, 95% CI [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}]")
    return VerificationResult(ok, reason, str(device), ref_name, checks, rewrites, timings, predicted, measured, ci,
                              error_pct, error_of_eager, planned_t.verdict, result_warnings,
                              timing=getattr(clock, "mode", str(clock.device)),
                              prediction=source, prediction_comparable=comparable,
                              regions_predicted_saving_ms=regions, regions_prediction_error_pct=regions_error,
                              library_predicted_saving_ms=library, library_prediction_error_pct=library_error,
                              predicted_fraction=predicted_f, measured_fraction=measured_f.median,
                              measured_fraction_ci=(measured_f.ci_low, measured_f.ci_high),
                              fraction_error_pct=fraction_error, candidates=choice.to_dict())
