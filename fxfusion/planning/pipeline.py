"""The one planning pipeline: stages over one context, run in full by ``analyze --apply`` and as a prefix by
``fxfusion.plan()``.

    capture -> match -> decide            (:mod:`fxfusion.planning.analyze`: an :class:`Analysis`)
      -> plan                              FusionPlan: refusals, convex groups (:mod:`fxfusion.planning.plan`)
      -> overhead                          what the captured graph costs over the model (insitu.measure_overhead)
      -> regions                           each group's region timed inside the model; slower ones refused (insitu)
      -> charge                            the groups kept only if their saving covers the overhead
      -> classes in eager context          each class applied alone, the rest eager (incontext): predicts planned
      -> compiled context                  classes with the whole model compiled, regions compiled where the budget
                                           left a class out: what planned + compile applies and predicts
      -> verify and choose                 float64 check, the candidates timed end to end, the fastest chosen (verify)

:data:`PLAN_STAGES` is the prefix ``fxfusion.plan()`` runs after deciding (a partitioner gets the same predictions
``analyze --apply`` makes); :data:`APPLY_STAGES` the whole.  Every stage is a function of a :class:`Run` (what the
stages have made so far) and the :class:`Planner` (device, clocks, timing specs, budget, the candidates asked for),
so a test injects a clock or a spec into the whole pipeline instead of patching module globals.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx

from fxfusion.errors import FxFusionError
from fxfusion.graph.capture import capture, signature_names
from fxfusion.graph.loader import as_example_inputs
from fxfusion.graph.sites import CapturedModel
from fxfusion.measure.devices import as_device, is_cuda
from fxfusion.measure.timing import PIPELINED, QUICK_SPEC, Clock, TimingSpec, check_regime
from fxfusion.planning.analyze import Analysis, decide_sites
from fxfusion.planning.candidates import CONTEXT, CandidateSet, has_conv2d
from fxfusion.planning.decide import LiveSource, ProfileSource
from fxfusion.planning.dynamic import plan_over_range
from fxfusion.planning.dynamic_verify import verify_over_range
from fxfusion.planning.incontext import measure_in_context
from fxfusion.planning.insitu import INSITU_BUDGET_S, Overhead, measure_overhead
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.prediction import Context
from fxfusion.planning.verify import VerificationResult, verify_plan
from fxfusion.profiles.profile import Profile


@dataclass(frozen=True)
class Specs:
    """Timing knobs per stage; None: the stage's own default (insitu.INSITU_SPEC, incontext.CONTEXT_SPEC,
    verify.VERIFY_SPEC, the overhead's, QUICK_SPEC for sites measured live)."""

    sites: TimingSpec | None = None
    regions: TimingSpec | None = None
    overhead: TimingSpec | None = None
    context: TimingSpec | None = None
    verify: TimingSpec | None = None


@dataclass(frozen=True)
class Planner:
    """What every stage reads: where the model runs, how it is timed, how long planning may take, what to build."""

    device: torch.device = torch.device("cpu")
    # Seconds the whole of APPLY_STAGES may take; each measuring stage gets what is left (at most budget_s) and the
    # candidates' search stops building once it is spent (what it did not try is said).  None: no bound.
    total_s: float | None = None
    clock: Clock | None = None  # times whole-model figures (overhead, regions, classes, candidates); None: pipelined
    site_clock: Clock | None = None  # times sites measured live (calibration's regime); None: the library's
    specs: Specs = Specs()
    budget_s: float = INSITU_BUDGET_S  # each measuring stage's budget (regions, classes per context)
    regime: str = PIPELINED  # the timing regime sites are decided in
    candidates: CandidateSet = CandidateSet()
    # The compiled regime's measurements (classes with the whole model compiled; regions compiled alone where the
    # budget left a class out) when a planned compiled candidate is asked for; None: on CUDA (several compiles of the
    # model: too slow for a CPU by default).  ``compiled_classes`` False: regions compiled alone only.
    compiled_regime: bool | None = None
    compiled_classes: bool = True
    eager_context: bool = True  # each class applied alone to the model run eagerly: predicts the planned candidate
    # How a model is compiled wherever the pipeline compiles one (classes, candidates); None: as a user would,
    # fxfusion.planning.candidates.compile_model (torch.compile, warmed, failures as data).
    compile: Callable | None = None

    def measures_compiled(self) -> bool:
        wanted = is_cuda(self.device) if self.compiled_regime is None else self.compiled_regime
        return wanted and bool(self.candidates.planned_compiled())


@dataclass
class Run:
    """What the stages have made so far."""

    model: Any  # an nn.Module, or a graph (then nothing is timed against the module)
    example_inputs: tuple
    analysis: Analysis
    plan: FusionPlan | None = None
    overhead: Overhead | None = None
    verification: VerificationResult | None = None

    started: float = field(default_factory=time.perf_counter)
    stage_s: dict[str, float] = field(default_factory=dict)  # seconds each stage took, in order (said in the JSON)
    builds_s: list[float] = field(default_factory=list)  # each compile of the model so far: what the next may cost

    def budget(self, p: "Planner", after: int = 0) -> float:
        """A measuring stage's budget: the planner's per-stage budget, at most what the whole run has left less the
        share kept for building the candidates (:data:`CANDIDATES_SHARE`), shared equally with the ``after``
        measuring stages still to come (what a stage leaves unused goes to the next).  Without the sharing the
        regions of a conv net's 53 groups took all of it and no class was measured in either context."""
        if p.total_s is None:
            return p.budget_s
        left = self.deadline(p) - CANDIDATES_SHARE * p.total_s - time.perf_counter()
        return max(0.0, min(p.budget_s, left / (1 + after)))

    def deadline(self, p: "Planner") -> float | None:
        return None if p.total_s is None else self.started + p.total_s

    @property
    def module(self) -> torch.nn.Module | None:
        return self.model if isinstance(self.model, torch.nn.Module) else None

    def has_groups(self) -> bool:
        return bool(self.plan.groups or self.plan.pending)


Stage = Callable[[Run, Planner], None]
# --apply's default budget on CUDA: issue 24's target for a zoo model's whole --apply on an H200 (the compiled
# regime's classes and the configurations' compiles are most of it; this code's apply times on a GPU are not measured
# yet).  On a CPU a compile alone takes 10-25 s: no default bound.
CUDA_BUDGET_S = 90.0
# The share of the whole --apply budget the measuring stages leave to building the candidates: the whole-model
# configurations are what a user gets by flipping a flag, and a budget spent measuring rewrites before any of them was
# built handed back eager (tv_resnet50 32x224 on an H100, 2026-12-07 17:15 UTC: three measuring stages of 30 s each).
CANDIDATES_SHARE = 0.5
# The eager forward pass timed by the analysis and again by the verification: past this ratio the machine's load moved.
LOAD_MOVED = 1.5


def default_budget_s(device) -> float | None:
    return CUDA_BUDGET_S if is_cuda(device) else None


def make_plan(run: Run, p: Planner) -> None:
    """The analysis's ``fuse`` sites planned: refusals with reasons, convex groups only."""
    run.plan = FusionPlan.from_analysis(run.analysis, device=p.device)


def charge_overhead_measure(run: Run, p: Planner) -> None:
    """Running the captured graph costs something of its own: a plan must save more than that."""
    if run.module is not None and run.has_groups():
        run.overhead = measure_overhead(run.model, run.plan.captured, run.example_inputs, p.device,
                                        spec=p.specs.overhead, clock=p.clock)


def measure_regions(run: Run, p: Planner) -> None:
    """Predict from each group's region timed inside the model, not from the standalone pattern timings."""
    if run.module is not None and run.has_groups():
        run.plan.measure_in_model(run.model, run.example_inputs, p.device, spec=p.specs.regions, clock=p.clock,
                                  budget_s=run.budget(p, after=_stages_after_regions(run, p)),
                                  reference_ms=run.overhead.eager_ms if run.overhead is not None else None)
        note_in_model(run.analysis, run.plan)


def charge(run: Run, p: Planner) -> None:
    if run.overhead is not None and run.plan.groups:
        run.plan.require_saving_over(run.overhead)


def measure_eager_context(run: Run, p: Planner) -> None:
    if p.eager_context and run.module is not None and run.plan.groups:
        run.plan.warnings += measure_in_context(run.plan, run.model, run.example_inputs, Context.EAGER, p.device,
                                                spec=p.specs.context, clock=p.clock,
                                                budget_s=run.budget(p, after=len(_compiled_contexts(run, p))))


def measure_compiled(run: Run, p: Planner) -> None:
    """The compiled contexts of the planned compile candidates asked for, which then leave out what Inductor does
    better without: each class of rewrites measured with the whole model compiled first -- in the model's layout for
    planned + compile, in channels-last for planned + channels-last + compile on a conv model (each context decides
    what its candidate leaves out) -- then each group's region compiled on its own only where its class was not
    measured so (the budget ran out, or the classes are off), as the fallback prediction and filter."""
    contexts = _compiled_contexts(run, p)
    if not contexts:
        return
    for i, context in enumerate(contexts if p.compiled_classes else []):
        run.plan.warnings += measure_in_context(run.plan, run.model, run.example_inputs, context, p.device,
                                                spec=p.specs.context, clock=p.clock,
                                                budget_s=run.budget(p, after=len(contexts) - 1 - i),
                                                compile_fn=p.compile, builds=run.builds_s)
    for context in contexts:
        left = [g for g in run.plan.groups if context not in g.classes]
        run.plan.measure_in_compiled_model(run.model, run.example_inputs, context, p.device, spec=p.specs.regions,
                                           clock=p.clock, budget_s=run.budget(p), groups=left)


def _compiled_contexts(run: Run, p: Planner) -> list[Context]:
    """The compiled contexts measure_compiled measures: planned + compile's, and planned + channels-last +
    compile's on a conv model, where those candidates are asked for."""
    if not (p.measures_compiled() and run.module is not None and run.plan.groups):
        return []
    return [Context.COMPILED] * (Context.COMPILED in _asked(p)) + [Context.COMPILED_CHANNELS_LAST] * (
        Context.COMPILED_CHANNELS_LAST in _asked(p) and has_conv2d(run.model))


def _stages_after_regions(run: Run, p: Planner) -> int:
    """How many measuring stages come after the regions' and will measure: the eager classes, each compiled one."""
    eager = p.eager_context and run.module is not None and bool(run.plan.groups)
    return int(eager) + len(_compiled_contexts(run, p)) * p.compiled_classes


def _asked(p: Planner) -> set[Context]:
    return {CONTEXT[name] for name in p.candidates.planned_compiled()}


def verify_and_choose(run: Run, p: Planner) -> None:
    """The plan applied, checked against float64 and timed end to end beside the candidates; the best one chosen,
    and ``fxfusion.apply(model, plan)`` hands it back.  The verification (with the plan) goes on the analysis."""
    run.verification = verify_plan(run.model, run.example_inputs, run.plan, device=p.device, spec=p.specs.verify,
                                   clock=p.clock, candidates=p.candidates, compile_fn=p.compile,
                                   deadline=run.deadline(p), longest_build_s=max(run.builds_s, default=0.0))
    run.plan.choice = run.verification.candidates
    eager, before = run.verification.timings.get("eager"), run.analysis.forward_ms
    if eager is not None and eager.median_ms and before and max(eager.median_ms / before, before / eager.median_ms) \
            > LOAD_MOVED:  # the same eager forward pass, timed twice: a figure of each phase is not comparable
        run.verification.warnings.append(
            f"the eager forward pass read {before:.4g} ms while analysing and {eager.median_ms:.4g} ms while "
            "verifying: the machine's load changed between them, so figures of the two phases disagree by that much")
    # The plan travels with the verification: which groups were applied, which refused and why.
    run.analysis.verification = {**run.verification.to_dict(), "plan": run.plan.to_dict()}


PLAN_STAGES: tuple[Stage, ...] = (make_plan, charge_overhead_measure, measure_regions, charge, measure_eager_context)
APPLY_STAGES: tuple[Stage, ...] = PLAN_STAGES + (measure_compiled, verify_and_choose)


LOG = logging.getLogger("fxfusion.planning")
STAGE_WORDS = {"make_plan": "plan made", "charge_overhead_measure": "the captured graph's overhead measured",
               "measure_regions": "regions timed in the model", "charge": "groups charged that overhead",
               "measure_eager_context": "classes timed with the model run eagerly",
               "measure_compiled": "classes timed with the model compiled",
               "verify_and_choose": "checked against float64, candidates built, timed and chosen"}


def run_stages(run: Run, planner: Planner, stages: tuple[Stage, ...]) -> Run:
    """Each stage in order; the seconds each took go on ``run.stage_s`` (and on the verification, once there is
    one), so a run that overran its budget says where the time went."""
    for stage in stages:
        start = time.perf_counter()
        stage(run, planner)
        run.stage_s[stage.__name__] = time.perf_counter() - start
        LOG.info("--apply: %s, %.1f s (%.1f s so far)", STAGE_WORDS.get(stage.__name__, stage.__name__),
                 run.stage_s[stage.__name__], time.perf_counter() - run.started)
    if run.analysis.verification is not None:
        run.analysis.verification["stages_s"] = {k: round(v, 2) for k, v in run.stage_s.items()}
    return run


def plan(model_or_graph: Any, profile: Profile | str | None, example_inputs: tuple, device: str | None = None,
         spec=None, compile_modes: tuple[str, ...] = ("compile",), check_overhead: bool = True,
         clock=None, in_model: bool = True, regime: str = PIPELINED, allow_foreign: bool = False,
         eager_context: bool = True, planner: Planner | None = None, live: bool = True,
         dynamic=None) -> FusionPlan:
    """Capture, find the sites, decide each from ``profile`` (or measure them live when it is None), and plan: the
    prefix :data:`PLAN_STAGES` of the pipeline ``analyze --apply`` runs.

    The model runs on ``device`` (default: where its example inputs are), never on the profile's device: a profile
    measured on another device is an FxFusionError naming both unless ``allow_foreign`` (then the plan warns).  Each
    site is decided in ``regime``: pipelined (the default: as a forward pass runs its ops) or isolated.

    ``spec`` sets the timing knobs of the live measurements (sites and in-model regions), ``clock`` times the live
    site measurements (default: the library's, isolated calls on CUDA).  With an nn.Module to compare with:
    ``in_model`` times each group's region inside the captured graph and predicts from that, ``check_overhead``
    measures the captured graph's call overhead over the model and keeps the groups only when their predicted saving
    covers it, and ``eager_context`` (with ``in_model``) measures each class of groups applied alone to the model, from
    which the planned model is predicted (``plan.predict(Context.EAGER)``).  ``planner`` replaces all of these.
    With a profile, ``live`` measures the sites of patterns it has no entry for (False: they stay undecided).
    ``dynamic`` (``"batch,seq"``, ``"batch=1:32,seq=16:512"``) plans one graph for every shape of those ranges: planned
    at each bucket of the range as here, kept where every bucket keeps it (:mod:`fxfusion.planning.dynamic`)."""
    if not isinstance(example_inputs, tuple):  # a tensor or a list of them, as a model file may give: as the CLI reads
        example_inputs = as_example_inputs(example_inputs)
    if dynamic is not None:
        def at_bucket(inputs, sizes):
            return plan(model_or_graph, profile, inputs, device, spec, compile_modes, check_overhead, clock, in_model,
                        regime, allow_foreign, eager_context, planner, live)
        return plan_over_range(model_or_graph, example_inputs, dynamic, at_bucket,
                               as_device(device or _device_of(example_inputs)))
    check_regime(regime)
    device = as_device(device or _device_of(example_inputs))
    planner = planner or Planner(device, site_clock=clock, specs=Specs(sites=spec, regions=spec), regime=regime,
                                 eager_context=eager_context and in_model)
    source_name = "the profile"
    if isinstance(profile, str) or hasattr(profile, "__fspath__"):
        source_name, profile = str(profile), Profile.load(profile)
    live_source = LiveSource(planner.device, planner.specs.sites or QUICK_SPEC, planner.site_clock, compile_modes,
                             regime=planner.regime)  # every site without a profile; with one, the patterns it lacks
    if profile is not None:  # before capturing: a foreign profile fails fast
        source = ProfileSource(profile, planner.device, source_name, planner.regime, allow_foreign,
                               live=live_source if live else False)
    else:
        source = live_source
    captured = _as_captured(model_or_graph, example_inputs)
    analysis = decide_sites(captured, source, planner.device)
    stages = tuple(s for s in PLAN_STAGES if (check_overhead or s is not charge_overhead_measure)
                   and (in_model or s is not measure_regions))
    result = run_stages(Run(model_or_graph, tuple(example_inputs), analysis), planner, stages).plan
    result.warnings = source.warnings() + result.warnings
    return result


def apply_and_verify(analysis: Analysis, model: torch.nn.Module, example_inputs: tuple,
                     planner: Planner) -> tuple[FusionPlan, VerificationResult]:
    """``analyze --apply``: the whole pipeline (:data:`APPLY_STAGES`) from the analysis's decisions (its live
    timings, or its profile's entries); the verification (with the plan) is put on ``analysis.verification``."""
    run = run_stages(Run(model, tuple(example_inputs), analysis), planner, APPLY_STAGES)
    return run.plan, run.verification


def apply_and_verify_dynamic(model: torch.nn.Module, example_inputs: tuple, planner: Planner, dynamic,
                             analyze_at: Callable[[tuple], Analysis]
                             ) -> tuple[FusionPlan, VerificationResult, Analysis]:
    """``analyze --apply --dynamic``: :data:`PLAN_STAGES` at each bucket of the range from ``analyze_at(inputs)``'s
    decisions, one plan of the symbolic capture kept where every bucket keeps it (:mod:`fxfusion.planning.dynamic`),
    verified end to end at each bucket and against float64 at a shape never measured
    (:mod:`fxfusion.planning.dynamic_verify`).  Returns the plan, the middle bucket's verification carrying the
    range's verdict, and the middle bucket's analysis with the verification, the plan and the ``dynamic`` section."""
    analyses: list[Analysis] = []

    def plan_at(inputs: tuple, sizes: dict) -> FusionPlan:
        analyses.append(analyze_at(inputs))
        return run_stages(Run(model, tuple(inputs), analyses[-1]), planner, PLAN_STAGES).plan

    made = plan_over_range(model, example_inputs, dynamic, plan_at, planner.device)

    def verify_at(inputs: tuple) -> VerificationResult:
        return verify_plan(model, inputs, made, device=planner.device, spec=planner.specs.verify, clock=planner.clock,
                           candidates=planner.candidates, compile_fn=planner.compile)

    verification, section = verify_over_range(model, example_inputs, made, verify_at, str(planner.device))
    middle = analyses[len(analyses) // 2]
    middle.verification = {**verification.to_dict(), "plan": made.to_dict(), "dynamic": section}
    return made, verification, middle


def note_in_model(result: Analysis, plan: FusionPlan) -> None:
    """Say on each site what the model decided where it overrode the library (a written-out activation)."""
    groups = {g.id: g for g in plan.groups}
    refused = {r.site_id: r for r in plan.refused}
    for o in result.outcomes:
        g, r = groups.get(o.site.id), refused.get(o.site.id)
        if g is not None and g.decided_in_model:
            im = g.regions[Context.EAGER]
            o.warnings.append(f"fused by --apply all the same: inside the model {g.variant} runs the region "
                              f"{im.speedup:.2f}x [{im.speedup_ci_low:.2f}, {im.speedup_ci_high:.2f}] "
                              "(the library measures a written-out activation as one op)")
        elif r is not None and any(x.startswith("inside the model") for x in r.reasons):
            o.warnings.append(next(x for x in r.reasons if x.startswith("inside the model")))


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
