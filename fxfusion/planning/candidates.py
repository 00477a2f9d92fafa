"""Candidates: the models a user could run instead of the original, and the choice among them.

  eager              the user's module as it is
  compile[+config]   ``torch.compile(model)`` of the user's original module in each compile configuration
                     (:mod:`fxfusion.planning.configs`: default, freezing, CUDA graphs, both; ``--compile-modes``)
  channels_last+compile
                     a model with 2-D convolutions, its weights and 4-D inputs in channels-last (NHWC) layout, through
                     ``torch.compile``: the layout decision for the whole model (:class:`ChannelsLast`)
  planned            the plan's rewrites, the rest eager (:func:`fxfusion.planning.apply.apply`)
  captured+compile   the captured graph, not rewritten, compiled by Inductor: what capturing alone gives (an exported,
                     lean graph carries fewer of Dynamo's guards than a library's module); the control that says how
                     much of planned+compile's gain over compile the rewrites make
  planned+compile[+config]
                     the rewritten graph compiled by Inductor, the rewrites kept: Inductor fuses what the plan left,
                     the plan does what Inductor does not (attention from eager idioms, sibling GEMMs, folded BN);
                     in the default configuration and in the best whole-model one (:mod:`fxfusion.planning.search`)
  planned+channels_last+compile
                     a model with 2-D convolutions: the rewritten graph in channels-last layout, compiled (the
                     rewrites and the layout decision together)

:func:`fxfusion.planning.search.build_candidates` builds them (a copy of the module each, so two configurations
never share Dynamo's cache entry), :func:`fxfusion.planning.verify.verify_plan` checks every one's outputs against the
float64 reference and times them end to end in one interleaved run (pipelined on CUDA).  The baseline is what a user
would get by writing it themselves (:func:`compile_model`): the same module, dtype, device and inputs; Dynamo's caches reset first, so an
earlier capture or compile of the same code takes no cache entry or recompile slot from it (a full cache makes Dynamo
run the model eager, silently); warmed until a call compiles nothing new; the Inductor cache state recorded.

The choice (:func:`choose`): among the candidates whose outputs verify, the fastest median; a candidate gives way to a
simpler one (eager < compile < channels_last+compile < planned < captured+compile < planned+compile <
planned+channels_last+compile, and within each the default configuration < freezing < CUDA graphs < both) when it is
less than ``MIN_EFFECT`` faster than it, so the chosen one is never slower than 0.98x the fastest, and never slower
than the fastest of eager and the whole-model configurations beyond the noise.  Each compiled candidate carries its break-even: compile seconds / saving per call.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fxfusion.calibration.variants import compile_limits, first_call, one_line
from fxfusion.errors import FxFusionError
from fxfusion.measure.stats import MIN_EFFECT, Speedup, speedup, summarize
from fxfusion.planning.configs import CONFIGS, CompileConfig, Spec, default_configs, parse_configs
from fxfusion.planning.prediction import Context, Prediction, Source
from fxfusion.planning.rewrite import copy_model

PLANNED, CAPTURED_COMPILE, PLANNED_COMPILE = "planned", "captured+compile", "planned+compile"
CHANNELS_LAST_COMPILE, PLANNED_CHANNELS_LAST_COMPILE = "channels_last+compile", "planned+channels_last+compile"
# Simpler first: the order in which a candidate that is not faster beyond MIN_EFFECT gives way -- by what it is (its
# name in the default configuration), then by its configuration (CONFIGS' order: default, freezing, CUDA graphs, ...).
SIMPLICITY = ("eager", "compile", CHANNELS_LAST_COMPILE, PLANNED, CAPTURED_COMPILE, PLANNED_COMPILE,
              PLANNED_CHANNELS_LAST_COMPILE)
# Calls after the first before a compiled candidate is timed: guards settle, lazy recompiles happen now, not while
# timing (a recompile inside the timed rounds would be charged to the candidate).
WARM_CALLS = 3


# The candidates beyond eager, whole-model compile and planned, which `--candidates` may leave out (each is one more
# compile of the whole model).
OPTIONAL = (CHANNELS_LAST_COMPILE, CAPTURED_COMPILE, PLANNED_COMPILE, PLANNED_CHANNELS_LAST_COMPILE)


# The context each rewritten candidate runs its rewrites in (fxfusion.planning.prediction.Context).
CONTEXT = {PLANNED: Context.EAGER, PLANNED_COMPILE: Context.COMPILED,
           PLANNED_CHANNELS_LAST_COMPILE: Context.COMPILED_CHANNELS_LAST}


@dataclass(frozen=True)
class CandidateSet:
    """The candidates to build and time beside eager and planned (always): whole-model ``torch.compile`` in each of
    the compile configurations ``configs`` (:data:`fxfusion.planning.configs.CONFIGS` words; None: the defaults for
    the device, ``configs.default_configs``; empty: none), the ``optional`` ones of :data:`OPTIONAL`, and the rewrites
    in the best whole-model configuration (:func:`fxfusion.planning.verify.build_candidates` searches them).
    ``captured`` also times the captured graph unrewritten (not a candidate: it shows what capturing costs); ``fresh``
    resets Dynamo's compiled state first, as a new process would start, so earlier compiles of the same code cannot
    fill its cache and make a compiled candidate silently run eager."""

    configs: tuple[str, ...] | None = None
    optional: tuple[str, ...] = OPTIONAL
    captured: bool = True
    fresh: bool = True

    @classmethod
    def uncompiled(cls, captured: bool = True) -> "CandidateSet":
        """Eager and planned only (and the captured graph): nothing compiles."""
        return cls(configs=(), optional=(), captured=captured)

    @property
    def compiles(self) -> bool:
        return bool(self.configs is None or self.configs or self.optional)

    def config_words(self, cuda: bool) -> tuple[str, ...]:
        """The whole-model configurations to try on this device (CUDA-only ones dropped on a CPU)."""
        words = default_configs(cuda) if self.configs is None else self.configs
        return tuple(w for w in words if cuda or not CONFIGS[w].cuda_only)

    def planned_compiled(self) -> tuple[str, ...]:
        """The planned candidates asked for that compile (they need the compiled regime's timings)."""
        return tuple(n for n in (PLANNED_COMPILE, PLANNED_CHANNELS_LAST_COMPILE) if n in self.optional)


def parse_candidates(spec: str | None) -> tuple[str, ...]:
    """``--candidates``: 'all' (the default), 'none', or a comma list of :data:`OPTIONAL`; one clear error else."""
    words = tuple(w.strip() for w in (spec or "all").split(",") if w.strip())
    if words in (("all",), ()):
        return OPTIONAL
    if words == ("none",):
        return ()
    unknown = [w for w in words if w not in OPTIONAL]
    if unknown:
        raise FxFusionError(f"unknown --candidates {', '.join(unknown)}; choose all, none or from {', '.join(OPTIONAL)} "
                            "(eager, compile and planned are always timed)")
    return words


def parse_compile_modes(spec: str | None, cuda: bool = True) -> tuple[str, ...]:
    """``--compile-modes``: the compile configurations to try (:func:`fxfusion.planning.configs.parse_configs`)."""
    return parse_configs(spec, cuda)


class ChannelsLast(nn.Module):
    """A copy of ``model`` with its 4-D weights in channels-last (NHWC) layout, converting its 4-D tensor inputs on
    every call (so the conversion's cost is in the timing): the layout cuDNN's and Inductor's convolutions prefer.
    The user's model is not touched."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = copy_model(model).to(memory_format=torch.channels_last)

    def forward(self, *args):
        return self.inner(*(a.contiguous(memory_format=torch.channels_last)
                            if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args))


def has_conv2d(model: nn.Module) -> bool:
    """Whether a layout decision applies: the model has a 2-D convolution."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def simplicity(name: str) -> tuple[int, int]:
    """(what it is, its configuration): smaller is simpler."""
    try:
        spec = Spec.parse(name)
    except FxFusionError:
        return len(SIMPLICITY), 0
    plain = spec.with_config(CONFIGS["default"]).name if spec.config is not None else spec.name
    return (SIMPLICITY.index(plain) if plain in SIMPLICITY else len(SIMPLICITY),
            list(CONFIGS).index(spec.config.word) if spec.config is not None else 0)


def whole_model(name: str) -> bool:
    """A candidate a user gets without fxfusion: the module as it is, eager or compiled in some configuration."""
    try:
        spec = Spec.parse(name)
    except FxFusionError:
        return False
    return not spec.rewrites and not spec.captured


def inductor_counters() -> dict[str, int]:
    """Dynamo's and Inductor's counters that say whether a compile ran, hit the FX-graph cache or fell back."""
    from torch._dynamo.utils import counters

    return {"fxgraph_cache_hit": int(counters["inductor"].get("fxgraph_cache_hit", 0)),
            "fxgraph_cache_miss": int(counters["inductor"].get("fxgraph_cache_miss", 0)),
            "frames_ok": int(counters["frames"].get("ok", 0)),
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0))}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


@dataclass
class Built:
    """A candidate ready to time: its callable, or why there is none."""

    name: str
    run: Callable[[], Any] | None
    status: str = "ok"  # ok | failed | skipped
    reason: str | None = None
    setup_s: float | None = None  # compile + first call (what a user pays once)
    cache: dict[str, int] = field(default_factory=dict)  # the counters' change while it compiled
    kept: dict[str, Any] | None = None  # planned+compile: did Inductor keep the rewrites?


class _PostGradOps:
    """Records the ops of the graph Inductor is about to generate code for (its post-grad graph), so that one can
    check it kept the plan's rewrites: the SDPA calls, the GEMM count."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.ops += [str(n.target) for n in graph.nodes if n.op == "call_function"]

    def uuid(self) -> str:  # the CustomGraphPass protocol: a constant id keeps Inductor's cache usable
        return "fxfusion-post-grad-ops-v1"


def _post_grad_recorder() -> _PostGradOps:
    try:
        from torch._inductor.custom_graph_pass import CustomGraphPass

        class Recorder(_PostGradOps, CustomGraphPass):
            pass

        return Recorder()
    except ImportError:  # an older torch: a plain callable (it makes that compile skip the FX-graph cache)
        return _PostGradOps()


SDPA, GEMMS = "scaled_dot_product", ("aten.mm", "aten.addmm", "aten.bmm", "aten._addmm_activation")


def count_ops(ops: list[str]) -> dict[str, int]:
    return {"sdpa": sum(SDPA in o for o in ops), "gemm": sum(o.startswith(GEMMS) for o in ops)}


def _first_and_warm(run: Callable[[], Any], device) -> float:
    with torch.no_grad(), compile_limits():
        seconds = first_call(run, device)
        for _ in range(WARM_CALLS):
            run()
    return seconds


def compile_model(name: str, module: nn.Module, inputs: tuple, device, config: CompileConfig | str | None,
                  record_post_grad: bool = False) -> Built:
    """``torch.compile(module)`` in ``config`` (a CompileConfig, or a torch.compile mode: None is the default),
    compiled and warmed on ``inputs`` under no_grad and the configuration's Inductor options; failures are data, not
    exceptions."""
    config = config if isinstance(config, CompileConfig) else CompileConfig(config or "default", mode=config)
    before = inductor_counters()
    recorder = _post_grad_recorder() if record_post_grad else None
    try:
        compiled = config.compile(module)
        run = lambda: compiled(*inputs)  # noqa: E731
        with config.patch(), (torch._inductor.config.patch(post_grad_custom_post_pass=recorder)
                              if recorder is not None else contextlib.nullcontext()):
            seconds = _first_and_warm(run, device)
    except Exception as exc:  # a compile that fails is reported on the candidate, never raised
        return Built(name, None, "failed", one_line(exc), cache=_delta(before, inductor_counters()))
    built = Built(name, run, setup_s=seconds, cache=_delta(before, inductor_counters()))
    if recorder is not None:
        built.kept = count_ops(recorder.ops)
    return built


def reset_compiled_state() -> None:
    """Forget Dynamo's compiled frames and guards, so the candidates compiled next start as a user's would."""
    torch._dynamo.reset()


@dataclass
class Choice:
    chosen: str
    why: str
    candidates: list[dict[str, Any]]  # one row per candidate: name, status, median, speedup over eager, ...
    best_baseline: str | None = None  # the fastest of eager and the whole-model configurations
    not_tried: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not built (planning.search)
    explanation: list[str] = field(default_factory=list)  # where the time went, a line a step (planning.explain)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(name: str, timing, verified: bool | None, built: Built | None, eager_ms: float | None) -> dict[str, Any]:
    row = {"name": name, "config": _words(name),
           "status": timing.status if timing else (built.status if built else "skipped"),
           "reason": (timing.reason if timing else None) or (built.reason if built else None),
           "verified": verified, "median_ms": timing.median_ms if timing else None,
           "speedup": timing.speedup if timing else None, "setup_s": built.setup_s if built else None,
           "break_even_calls": None, "inductor": built.cache if built else {}, "kept": built.kept if built else None,
           "floor_ms": summarize(timing.samples_ms).floor if timing and timing.samples_ms else None}
    if built and built.setup_s is not None and eager_ms and row["median_ms"] is not None:
        saving = eager_ms - row["median_ms"]
        row["break_even_calls"] = (built.setup_s * 1e3 / saving) if saving > 0 else None
    return row


def _words(name: str) -> str:
    try:
        return Spec.parse(name).words()
    except FxFusionError:
        return ""


def choose(timings: dict, verified: dict[str, bool], built: dict[str, Built]) -> Choice:
    """The candidate to hand back (module doc).  ``timings``: name -> verify.Timing with raw samples."""
    eager = timings.get("eager")
    eager_ms = eager.median_ms if eager else None
    rows = [_row(name, t, verified.get(name), built.get(name), eager_ms) for name, t in timings.items()]
    ok = {n: t for n, t in timings.items() if t.status == "ok" and t.samples_ms and verified.get(n, False)}
    if not ok:
        return Choice("eager", "no candidate could be timed with verified outputs: the original model is kept", rows)
    baselines = [n for n in ok if whole_model(n)]  # what a user gets by trying compile's options
    best_baseline = min(baselines, key=lambda n: ok[n].median_ms) if baselines else None
    fastest = min(ok, key=lambda n: ok[n].median_ms)
    chosen = fastest
    for simpler in sorted(ok, key=simplicity):
        if simplicity(simpler) >= simplicity(chosen):
            break
        gain: Speedup = speedup(ok[simpler].samples_ms, ok[chosen].samples_ms)
        if gain.median < 1.0 + MIN_EFFECT:
            chosen = simpler
            break
    against = best_baseline if best_baseline and best_baseline != chosen else None
    if against:
        s = speedup(ok[against].samples_ms, ok[chosen].samples_ms)
        why = (f"{chosen} is the fastest verified candidate: {s.text()} of {against}, the fastest of eager and the "
               f"whole-model compile configurations")
    else:
        others = [n for n in ok if n != chosen]
        why = (f"{chosen} is the fastest verified candidate" if chosen == fastest else
               f"{chosen}: {fastest} is less than {MIN_EFFECT:.0%} faster than it, so the simpler one is kept")
        if whole_model(chosen) and others:
            why += "; nothing the plan made beats it"
    if chosen != fastest and against:
        why += f" ({fastest} is less than {MIN_EFFECT:.0%} faster, so the simpler one is kept)"
    return Choice(chosen, why, rows, best_baseline)


def attach_predictions(choice: Choice, predictions: dict[str, Prediction | None], fallback: set[str] = frozenset()) \
        -> None:
    """Each rewritten candidate's predicted saving beside the one measured, on its row (``row["prediction"]``), from
    ``predictions`` (candidate name -> :class:`~fxfusion.planning.prediction.Prediction`, made by
    :func:`fxfusion.planning.prediction.predict`): planned over eager; planned + compile over captured + compile where
    that was timed, else over whole-model compile (over captured + compile the measured saving is the rewrites' alone:
    what compiling the captured graph instead of the module gives is that candidate's own gain, which no group
    predicts); planned + channels-last + compile over channels-last + compile.  A candidate in ``fallback`` is
    predicted from another context's timings (channels-last from the model's own layout, an approximation the row
    says: ``layout``).  The row carries the prediction's basis, its fraction where it has one (of the base's median in
    this run), whether the base ran at the speed it was predicted at (``comparable``), and the same fractions from each
    side's fastest rounds (``predicted_floor_fraction``, ``measured_floor_fraction``, ``floor_error_pct``): on a host
    that switches between two speeds, a model made fast enough to be host-bound reads bimodal while its base does not
    (GPT-2 on the H200, 2026-12-01 08:43 UTC: the candidate 0.73-0.78 ms in most rounds, 1.0-1.5 ms in 9 of 30, the
    base 1.10-1.15 ms throughout), and the medians then mix the phases; the 10th percentiles compare the fast phase
    on both sides."""
    by = {r["name"]: r for r in choice.candidates}
    compiled_base = CAPTURED_COMPILE if (by.get(CAPTURED_COMPILE) or {}).get("median_ms") is not None else "compile"
    for name, over in ((PLANNED, "eager"), (PLANNED_COMPILE, compiled_base),
                       (PLANNED_CHANNELS_LAST_COMPILE, CHANNELS_LAST_COMPILE)):
        row, base, how = by.get(name), by.get(over), predictions.get(name)
        if row is None or base is None or row.get("median_ms") is None or base.get("median_ms") is None:
            continue
        measured = base["median_ms"] - row["median_ms"]
        predicted = how.ms(base["median_ms"]) if how is not None else None
        error = None if predicted is None or measured == 0 else 100.0 * (predicted - measured) / abs(measured)
        row["prediction"] = {"over": over, "predicted_saving_ms": predicted, "measured_saving_ms": measured,
                             "error_pct": error}
        if name == PLANNED_CHANNELS_LAST_COMPILE and how is not None:
            row["prediction"]["layout"] = "model layout" if name in fallback else "channels_last"
        if how is None or (name == PLANNED and how.sources != {Source.CLASS}):
            continue  # planned from regions or the library: the verification's own lines say how
        row["prediction"].update(basis=how.basis, predicted_fraction=how.fraction,
                                 measured_fraction=measured / base["median_ms"], base_ms_predicted=how.base_ms,
                                 comparable=how.comparable(base["median_ms"]), base_ms=base["median_ms"])
        if how.floor_fraction is not None and row.get("floor_ms") and base.get("floor_ms"):
            floor = (base["floor_ms"] - row["floor_ms"]) / base["floor_ms"]
            row["prediction"].update(predicted_floor_fraction=how.floor_fraction, measured_floor_fraction=floor,
                                     floor_error_pct=None if floor == 0 else
                                     100.0 * (how.floor_fraction - floor) / abs(floor))
    _carry_to_configs(by, predictions)


def _carry_to_configs(by: dict[str, dict], predictions: dict[str, Prediction | None]) -> None:
    """The rewrites tried in another configuration (planned + compile + cudagraphs, ...) predicted from the default
    configuration's classes: the fraction of the model they saved there, carried to the same configuration's whole
    model (``carried_from`` says so).  The classes are measured in default compile only (one compile per class); a
    configuration that removes the host's share (CUDA graphs) changes what a rewrite saves of the whole, so this is
    an approximation the row names, and its error says how good."""
    for name, row in by.items():
        try:
            spec = Spec.parse(name)
        except FxFusionError:
            continue
        if not spec.rewrites or spec.config is None or spec.config.word == "default" or row.get("median_ms") is None:
            continue
        home = spec.with_config(CONFIGS["default"]).name
        how, base = predictions.get(home), by.get(Spec(channels_last=spec.channels_last, config=spec.config).name)
        if how is None or how.fraction is None or base is None or base.get("median_ms") is None:
            continue
        measured = base["median_ms"] - row["median_ms"]
        predicted = how.fraction * base["median_ms"]
        row["prediction"] = {
            "over": base["name"], "predicted_saving_ms": predicted, "measured_saving_ms": measured,
            "error_pct": None if measured == 0 else 100.0 * (predicted - measured) / abs(measured),
            "basis": how.basis, "carried_from": home, "predicted_fraction": how.fraction,
            "measured_fraction": measured / base["median_ms"], "base_ms": base["median_ms"],
            "base_ms_predicted": how.base_ms}
        # the fraction was measured on the default configuration's base: comparable when that ran at its speed here
        home_base = (by.get(Spec(channels_last=spec.channels_last, config=CONFIGS["default"]).name) or {}).get(
            "median_ms")
        if home_base is not None:
            row["prediction"].update(comparable=how.comparable(home_base), home_base_ms=home_base)
