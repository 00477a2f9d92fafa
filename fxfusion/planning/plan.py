"""Fusion plans: which sites of a captured model to fuse, with which variant, and what that should save.

A plan is made from decisions (:meth:`FusionPlan.from_decisions`, one :class:`Decision` per legal site) or from an
analysis (:meth:`FusionPlan.from_analysis`), in five steps:

  1. each site is decided against its *baseline*, the variant that runs like the user's code, by
     :func:`fxfusion.planning.analyze.decide_site` -- the same rule the analysis report uses: ``eager``, except for a linear
     whose bias is already in the GEMM, which runs like ``addmm``; with a profile the verdict and interval come
     from the entry's raw samples, and the predicted saving is baseline median - winner median (scaled by the
     roofline ratio when the entry was measured at another shape);
  2. illegal, already-fused, undecided and not-``fuse`` sites are refused, each with its reasons; so is a site
     whose winner is how it already runs (no gain), or whose winner has no rewrite rule;
  3. groups are admitted by predicted saving, largest first, while the graph with every admitted group contracted
     to one node stays acyclic (networkx): fusing them all creates no cycle.  Cost O(groups x (V + E));
  4. with the model at hand (:meth:`FusionPlan.measure_in_model`, by :func:`plan` and ``analyze --apply``), each
     group's region is timed captured vs rewritten inside the model (:mod:`fxfusion.planning.insitu`): that saving
     becomes the group's prediction, and a group whose region is slower rewritten beyond the noise is refused;
  5. the groups are kept only if their saving exceeds the captured graph's cost over the model (where measured).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from fxfusion.errors import FxFusionError
from fxfusion.fusions.registry import rewrite_for
from fxfusion.graph.partition import captured_graph, contracted_cycle, convexity_problems, plan_graph
from fxfusion.measure.devices import as_device
from fxfusion.measure.stats import FUSE
from fxfusion.measure.timing import PIPELINED
from fxfusion.planning.decide import decide_site, lookup_for_decision
from fxfusion.planning.insitu import (CHANNELS_LAST, COMPILED_REGION, INSITU_BUDGET_S, MODEL, InModel, Overhead,
                                      measure_in_model, measure_overhead)  # noqa: F401  (measure_overhead: this API)
from fxfusion.profiles.profile import Decision, Profile, decision_to_dict
from fxfusion.measure.stats import Speedup
from fxfusion.graph.sites import ALREADY_FUSED, CapturedModel, Site

ILLEGAL, UNDECIDED, NOT_FUSE, NO_GAIN, NO_REWRITE, NOT_CONVEX, BELOW_OVERHEAD, SLOWER_IN_MODEL = (
    "illegal", "undecided", "not_fuse", "no_gain", "no_rewrite", "not_convex", "below_overhead", "slower_in_model")


@dataclass
class FusionGroup:
    id: str  # the site id ("g0.s3"): one group per site
    pattern: str
    graph_index: int
    nodes: list[str]
    variant: str  # the winning variant, applied by fxfusion.planning.rewrite
    baseline_variant: str  # the variant that runs like the user's code
    speedup: Speedup | None  # variant over baseline, 95% interval
    predicted_saving_ms: float | None  # per forward pass; None without timings
    baseline_ms: float | None
    variant_ms: float | None
    decision: Decision
    shape: dict[str, int]
    dtype: str
    roles: dict[str, str] = field(default_factory=dict)
    extrapolated: bool = False  # the entry was measured at another shape
    # The saving the pattern library measured (standalone calls); predicted_saving_ms is replaced by the in-model
    # saving once FusionPlan.measure_in_model has timed the group's region (fxfusion.planning.insitu), kept here as well.
    library_saving_ms: float | None = None
    in_model: dict[str, Any] | None = None
    decided_in_model: bool = False  # the library could not decide the site (activation written out); the model did
    # The region timed with both forms compiled (the planned + compile candidate's regime), when it was; the same in
    # channels-last layout (the planned + channels-last + compile candidate's regime).
    in_compiled_model: dict[str, Any] | None = None
    in_compiled_channels_last: dict[str, Any] | None = None
    # Its share of its class's saving measured with the whole model compiled, per layout ("model", "channels_last";
    # fxfusion.planning.incontext), when it was.
    in_context: dict[str, dict[str, Any]] | None = None

    @property
    def site_id(self) -> str:
        return self.id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision"] = decision_to_dict(self.decision) if self.decision is not None else None
        return d


@dataclass
class RefusedSite:
    site_id: str
    pattern: str
    graph_index: int
    nodes: list[str]
    why: str  # ILLEGAL | already_fused | UNDECIDED | NOT_FUSE | NO_GAIN | NO_REWRITE | NOT_CONVEX | BELOW_OVERHEAD
    #         | SLOWER_IN_MODEL
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FusionPlan:
    captured: CapturedModel
    sites: list[Site]
    groups: list[FusionGroup]
    refused: list[RefusedSite]
    device: torch.device = torch.device("cpu")  # where the model runs and its groups are timed
    warnings: list[str] = field(default_factory=list)
    overhead_ms: float | None = None  # what the captured graph (no rewrite) takes over the model per forward (median)
    # Where the groups' predicted savings come from: "library" (the pattern measurements), "in_model" (regions timed
    # inside the captured graph, fxfusion.planning.insitu) or "mixed" (some regions could not be timed).
    prediction: str = "library"
    # Sites refused as not_fuse by the library although their activation is written out (the library measured it as
    # one op): measure_in_model decides them in the model, and admits those whose region is faster rewritten.
    pending: list[FusionGroup] = field(default_factory=list)
    # The same overhead as a fraction of the original model's time, paired per round; None: not measured.
    overhead_fraction: float | None = None
    # The candidates measured end to end and the one chosen (candidates.Choice as a dict; None until measured).
    choice: dict[str, Any] | None = None
    regime: str = PIPELINED  # the timing regime the sites were decided in (pipelined: as a forward pass runs them)

    @property
    def groups_saving_ms(self) -> float | None:
        """Sum of the groups' predicted savings per forward (those with a timing); None when none has one."""
        known = [g.predicted_saving_ms for g in self.groups if g.predicted_saving_ms is not None]
        return sum(known) if known else (0.0 if not self.groups else None)

    @property
    def predicted_saving_ms(self) -> float | None:
        """The predicted end-to-end saving per forward: the groups' savings less the captured graph's overhead."""
        if not self.groups:
            return 0.0  # no group: apply() returns a copy of the model itself
        saving = self.groups_saving_ms
        return None if saving is None else saving - (self.overhead_ms or 0.0)

    @property
    def predicted_fraction(self) -> float | None:
        """The predicted saving as a fraction of the original model's time: the groups' in-model fractions less the
        overhead's, each paired per round with the model (robust to the host's speed drifting between measurements);
        None unless every group has one and the overhead was measured."""
        return self.fraction_of([g.id for g in self.groups])

    def fraction_of(self, group_ids) -> float | None:
        """:attr:`predicted_fraction` over the named groups only (those that were applied)."""
        chosen = [g for g in self.groups if g.id in set(group_ids)]
        if not chosen:
            return 0.0
        parts = [(g.in_model or {}).get("fraction") for g in chosen]
        if any(f is None for f in parts) or self.overhead_fraction is None:
            return None
        return sum(parts) - self.overhead_fraction

    def group(self, group_id: str) -> FusionGroup:
        if (found := next((g for g in self.groups if g.id == group_id), None)) is not None:
            return found
        raise FxFusionError(f"plan has no group {group_id!r}; groups: {', '.join(g.id for g in self.groups)}")

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_decisions(cls, captured: CapturedModel, sites: list[Site], decisions: Mapping[str, Decision],
                       profile: Profile | None = None, device: str | None = None,
                       undecided: Mapping[str, str] | None = None) -> "FusionPlan":
        """A plan from one decision per site id (sites without one are refused as undecided).

        With the ``profile`` the decisions came from, groups carry predicted savings and are decided against their
        baseline from the entry's raw samples; without it, the decisions' verdicts are taken as they are.
        """
        device = as_device(device or next((d.device for d in decisions.values()), "cpu"))
        outcomes = [decide_site(s, lookup_for_decision(profile, s, decisions[s.id], device) if s.legal and s.id in decisions
                                else None) for s in sites]
        plan = cls._from_outcomes(captured, list(sites), outcomes, device, undecided)
        plan.regime = next((d.regime for d in decisions.values() if d.regime), PIPELINED)
        return plan

    @classmethod
    def from_analysis(cls, analysis, device: str | None = None, convex: bool = True) -> "FusionPlan":
        """A plan from an :class:`fxfusion.planning.analyze.Analysis`: its per-site outcomes, live timings included.
        ``convex=False`` admits every candidate group without the convexity check (step 3), for callers that only ask
        which groups a rewrite would take (it costs a cycle search of the whole graph per group)."""
        device = as_device(device or analysis.metadata.get("device", "cpu"))
        plan = cls._from_outcomes(analysis.captured, list(analysis.sites), list(analysis.outcomes), device,
                                  analysis.undecided(), convex)
        plan.regime = analysis.metadata.get("regime") or PIPELINED
        return plan

    @classmethod
    def _from_outcomes(cls, captured: CapturedModel, sites: list[Site], outcomes: list, device: str,
                       undecided: Mapping[str, str] | None, convex: bool = True) -> "FusionPlan":
        undecided = dict(undecided or {})
        candidates, refused, warnings, pending = [], [], [], []

        def refuse(site, why, reasons):
            refused.append(RefusedSite(site.id, site.pattern, site.graph_index, list(site.nodes), why,
                                       [r for r in reasons if r] or [why]))

        def rewritable(site, variant) -> bool:
            return rewrite_for(site.pattern, variant) is not None

        def group(o, variant, saving_ms, variant_ms) -> FusionGroup:
            site, d = o.site, o.decision
            return FusionGroup(
                id=site.id, pattern=site.pattern, graph_index=site.graph_index, nodes=list(site.nodes),
                variant=variant, baseline_variant=o.baseline_variant or "eager", speedup=o.speedup,
                predicted_saving_ms=saving_ms, baseline_ms=o.baseline_ms, variant_ms=variant_ms, decision=d,
                shape=dict(site.shape), dtype=site.dtype, roles=dict(site.roles), extrapolated=not d.exact)

        for o in outcomes:
            site, d = o.site, o.decision
            if o.verdict == ALREADY_FUSED:
                refuse(site, ALREADY_FUSED, site.reasons or [f"already runs fused ({site.written_as or site.pattern})"])
            elif o.verdict == ILLEGAL:
                refuse(site, ILLEGAL, site.reasons or ["the matcher marked the site illegal"])
            elif d is None or o.verdict == "undecided":
                refuse(site, UNDECIDED, [undecided.get(site.id, "")] + o.warnings or ["no decision for this site"])
            elif o.verdict != FUSE:
                sp = o.speedup
                ci = f"{sp.median:.2f}x, 95% CI [{sp.ci_low:.2f}, {sp.ci_high:.2f}]" if sp else ""
                if not sp:
                    against = o.verdict
                elif o.best_variant == o.baseline_variant:  # avoid: the baseline itself is best
                    against = f"every variant is slower than {o.baseline_variant} (the best one {ci}): {o.verdict}"
                else:
                    against = f"{o.best_variant} is {ci} of {o.baseline_variant}: {o.verdict}"
                reasons = [d.reason if o.baseline_variant == "eager" else against]
                candidate = o.in_model_candidate
                if candidate and rewritable(site, candidate):
                    reasons.append(f"its activation is written out ({site.written_as}), which the library measures "
                                   f"as one op: {candidate} is decided inside the model instead (measure_in_model)")
                    pending.append(group(o, candidate, None, None))
                refuse(site, NOT_FUSE, reasons)
            elif o.best_variant == o.baseline_variant or (site.roles.get("bias_in_gemm") == "true"
                                                          and o.best_variant == "addmm"):
                refuse(site, NO_GAIN, [f"the winner, {o.best_variant}, is how the site already runs"])
            elif not rewritable(site, o.best_variant):
                refuse(site, NO_REWRITE, [f"fxfusion has no rewrite of a {site.pattern} site into {o.best_variant!r}"])
            else:
                warnings.extend(f"{site.id}: {w}" for w in list(d.warnings) + list(o.warnings))
                candidates.append(group(o, o.best_variant, o.saved_ms, o.best_ms))
        plan = cls(captured=captured, sites=sites, groups=[], refused=refused, device=device, warnings=warnings,
                   pending=pending)
        if convex:
            plan._admit_convex(candidates)
        else:
            plan.groups = candidates
        return plan

    def _admit_convex(self, candidates: list[FusionGroup]) -> None:
        graph = captured_graph(self.captured)
        order = sorted(candidates, key=lambda g: -(g.predicted_saving_ms or 0.0))
        admitted: list[FusionGroup] = []
        for g in order:
            cycle = contracted_cycle(graph, admitted + [g])
            if cycle:
                self.refused.append(RefusedSite(g.id, g.pattern, g.graph_index, g.nodes, NOT_CONVEX,
                                                [f"fusing it would create a cycle through {cycle}"]))
            else:
                admitted.append(g)
        position = {g.id: i for i, g in enumerate(candidates)}
        self.groups = sorted(admitted, key=lambda g: position[g.id])

    def measure_in_model(self, model: torch.nn.Module, example_inputs: tuple, device: str | None = None,
                         spec=None, clock=None, budget_s: float = INSITU_BUDGET_S,
                         reference_ms: float | None = None) -> None:
        """Replace each group's predicted saving by its in-model one (see :mod:`fxfusion.planning.insitu`), and refuse the
        groups whose region is slower rewritten than captured beyond the noise (interval wholly below zero).
        A group whose region cannot be timed alone keeps the library's prediction, with a warning.

        With ``reference_ms`` (the original model's time per forward, e.g. ``Overhead.eager_ms``), a group's saving
        is its paired fraction of the model times that one reference: a batch timed while the host ran slow (the
        lent H200's host switches speed every few seconds) then scales with the model in the same rounds instead of
        inflating the prediction.  Without it the saving is the difference of the region's medians."""
        if not self.groups and not self.pending:
            return
        found = measure_in_model(self, model, example_inputs, device or self.device, spec=spec, clock=clock,
                                 budget_s=budget_s)
        self._decide_pending(found)
        kept = []
        for g in self.groups:
            im = found.get(g.id, "not measured")
            g.library_saving_ms = g.predicted_saving_ms if g.library_saving_ms is None else g.library_saving_ms
            if not isinstance(im, InModel):
                self.warnings.append(f"{g.id}: no in-model timing ({im}); its prediction is the library's")
                kept.append(g)
                continue
            g.in_model = im.to_dict()
            g.predicted_saving_ms = (im.fraction * reference_ms if reference_ms and im.fraction is not None
                                     else im.saving_ms)
            if im.noisy:
                self.warnings.append(f"{g.id}: its in-model timing is noisy ({im.noisy}); the group stays on the "
                                     "library's verdict")
            if im.ci_high_ms < 0 and not im.noisy:
                self.refused.append(RefusedSite(g.id, g.pattern, g.graph_index, g.nodes, SLOWER_IN_MODEL, [
                    f"inside the model its region takes {im.rewritten_ms:.4f} ms rewritten against "
                    f"{im.captured_ms:.4f} ms captured (saving {im.saving_ms:+.4f} ms, 95% CI "
                    f"[{im.ci_low_ms:+.4f}, {im.ci_high_ms:+.4f}])"]))
            else:
                kept.append(g)
        self.groups = kept
        measured = [g.in_model is not None for g in self.groups]
        self.prediction = ("in_model" if all(measured) else "mixed" if any(measured) else "library")

    def measure_in_compiled_model(self, model: torch.nn.Module, example_inputs: tuple, device=None, spec=None,
                                  clock=None, budget_s: float = INSITU_BUDGET_S, channels_last: bool = False) -> None:
        """Time each group's region with both forms compiled by Inductor (``measure_in_model(compiled=True)``): in the
        planned + compile candidate a rewrite competes with Inductor's own fusion of the same ops, not with eager.
        The result goes to ``in_compiled_model``; :meth:`groups_for_compile` drops the groups it shows slower.
        With ``channels_last`` the regions run in channels-last layout, as in the planned + channels-last + compile
        candidate, and the result goes to ``in_compiled_channels_last`` (it predicts that candidate only)."""
        if not self.groups:
            return
        found = measure_in_model(self, model, example_inputs, device or self.device, spec=spec, clock=clock,
                                 budget_s=budget_s, compiled=True, channels_last=channels_last)
        for g in self.groups:
            im = found.get(g.id)
            if isinstance(im, InModel):
                setattr(g, COMPILED_REGION[CHANNELS_LAST if channels_last else MODEL], im.to_dict())
            else:
                self.warnings.append(f"{g.id}: not timed compiled{' in channels-last' if channels_last else ''} "
                                     f"({im}); kept for planned + compile")

    def groups_for_compile(self, layout: str = MODEL) -> list[FusionGroup]:
        """The groups a planned compile candidate applies in ``layout`` (MODEL or CHANNELS_LAST): those whose class
        makes the whole compiled model faster there beyond the noise (``in_context``: the fuse rule) and, where no
        class was measured, those whose region compiled in that layout is not slower rewritten beyond the noise."""
        def left_out(g: FusionGroup) -> bool:
            c, r = (g.in_context or {}).get(layout), getattr(g, COMPILED_REGION[layout])
            return c["class_ci_low_ms"] <= 0 if c else bool(r) and r["ci_high_ms"] < 0 and not r.get("noisy")
        return [g for g in self.groups if not left_out(g)]

    def _decide_pending(self, found: dict) -> None:
        """Admit each pending site whose region is faster rewritten beyond the noise (the fuse rule, applied to the
        region's speedup inside the model) and stays convex with the groups; the rest stay refused, with the numbers."""
        graph = captured_graph(self.captured) if self.pending else None
        for g in self.pending:
            im = found.get(g.id)
            refusal = next(r for r in self.refused if r.site_id == g.id)
            if not isinstance(im, InModel):
                refusal.reasons.append(f"inside the model it could not be timed ({im})")
                continue
            said = (f"inside the model its region runs {im.speedup:.2f}x rewritten (95% CI [{im.speedup_ci_low:.2f}, "
                    f"{im.speedup_ci_high:.2f}]): {im.verdict}" + (f", noisy: {im.noisy}" if im.noisy else ""))
            if im.verdict != FUSE:
                refusal.reasons.append(said)
                continue
            cycle = contracted_cycle(graph, self.groups + [g])
            if cycle:
                refusal.reasons.append(f"{said}, but fusing it would create a cycle through {cycle}")
                continue
            self.refused.remove(refusal)
            g.decided_in_model = True
            self.groups.append(g)
            self.warnings.append(f"{g.id}: decided inside the model ({said}); the library measured its activation as "
                                 "one op")
        order = {s.id: i for i, s in enumerate(self.sites)}
        self.groups.sort(key=lambda g: order.get(g.id, 0))
        self.pending = []

    def require_saving_over(self, overhead: "Overhead | float") -> None:
        """Charge the captured graph's overhead (signed: the graph can be faster than the module it came from) to the
        plan, and refuse every group when their predicted saving does not exceed its interval's upper end."""
        if not isinstance(overhead, Overhead):
            overhead = Overhead(float(overhead), float(overhead), float(overhead))
        self.overhead_ms = overhead.ms
        self.overhead_fraction = overhead.fraction
        saving = self.groups_saving_ms
        if not self.groups or saving is None or any(g.predicted_saving_ms is None for g in self.groups):
            return
        if saving <= overhead.ci_high_ms:
            why = (f"the plan's predicted saving ({saving:.4f} ms per forward) does not cover what the captured graph "
                   f"costs over the original model ({overhead.ms:.4f} ms, 95% CI up to {overhead.ci_high_ms:.4f})")
            self.refused += [RefusedSite(g.id, g.pattern, g.graph_index, g.nodes, BELOW_OVERHEAD, [why])
                             for g in self.groups]
            self.groups = []

    # -- views ----------------------------------------------------------------------------------------------------
    def to_networkx(self):
        """A networkx.DiGraph of the captured model; see :func:`fxfusion.graph.partition.plan_graph`."""
        return plan_graph(self)

    def check_convex(self) -> list[str]:
        """Problems that would make fusing the groups create a cycle (empty when every group is convex)."""
        return convexity_problems(self)

    def to_dict(self) -> dict[str, Any]:
        c = self.captured
        return {
            "device": str(self.device),
            "regime": self.regime,
            "capture": {"method": c.method, "graphs": len(c.graphs), "graph_breaks": list(c.graph_breaks)},
            "groups": [g.to_dict() for g in self.groups],
            "refused": [r.to_dict() for r in self.refused],
            "pending": [g.to_dict() for g in self.pending],
            "groups_saving_ms": self.groups_saving_ms,
            "overhead_ms": self.overhead_ms,
            "predicted_saving_ms": self.predicted_saving_ms,
            "prediction": self.prediction,
            "overhead_fraction": self.overhead_fraction,
            "predicted_fraction": self.predicted_fraction,
            "warnings": list(self.warnings),
            "chosen_candidate": (self.choice or {}).get("chosen"),
        }
