"""In-model savings: each fusion group's region of the captured graph, timed as it runs inside the model.

The pattern library (``calibrate``, or a live ``measure_entry``) times a pattern's variants as standalone calls --
``F.conv2d`` + ``F.batch_norm`` + ``F.relu`` against the fused call, each alone on an idle GPU with the L2 flushed --
and that decides which variant wins.  As an estimate of what the rewrite saves *inside the model* it can be far off
(the measured misses are in docs/results.md, "Figures from the code's docstrings"), for three reasons:

  1. inside a forward pass the host launches the next op while the GPU runs this one, so a small op costs about
     max(host time, device time), not host + device as an isolated call does;
  2. the captured graph calls aten overloads, whose per-call cost is not that of ``F.*``;
  3. a rewrite can make ops outside the site dead: SDPA with ``is_causal`` drops the mask built from a buffer.

Method (:func:`measure_in_model`), per group, largest library saving first, within ``INSITU_BUDGET_S`` (the
region functions named below live in :mod:`fxfusion.planning.regions`):

  1. the *region*: the group's nodes, the nodes its rewrite erases with them (found by rewriting a copy of the
     site's neighbourhood, :func:`region_nodes`) and the layout ops right after its output, whose cost the rewrite
     can change (SDPA's output makes ``transpose(1, 2).contiguous()`` copy nothing);
  2. the region is cut out (:func:`cut_region`), fed the real values its inputs take when the model runs on the
     example inputs, rewritten by the very rule :func:`fxfusion.planning.rewrite.apply` uses, and both made lean as the planned
     model is (:func:`fxfusion.graph.lean.lean`);
  3. captured region, rewritten region and the whole original model are timed interleaved (on CUDA back to back,
     ``CudaClock("pipelined")``), again while the saving's interval is too wide (``measure_tight``);
  4. a region that is the same work as one already timed -- a repeated block: the same ops on inputs and constants
     of the same shapes, strides and dtypes, rewritten to the same ops (:func:`region_key`) -- takes that timing
     instead of its own, saying whose (``same_as``), and costs no budget: a ResNet's or a transformer's repeated
     layers are timed once;
  5. the result (:class:`~fxfusion.planning.prediction.RegionTiming`): the saving in ms (difference of medians, bootstrap interval), the saving as a
     fraction of the model's time paired per round (robust to a host whose speed drifts), and the region's speedup
     with the verdict the usual rule gives it -- ``neutral`` with the reason in ``noisy`` when that verdict is not
     stable (:func:`fxfusion.measure.noise.instability`: the halves of the rounds disagree, or the fastest samples
     contradict the medians), so a plan neither admits nor refuses a group on a timing that would flip.

The plan's prediction is the sum over groups less the captured graph's own overhead (:func:`measure_overhead`, also
here), and ``analyze --apply`` checks it against the whole model.  Cost: one trial rewrite of a neighbourhood of at
most FEEDER_LIMIT nodes per group, one run of the model to record the regions' inputs, and about
``INSITU_SPEC.budget_s`` of timing per batch (what that costs on a large graph: ``benchmarks/bench_insitu_cost.py``,
its run in docs/results.md).  What stays unmodelled is interaction between
regions (caches, overlap across them); with a deterministic clock the prediction is exact (tests/test_insitu.py).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxfusion.calibration.variants import compile_limits
from fxfusion.graph.lean import lean
from fxfusion.measure.devices import as_device
from fxfusion.graph.runnable import runnable_graph
from fxfusion.planning.regions import (RegionError, channels_last_copy, channels_last_value, cut_region, region_key,
                                       region_nodes)
from fxfusion.planning.prediction import Context, RegionTiming
from fxfusion.planning.rewrite import captured_module, rewrite_group
from fxfusion.measure.noise import instability
from fxfusion.measure.stats import NEUTRAL, difference, paired_fraction, speedup, summarize
from fxfusion.measure.timing import Clock, TimingSpec, clock_for, measure_tight

# Per group: enough rounds for a few-microsecond difference, little enough to keep planning quick.
INSITU_SPEC = TimingSpec(rounds=40, warmup=3, target_sample_s=0.002, budget_s=2.0)
# All regions of one plan together: past this, the remaining (smaller) groups keep the library's prediction.
INSITU_BUDGET_S = 120.0
# A region's saving is measured again (up to BATCHES batches in all) while its 95% interval is wider than WIDE x the
# saving itself; the narrowest batch is kept (see _tightest).
WIDE, BATCHES = 0.5, 3


def model_clock(device: str) -> Clock:
    """The clock for times that are compared with a whole forward pass: pipelined on CUDA (see module doc)."""
    return clock_for(device, "pipelined")


def clock_name(clock: Clock) -> str:
    """How a timing says which clock took it: its regime on CUDA, else its device."""
    return getattr(clock, "mode", str(clock.device))


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps the values of the named nodes."""

    def __init__(self, gm: fx.GraphModule, keep: set[str]) -> None:
        super().__init__(gm)
        self.keep, self.values = keep, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.keep:
            self.values[n.name] = out
        return out


def measure_in_model(groups: list, captured, model: torch.nn.Module, example_inputs: tuple, device: str = "cpu",
                     spec: TimingSpec | None = None, clock: Clock | None = None,
                     budget_s: float = INSITU_BUDGET_S,
                     context: Context = Context.EAGER) -> dict[str, RegionTiming | str]:
    """Time the region of each of ``groups`` (FusionGroups of the ``captured`` model) captured vs rewritten; returns
    group id -> :class:`RegionTiming`, or the reason (str) the region could not be timed on its own.  Regions are timed
    largest library saving first, until ``budget_s`` (compiling included) is spent; the rest keep the library's
    prediction (their reason says so).

    ``context``: eager, or compiled -- both forms of the region run through torch.compile (Inductor), the regime of the
    planned + compile candidate, where a rewrite competes with Inductor's own fusion of the same ops rather than with
    eager -- and in channels-last the regions' 4-D inputs and constants in that layout, as they run in the planned +
    channels-last + compile candidate (:class:`fxfusion.planning.candidates.ChannelsLast`)."""
    device = as_device(device)
    compiled, channels_last = context.compiled, context is Context.COMPILED_CHANNELS_LAST
    spec, clock = spec or INSITU_SPEC, clock or model_clock(device)
    out: dict[str, RegionTiming | str] = {}
    everything = sorted(groups, key=lambda g: -(g.predicted_saving_ms or 0.0))
    start = clock.now()
    timed: dict[str, str] = {}  # region_key -> the group whose region was timed with it
    for index in sorted({g.graph_index for g in everything}):
        in_graph = [g for g in everything if g.graph_index == index]
        gm = runnable_graph(captured, index, model)
        if gm is None or index >= len(captured.graph_inputs):
            out.update({g.id: f"subgraph {index} cannot be run on its own" for g in in_graph})
            continue
        regions = {}
        position = {n: i for i, n in enumerate(gm.graph.nodes)}
        by_name = {n.name: n for n in position}
        for g in in_graph:
            try:
                nodes, released = region_nodes(gm, g, position, by_name)
                regions[g.id] = (g, nodes, released, *cut_region(gm, nodes))
            except (RegionError, RuntimeError, ValueError) as exc:
                out[g.id] = str(exc)
        if not regions:
            continue
        recorder = _Recorder(gm, {name for *_, names in regions.values() for name in names})
        with torch.no_grad():
            recorder.run(*captured.graph_inputs[index])
        for gid, (g, nodes, released, region, names) in regions.items():
            rewritten = copy.deepcopy(region)
            record = rewrite_group(rewritten, g)
            if not record.applied:
                out[gid] = f"the rewrite does not apply to the region alone: {record.detail}"
                continue
            region, rewritten = lean(region), lean(rewritten)  # as the planned model calls them
            args = tuple(recorder.values[n] for n in names)
            key = region_key(region, rewritten, args)
            if key is not None and key in timed:  # a repeated block: its twin's timing is this region's
                out[gid] = dataclasses.replace(out[timed[key]], nodes=list(g.nodes), released=released,
                                               same_as=timed[key])
                continue
            if clock.now() - start > budget_s:
                out[gid] = (f"the in-model timing budget ({budget_s:.0f} s, fxfusion.planning.insitu.INSITU_BUDGET_S) was "
                            "spent on groups with larger savings")
                continue
            if compiled and channels_last:
                region, rewritten = channels_last_copy(region), channels_last_copy(rewritten)
                args = tuple(channels_last_value(a) for a in args)
            if compiled:
                try:
                    region, rewritten = _compiled(region, args), _compiled(rewritten, args)
                except Exception as exc:  # a region Inductor cannot compile keeps the eager-regime prediction
                    out[gid] = f"the region does not compile on its own: {type(exc).__name__}: {str(exc)[:160]}"
                    continue
            thunks = {"captured": lambda r=region: r(*args), "rewritten": lambda r=rewritten: r(*args),
                      "model": lambda: model(*example_inputs)}
            samples, f, batches = _tightest(thunks, clock, spec)
            base, cand = samples.seconds["captured"], samples.seconds["rewritten"]
            d, sp = difference(base, cand), speedup(base, cand)
            unstable = "; ".join(instability(base, cand))
            out[gid] = RegionTiming(captured_ms=summarize(base).median * 1e3,
                                    rewritten_ms=summarize(cand).median * 1e3, saving_ms=d.median * 1e3,
                                    ci_low_ms=d.ci_low * 1e3, ci_high_ms=d.ci_high * 1e3,
                                    nodes=list(g.nodes), released=released, clock=clock_name(clock),
                                    batches=batches, fraction=f.median, fraction_ci_low=f.ci_low,
                                    fraction_ci_high=f.ci_high,
                                    model_ms=summarize(samples.seconds["model"]).median * 1e3, speedup=sp.median,
                                    speedup_ci_low=sp.ci_low, speedup_ci_high=sp.ci_high,
                                    verdict=NEUTRAL if unstable else sp.verdict(),
                                    regime="compiled" if compiled else "eager", noisy=unstable or None)
            if key is not None:
                timed[key] = gid
    return out


def _compiled(region: fx.GraphModule, args: tuple):
    """The region through torch.compile, compiled (and warmed) on its recorded inputs."""
    fn = torch.compile(region, dynamic=False)
    with torch.no_grad(), compile_limits():
        for _ in range(3):
            fn(*args)
    return fn


def _tightest(thunks, clock: Clock, spec: TimingSpec):
    """Region captured / rewritten and the whole model, interleaved, measured again while the saving's interval (as a
    fraction of the model, paired per round) is wider than ``WIDE`` x the saving (:func:`measure_tight`)."""
    def interval(samples):
        s = samples.seconds
        return paired_fraction(s["captured"], s["rewritten"], s["model"])

    with torch.no_grad():
        return measure_tight(thunks, clock, spec, interval,
                             lambda f: f.ci_high - f.ci_low > WIDE * abs(f.median), BATCHES)


# -- what running the captured graph costs over the model -------------------------------------------------------------

# Enough rounds to see a 10 us difference on a 2-core CPU, little enough to keep planning quick.
OVERHEAD_SPEC_ROUNDS, OVERHEAD_SPEC_BUDGET_S = 30, 3.0
OVERHEAD_WIDE = 0.10  # an overhead interval wider than 10% of the model's time is measured again


@dataclass(frozen=True)
class Overhead:
    """What running the captured graph costs over the original model per forward, with a 95% interval (ms)."""

    ms: float
    ci_low_ms: float
    ci_high_ms: float
    eager_ms: float | None = None  # the original model's median in the same measurement
    fraction: float | None = None  # (captured - original) / original, paired per round (stats.paired_fraction)
    # Why the estimate cannot be right (see implausible()), after measuring again; None: plausible.  A plan never
    # refuses on a noisy overhead (FusionPlan.require_saving_over).
    noisy: str | None = None


def implausible(o: Overhead) -> str | None:
    """Why an overhead estimate cannot be right, or None.  The captured graph runs the model's own ops, so its cost
    over the model is a fraction of the model's time: an interval reaching above the whole forward pass, below minus
    it (the graph taking negative time), or wider than it, says the host stalled during the measurement -- the
    2026-12-07 runs of issue 26 refused every group on "-100.8 ms, 95% CI up to 220 ms"."""
    if o.eager_ms is None or o.eager_ms <= 0:
        return None
    span = f"{o.ms:.4g} ms, 95% CI [{o.ci_low_ms:.4g}, {o.ci_high_ms:.4g}], for a {o.eager_ms:.4g} ms forward pass"
    if o.ci_high_ms > o.eager_ms:
        return f"its interval reaches above the model's whole forward pass ({span})"
    if o.ci_low_ms < -o.eager_ms:
        return f"its interval reaches below minus the model's forward pass ({span})"
    if o.ci_high_ms - o.ci_low_ms > o.eager_ms:
        return f"its interval is wider than the model's forward pass ({span})"
    return None


def measure_overhead(model: torch.nn.Module, captured, example_inputs: tuple, device: str = "cpu",
                     spec=None, clock=None) -> Overhead:
    """Time the original model and the captured graph (unrewritten) interleaved; their difference, signed.  An
    implausible estimate (:func:`implausible`) is measured again once; if it stays so, it comes back with ``noisy``
    saying why."""
    device = as_device(device)

    spec = spec or TimingSpec(rounds=OVERHEAD_SPEC_ROUNDS, warmup=2, target_sample_s=0.005,
                              budget_s=OVERHEAD_SPEC_BUDGET_S)
    clock = clock or model_clock(device)
    graph = captured_module(model, captured)

    def fraction(samples):  # (captured - eager) / eager, per round
        return paired_fraction(samples.seconds["captured"], samples.seconds["eager"], samples.seconds["eager"])

    def once() -> Overhead:
        with torch.no_grad():  # measured again while the interval spans more than OVERHEAD_WIDE of the model's time
            samples, f, _ = measure_tight({"eager": lambda: model(*example_inputs),
                                           "captured": lambda: graph(*example_inputs)}, clock, spec, fraction,
                                          lambda f: f.ci_high - f.ci_low > OVERHEAD_WIDE)
        eager_ms = summarize(samples.seconds["eager"]).median * 1e3
        return Overhead(eager_ms * f.median, eager_ms * f.ci_low, eager_ms * f.ci_high, eager_ms, f.median)

    first = once()
    if implausible(first) is None:
        return first
    again = once()
    why = implausible(again)
    return again if why is None else dataclasses.replace(again, noisy=f"{why}; measured twice")
