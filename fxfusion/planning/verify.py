"""End-to-end verification of a plan: is the planned model right, and is it faster, by as much as predicted?

Method (:func:`verify_plan`):
  1. apply the plan (:func:`fxfusion.planning.rewrite.apply`); a crash here is a failed verification, not an exception;
  2. run the original and the planned model at the example inputs (no grad); the reference is the original model
     run in float64 (on its GPU where it is on one, else or where that fails on the CPU) where the model allows it,
     else the original model itself;
  3. every output of the planned model must be within the dtype's tolerance of the reference
     (:mod:`fxfusion.planning.outputs`), and so must every other candidate's, or it cannot be chosen;
  4. build the candidates of a :class:`~fxfusion.planning.candidates.CandidateSet` and time them with the original and
     the captured graph before rewriting, interleaved (:func:`fxfusion.measure.timing.measure`); speedups over the original with bootstrap intervals.  On CUDA
     the forward passes are timed pipelined (back to back, ``CudaClock("pipelined")``): the steady-state time per
     forward that a serving or training loop sees, and the regime the in-model predictions are measured in;
  5. measured saving = median(original) - median(planned), with the interval implied by the speedup's interval;
     prediction error = (predicted - measured) / measured, each rewritten candidate predicted over the groups it
     applies by :meth:`FusionPlan.predict` (:mod:`fxfusion.planning.prediction`);
  6. the fastest verified candidate is chosen (:func:`fxfusion.planning.candidates.choose`).

A plan whose outputs do not verify has ``ok == False`` and is rendered as NOT VERIFIED; nothing reports it as a
success.  Slower-than-original beyond the noise interval is reported (``planned_verdict == "avoid"``) separately.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

from fxfusion.calibration.variants import compile_limits, first_call, one_line
from fxfusion.measure.devices import as_device, is_cuda
from fxfusion.measure.profiling import cupti_warning
from fxfusion.measure.stats import paired_fraction, speedup, summarize
from fxfusion.measure.timing import Clock, TimingSpec, measure
from fxfusion.planning.apply import apply, every_group
from fxfusion.planning.candidates import (CONTEXT, PLANNED, PLANNED_CHANNELS_LAST_COMPILE, CandidateSet,
                                         attach_predictions, choose, reset_compiled_state, whole_model)
from fxfusion.planning.explain import explain
from fxfusion.planning.search import RANK_SPEC, build_candidates
from fxfusion.planning.insitu import clock_name, model_clock
from fxfusion.planning.outputs import OutputCheck, check_outputs, float64_reference, to_reference
from fxfusion.planning.prediction import Context, Prediction, Source, label
from fxfusion.planning.rewrite import captured_module
from fxfusion.planning.sensitivity import check_sensitivity, earlier_failures

NOTHING_APPLIED = "no rewrite applied: the planned model is a copy of the original, not a candidate of its own"
EVERY_CLASS_SLOWER = ("every class of rewrites made the model run eagerly slower beyond the noise: the planned "
                      "candidate would be the original, not a candidate of its own")
# End-to-end timing of whole models: longer samples than a pattern's, so Python overhead averages out.
# Samples of about 50 ms: a pipelined sample's edges (one sync, one primed call) are then a small share of it.
VERIFY_SPEC = TimingSpec(rounds=30, warmup=3, target_sample_s=0.05, budget_s=30.0)
# Under an --apply budget the candidates' interleaved run takes what is left of it, at least this long: builds that
# ran to the deadline then timed for VERIFY_SPEC's 30 s more took a zoo model's --apply past its 90 s (Qwen2 93 s on an
# H100, Llama decode with a cache 101 s on an H200, 2026-12-07).
TIMING_FLOOR_S = 5.0


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
    nothing_applied: str | None = None  # why no rewrite was applied, in one sentence (None: some were)
    steps_s: dict[str, float] = field(default_factory=dict)  # seconds of each step of verify_plan (_Steps)

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


def _eager_ms(model, inputs: tuple, clock: Clock) -> float:
    """One eager forward pass, briefly timed: the host-bound signal of the candidates' search."""
    with torch.no_grad():
        samples = measure({"eager": lambda: model(*inputs)}, clock, RANK_SPEC)
    return summarize(samples.seconds["eager"]).median * 1e3


def _predictions(plan, kept: dict[str, list], applied: set[str]) -> tuple[dict[str, Prediction | None], set[str]]:
    """Each rewritten candidate's prediction over the groups it applies; planned + channels-last + compile falls back
    to the model layout's compiled timings where its own layout's are missing (returned as the second value)."""
    out = {name: plan.predict(CONTEXT[name], groups) for name, groups in kept.items() if name in CONTEXT}
    fallback = set()
    if out.get(PLANNED_CHANNELS_LAST_COMPILE) is None and PLANNED_CHANNELS_LAST_COMPILE in kept:
        out[PLANNED_CHANNELS_LAST_COMPILE] = plan.predict(
            Context.COMPILED, [g for g in plan.groups_for(Context.COMPILED) if g.id in applied])
        fallback.add(PLANNED_CHANNELS_LAST_COMPILE)
    return out, fallback


def _time(thunks: dict, timings: dict[str, Timing], clock: Clock, spec: TimingSpec, seed: int, said: list[str]):
    """All candidates interleaved in one run; medians, samples and speedups over eager onto ``timings``."""
    with torch.no_grad(), compile_limits():  # a guard that fails while timing recompiles instead of running eager
        samples = measure(thunks, clock, spec)
    said += [w for w in [cupti_warning()] if w]
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
            said.append(f"{name} timing is noisy (IQR {s.iqr / s.median:.0%} of the median)")
    if samples.budget_exhausted:
        said.append(f"timing stopped after {samples.rounds} rounds (budget {spec.budget_s:.0f} s)")
    return samples


def verify_plan(model: torch.nn.Module, example_inputs: tuple, plan, device: str | torch.device = "cpu",
                spec: TimingSpec | None = None, clock: Clock | None = None,
                candidates: CandidateSet = CandidateSet(), seed: int = 0,
                compile_fn: Callable | None = None, deadline: float | None = None,
                longest_build_s: float = 0.0) -> VerificationResult:
    """Apply ``plan`` (a :class:`~fxfusion.planning.plan.FusionPlan`) to ``model`` and verify the planned model's
    outputs and end-to-end time against eager and the ``candidates`` (searched by
    :func:`fxfusion.planning.search.build_candidates` until ``deadline``, a time.perf_counter() value; compiled by
    ``compile_fn``, default :func:`fxfusion.planning.candidates.compile_model`; ``longest_build_s``: the longest
    compile of the model before, what the first build may cost), all timed in one interleaved run (module doc)."""
    device = as_device(device)
    if candidates.fresh and candidates.compiles:
        reset_compiled_state()
    inputs = tuple(example_inputs)
    spec, clock = spec or VERIFY_SPEC, clock or model_clock(device)
    timings: dict[str, Timing] = {}
    said: list[str] = []

    def failed(reason, rewrites=(), outputs=(), reference="original"):
        return VerificationResult(False, reason, str(device), reference, list(outputs), list(rewrites), timings, None,
                                  None, None, None, None, None, said)

    steps = _Steps()
    try:
        planned = every_group(model, plan)
    except Exception as exc:
        return failed(f"applying the plan failed: {one_line(exc)}")
    steps.done("apply")
    rewrites = [r.to_dict() for r in getattr(planned, "fxfusion_rewrites", [])]
    said += [w for w in plan.warnings if "noisy" in w]  # where the user looks, too
    said += [f"group {r['site_id']} not applied: {r['detail']}" for r in rewrites if not r["applied"]]
    with torch.no_grad():
        original_out = model(*inputs)
        try:
            with compile_limits():
                planned_first = first_call(lambda: planned(*inputs), device)
            planned_out = planned(*inputs)
        except Exception as exc:
            return failed(f"the planned model failed to run: {one_line(exc)}", rewrites)
    steps.done("first_calls")
    reference, why_not = float64_reference(model, inputs)
    steps.done("float64")
    ref_name = "float64"
    if reference is None:
        reference, ref_name = tree_map(to_reference, original_out), "original"
        said.append(f"the model does not run in float64 ({why_not}); checked against the original")
    checks, failure = check_outputs(planned_out, original_out, reference, device)
    said += check_sensitivity(model, inputs, original_out, checks, device, planned, plan.captured)  # can it fail?
    failure = failure or earlier_failures(checks)  # an output that does not depend on the inputs: an earlier tensor
    steps.done("sensitivity")
    if failure:
        said.append("outputs do not match: timings are reported for diagnosis only")

    applied = {r["site_id"] for r in rewrites if r["applied"]}
    thunks = {"eager": lambda: model(*inputs)}
    timings["eager"] = Timing("eager", "ok")
    eager_kept = {g.id for g in plan.groups_for(Context.EAGER)} & applied  # what the planned candidate applies
    candidate, candidate_first, candidate_failure = planned, planned_first, None
    if eager_kept != applied:
        said.append(f"planned leaves out {', '.join(sorted(applied - eager_kept))}: their class made the model run "
                    "eagerly slower beyond the noise (every group is still verified, and the compiled candidates "
                    "decide them in their own context)")
        if eager_kept:
            candidate, candidate_first, candidate_failure = _eager_candidate(model, plan, inputs, device,
                                                                             original_out, reference)
            if candidate is None:  # it did not run: no planned candidate to time
                timings["planned"] = Timing("planned", "failed", candidate_failure)
                eager_kept = set()
    if eager_kept:
        thunks["planned"] = lambda: candidate(*inputs)
        timings["planned"] = Timing("planned", "ok", first_call_s=candidate_first)
    elif "planned" not in timings:  # a copy of the original: timed as a candidate of its own it could only measure noise
        timings["planned"] = Timing("planned", "skipped", EVERY_CLASS_SLOWER if applied else NOTHING_APPLIED)
    if candidates.captured:
        try:
            captured = captured_module(model, plan.captured)
            with torch.no_grad():
                first = first_call(lambda: captured(*inputs), device)
            thunks["captured"] = lambda: captured(*inputs)
            timings["captured"] = Timing("captured", "ok", first_call_s=first)
        except Exception as exc:
            timings["captured"] = Timing("captured", "failed", one_line(exc))
    verified = {"eager": True, PLANNED: not failure and not candidate_failure}
    steps.done("planned_and_captured")
    found = build_candidates(model, inputs, plan, planned, applied, candidates, device,
                             lambda out: check_outputs(out, original_out, reference, device)[1], clock, said,
                             "captured" in thunks, compile_fn,
                             None if deadline is None else deadline - TIMING_FLOOR_S,  # the timing run's floor kept
                             _eager_ms(model, inputs, clock) if is_cuda(device) and candidates.compiles else None,
                             longest_build_s)
    verified.update(found.verified)
    steps.done("candidates")
    if not any(whole_model(n) for n in found.built):
        timings["compile"] = Timing("compile", "skipped", "no whole-model compile asked for")
    for name, b in found.built.items():
        timings[name] = Timing(name, "ok", first_call_s=b.setup_s) if b.status == "ok" else Timing(name, b.status,
                                                                                                 b.reason)
        if b.status == "ok":
            thunks[name] = b.run
    if deadline is not None:  # the candidates' run gets what is left of the --apply budget (its minimum rounds kept)
        spec = dataclasses.replace(spec, budget_s=max(TIMING_FLOOR_S, min(spec.budget_s,
                                                                        deadline - time.perf_counter())))
    samples = _time(thunks, timings, clock, spec, seed, said)
    steps.done("timing")

    predictions, fallback = _predictions(plan, found.kept, applied)
    choice = choose({n: t for n, t in timings.items() if n != "captured"}, verified, found.built)
    choice.not_tried, choice.explanation = dict(found.not_tried), explain(choice, plan, found)
    attach_predictions(choice, predictions if applied else {}, fallback)
    result = VerificationResult(not failure, failure, str(device), ref_name, checks, rewrites, timings, None, None,
                                None, None, None, timings["planned"].verdict, said, timing=clock_name(clock),
                                candidates=choice.to_dict(), steps_s=steps.seconds)
    _planned_prediction(result, plan, predictions.get(PLANNED), eager_kept, samples)
    if not applied:
        result.nothing_applied = why_nothing_applied(plan, rewrites)
    if not failure and not applied:
        result.reason = f"outputs match the {ref_name} reference; no rewrite was applied (the planned model is the original)"
    elif not failure and not eager_kept:
        result.reason = f"outputs match the {ref_name} reference; planned: {timings['planned'].reason}"
    elif not failure:
        sp = timings["planned"].speedup
        result.reason = (f"outputs match the {ref_name} reference; planned model {sp['median']:.2f}x the original, "
                         f"95% CI [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}]")
    return result


def _planned_prediction(r: VerificationResult, plan, predicted: Prediction | None, applied: set[str], samples) -> None:
    """The planned candidate's measured saving against its prediction, in ms and as fractions of eager, with the
    regions' and the library's own predictions beside a better one."""
    r.prediction = label(predicted, bool(applied))
    if not applied:
        r.predicted_saving_ms = 0.0  # the planned model is a copy of the original: nothing to measure
        return
    eager_ms, planned_t = r.timings["eager"].median_ms, r.timings["planned"]
    eager_s = samples.seconds["eager"]
    measured = eager_ms - planned_t.median_ms
    sp = planned_t.speedup
    r.measured_saving_ms = measured
    r.measured_saving_ci_ms = (eager_ms * (1 - 1 / sp["ci_low"]), eager_ms * (1 - 1 / sp["ci_high"]))
    f = paired_fraction(eager_s, samples.seconds["planned"], eager_s)
    r.measured_fraction, r.measured_fraction_ci = f.median, (f.ci_low, f.ci_high)
    groups = [g for g in plan.groups if g.id in applied]
    if predicted is None:
        r.warnings.append(f"{sum(g.predicted_saving_ms is None for g in groups)} applied group(s) have no predicted "
                          "saving")
    if plan.overhead_ms is None:
        r.warnings.append("the plan did not measure the captured graph's overhead; the prediction omits it")
    regions = plan.predict(Context.EAGER, [dataclasses.replace(g, classes={}) for g in groups])
    if predicted is not None and predicted.sources == {Source.CLASS}:
        # each class applied alone with the rest eager: the regions' sum is shown beside it
        r.prediction_comparable = predicted.comparable(eager_ms)
        if regions is not None:
            r.regions_predicted_saving_ms = regions.saving_ms
            r.regions_prediction_error_pct = _error(regions.saving_ms, measured)
    if predicted is None:
        return
    r.predicted_saving_ms = predicted.ms(eager_ms)
    r.prediction_error_pct_of_eager = 100.0 * (r.predicted_saving_ms - measured) / eager_ms
    r.prediction_error_pct = _error(r.predicted_saving_ms, measured)
    library = [g.library_saving_ms for g in groups if g.library_saving_ms is not None]
    if r.prediction in ("in_model", "in_context") and len(library) == len(groups):
        r.library_predicted_saving_ms = sum(library) - (plan.overhead_ms or 0.0)
        r.library_prediction_error_pct = _error(r.library_predicted_saving_ms, measured)
    r.predicted_fraction = predicted.fraction
    if r.predicted_fraction is not None and r.measured_fraction != 0:
        r.fraction_error_pct = 100.0 * (r.predicted_fraction - r.measured_fraction) / abs(r.measured_fraction)


class _Steps:
    """Seconds of each step of :func:`verify_plan` since the one before (what an --apply over its budget spent)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 2)
        self._last = now


def _eager_candidate(model, plan, inputs: tuple, device, original_out, reference):
    """The planned candidate where it applies fewer groups than were verified: (module, first call s, why its outputs
    do not match or None), checked against the same reference."""
    try:
        module = apply(model, plan, candidate=PLANNED)
        with torch.no_grad(), compile_limits():
            first = first_call(lambda: module(*inputs), device)
            failure = check_outputs(module(*inputs), original_out, reference, device)[1]
    except Exception as exc:
        return None, None, f"it failed to run: {one_line(exc)}"
    return module, first, failure or None


def why_nothing_applied(plan, rewrites: list[dict]) -> str:
    """Why no rewrite was applied, in one sentence: the plan's refusals counted by why, with the first reason of
    each, and the rewrites that did not apply (illegal and already-fused sites are the report's own rows)."""
    by: dict[str, list[str]] = {}
    for r in plan.refused:
        if r.why not in ("illegal", "already_fused"):
            by.setdefault(str(r.why), []).append(r.reasons[0] if r.reasons else "")
    parts = [f"{len(rs)} site(s) refused {why} ({rs[0]})" for why, rs in by.items()]
    parts += [f"{r['site_id']} not rewritten: {r['detail']}" for r in rewrites if not r["applied"]]
    return "nothing applied: " + ("; ".join(parts) if parts else "no site was decided 'fuse'")


def _error(predicted: float, measured: float) -> float | None:
    return 100.0 * (predicted - measured) / abs(measured) if measured != 0 else None
