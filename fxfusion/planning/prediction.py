"""What a rewrite is predicted to save, and the evidence it rests on: one typed value for every stage and report.

A group's saving is measured in up to three ways, each a *source* (:class:`Source`):

  library   the pattern library's standalone timing of the site's variants (a profile entry, or measured live);
  region    the group's region cut out of the captured graph and timed with the values it takes in the model
            (:mod:`fxfusion.planning.insitu`; a :class:`RegionTiming`);
  class     the group's class of rewrites (same pattern and variant) applied alone to the whole model, timed against
            the model without it (:mod:`fxfusion.planning.incontext`; a :class:`ClassTiming`, one equal share a group).

and in the *context* (:class:`Context`) a candidate runs the rest of the model in: eager (``planned``), compiled by
Inductor (``planned+compile``), compiled in channels-last layout (``planned+channels_last+compile``).  A group keeps
its timings keyed by context (``FusionGroup.regions``, ``FusionGroup.classes``); :func:`predict` alone turns them into
a candidate's :class:`Prediction`, by one precedence rule:

  1. per group, its class share in the context, else its region timed in the context, else (eager only) its
     library saving;
  2. in a compiled context every term is a saving over the same compiled control, so the terms of different groups may
     come from different sources; in eager a class share is a saving over the captured graph with the capture term of
     its run, a region's over the model with the overhead measured apart, so eager takes the classes only when every
     group has one (else the regions' sum less the overhead);
  3. where every term is a class share, the prediction is also a fraction of the base's time, paired per round, and
     the same from the fastest rounds: the candidates' run turns it into ms with its own base (a host's speed drifts).

Dicts appear only at the JSON boundary (``to_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Iterable


class Context(StrEnum):
    """How the rest of the model runs around a rewrite: the regime of one candidate."""

    EAGER = "eager"  # planned: the rewrites, the rest eager
    COMPILED = "model"  # planned+compile: the whole model through Inductor, in the model's own layout
    COMPILED_CHANNELS_LAST = "channels_last"  # planned+channels_last+compile

    @property
    def compiled(self) -> bool:
        return self is not Context.EAGER


class Source(StrEnum):
    """What a saving was measured on (module doc)."""

    LIBRARY = "library"
    REGION = "region"
    CLASS = "class"


# A base this many times faster or slower than when a fraction was measured: the prediction is not comparable.
HOST_MOVED = 1.25


@dataclass
class RegionTiming:
    """One group's region timed inside the model: captured vs rewritten, per forward pass (ms)."""

    captured_ms: float
    rewritten_ms: float
    saving_ms: float  # captured - rewritten (medians)
    ci_low_ms: float  # 95% bootstrap interval of the saving
    ci_high_ms: float
    nodes: list[str]  # the region: the group's nodes ...
    released: list[str] = field(default_factory=list)  # ... and the ops outside the site that the rewrite frees
    clock: str = "cpu"
    batches: int = 1  # batches measured (the narrowest interval's is kept)
    # The saving as a fraction of the whole original model's time, paired per round (stats.paired_fraction): the
    # model is timed in the same rounds as the region, so a drift of the host's speed cancels out.
    fraction: float | None = None
    fraction_ci_low: float | None = None
    fraction_ci_high: float | None = None
    model_ms: float | None = None  # the original model's median in the same batch
    # The region's speedup rewritten over captured (ratio of medians, 95% interval) and its verdict, by the same rule
    # as every decision (stats.Speedup.verdict): what decides a site the library cannot (a written-out activation).
    speedup: float | None = None
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    verdict: str | None = None
    regime: str = "eager"  # "compiled": both forms of the region ran through torch.compile
    # Why the region's verdict is not stable (measure.noise.instability), after every batch; the verdict is then
    # neutral and nothing is decided on it -- never a flip.
    noisy: str | None = None
    # The group whose region was timed for this one: both regions run the same ops on values of the same shapes,
    # strides and dtypes, rewritten alike (regions.region_key), so one timing serves both (a model's repeated blocks).
    same_as: str | None = None

    @property
    def slower(self) -> bool:
        """Slower rewritten beyond the noise, on a stable timing."""
        return self.ci_high_ms < 0 and not self.noisy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Capture:
    """What the captured graph saves over the user's module in the same run (negative where capturing costs): the
    base of the planned and channels-last candidates is the module, not the captured graph."""

    ms: float
    ci_low_ms: float
    ci_high_ms: float
    fraction: float  # of the control's time, paired per round
    floor_fraction: float  # the same from each side's fastest rounds


@dataclass(frozen=True)
class ClassTiming:
    """A class of rewrites applied alone to the whole model, timed against the model without it (the control), in
    one context; each group of the class carries it and its equal share (``share``)."""

    groups: tuple[str, ...]  # the class's group ids
    saving_ms: float  # the class's saving: its fraction of the control's time x the control's median
    fraction: float  # of the control's time, paired per round
    ci_low_ms: float
    ci_high_ms: float
    floor_fraction: float  # from each side's fastest rounds (10th percentiles), unpaired
    control_ms: float
    applied_ms: float  # the model with this class applied, median
    setup_s: float | None  # its compile (compiled contexts) or first call (eager)
    clock: str
    rounds: int
    batches: int
    capture: Capture | None = None  # where the base is the module (eager, channels-last)

    @property
    def share(self) -> int:
        return len(self.groups)

    @property
    def faster(self) -> bool:
        """The fuse rule on the whole model: faster with the class beyond the noise."""
        return self.ci_low_ms > 0

    @property
    def slower(self) -> bool:
        """Slower with the class beyond the noise: what leaves a class out of the planned (eager) candidate."""
        return self.ci_high_ms < 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Prediction:
    """A candidate's predicted saving per forward pass over its base, in one context, and what it rests on."""

    context: Context
    saving_ms: float
    sources: frozenset[Source]
    fraction: float | None = None  # of the base's time (every term a class share)
    base_ms: float | None = None  # the base's median in the run that measured the fraction
    floor_fraction: float | None = None  # the same from each side's fastest rounds

    @property
    def basis(self) -> str:
        """In words, for the candidate table: "whole model" (every term a class share), "regions", "library" or
        "mixed"."""
        if len(self.sources) != 1:
            return "mixed"
        return {Source.CLASS: "whole model", Source.REGION: "regions", Source.LIBRARY: "library"}[
            next(iter(self.sources))]

    def comparable(self, base_ms: float) -> bool:
        """Whether a run saw the base at about the speed the fraction was measured at: a fraction holds across a
        host's drift only while the model stays as host- or device-bound as it was (GPT-2 on the H200, 2026-12-01
        08:18 UTC: the same compiled graph read 1.14 ms when predicted and 1.68 ms in the candidates' run, where the
        attention rewrite's 24% saving had shrunk to 7% behind the slow host)."""
        return self.base_ms is None or 1 / HOST_MOVED <= base_ms / self.base_ms <= HOST_MOVED

    def ms(self, base_ms: float) -> float:
        """The saving in ms against a base measured at ``base_ms``: the fraction of it, where the fraction was measured
        against a base of its own (classes); else the saving in ms (regions already scale theirs by the model's time
        in the same rounds, ``FusionPlan.measure_in_model``)."""
        return self.fraction * base_ms if self.fraction is not None and self.base_ms is not None else self.saving_ms


def _share(c: ClassTiming, key: str) -> float:
    return getattr(c, key) / c.share


def predict(groups: Iterable, context: Context, overhead_ms: float | None = None,
            overhead_fraction: float | None = None) -> Prediction | None:
    """The one precedence rule (module doc) over ``groups`` (FusionGroups: ``classes``, ``regions``,
    ``predicted_saving_ms``) in ``context``; None where some group has no term.  ``overhead_ms`` /
    ``overhead_fraction``: what the captured graph costs over the model (eager regions only)."""
    groups = list(groups)
    if not groups:
        return None
    classes = [g.classes.get(context) for g in groups]
    if all(classes):
        return _from_classes(groups, classes, context)
    if context is Context.EAGER:  # rule 2: no mixing in eager
        savings = [g.predicted_saving_ms for g in groups]
        if any(s is None for s in savings):
            return None
        sources = frozenset(Source.REGION if Context.EAGER in g.regions else Source.LIBRARY for g in groups)
        fractions = [r.fraction if (r := g.regions.get(Context.EAGER)) else None for g in groups]
        fraction = (sum(fractions) - overhead_fraction
                    if overhead_fraction is not None and all(f is not None for f in fractions) else None)
        return Prediction(context, sum(savings) - (overhead_ms or 0.0), sources, fraction)
    regions = [g.regions.get(context) for g in groups]
    if not all(c or r for c, r in zip(classes, regions)):
        return None
    capture = next((c.capture for c in classes if c and c.capture), None)
    ms = sum(c.saving_ms / c.share if c else r.saving_ms for c, r in zip(classes, regions))
    return Prediction(context, ms + (capture.ms if capture else 0.0),
                      frozenset(Source.CLASS if c else Source.REGION for c in classes))


def _from_classes(groups: list, classes: list[ClassTiming], context: Context) -> Prediction:
    """Every group's term a class share: also a fraction of the base's time, which in a context whose base is the
    module (eager, channels-last) is the control's time x (1 + what capturing saves)."""
    capture = classes[0].capture
    ms = sum(_share(c, "saving_ms") for c in classes) + (capture.ms if capture else 0.0)

    def of_base(key: str, capture_part: float) -> float:
        return (sum(_share(c, key) for c in classes) + capture_part) / (1 + capture_part)

    fraction = of_base("fraction", capture.fraction if capture else 0.0)
    floor = of_base("floor_fraction", capture.floor_fraction if capture else 0.0)
    base_ms = classes[0].control_ms * (1 + (capture.fraction if capture else 0.0))
    return Prediction(context, ms, frozenset({Source.CLASS}), fraction, base_ms, floor)


def label(prediction: Prediction | None, applied: bool = True) -> str:
    """The verification's ``prediction`` word (JSON): in_context (classes), in_model (regions), library, mixed."""
    if prediction is None or not applied:
        return "library"
    return {"whole model": "in_context", "regions": "in_model"}.get(prediction.basis, prediction.basis)
