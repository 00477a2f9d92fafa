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

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from fxfusion.errors import FxFusionError
from fxfusion.fusions.registry import rewrite_for
from fxfusion.graph.partition import captured_graph, contracted_cycle, convexity_problems, plan_graph
from fxfusion.measure.devices import as_device
from fxfusion.measure.stats import FUSE, Verdict
from fxfusion.measure.timing import PIPELINED
from fxfusion.planning.decide import decide_site, lookup_for_decision
from fxfusion.planning.insitu import (INSITU_BUDGET_S, Overhead, implausible, measure_in_model,
                                      measure_overhead)  # noqa: F401  (measure_overhead: this API)
from fxfusion.planning.prediction import Context, Prediction, RegionTiming, predict
from fxfusion.profiles.profile import Decision, Profile
from fxfusion.graph.sites import ALREADY_FUSED, CapturedModel, Site
from fxfusion.planning.groups import (BELOW_OVERHEAD, ILLEGAL, NO_GAIN, NO_REWRITE, NOT_CONVEX, NOT_FUSE,  # noqa: F401
                                      SLOWER_IN_MODEL, UNDECIDED, FusionGroup, Refusal, RefusedSite)  # noqa: F401



@dataclass
class FusionPlan:
    captured: CapturedModel
    sites: list[Site]
    groups: list[FusionGroup]
    refused: list[RefusedSite]
    device: torch.device = torch.device("cpu")  # where the model runs and its groups are timed
    warnings: list[str] = field(default_factory=list)
    overhead_ms: float | None = None  # what the captured graph (no rewrite) takes over the model per forward (median)
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
    def prediction(self) -> str:
        """Where the groups' predicted savings come from: "library" (the pattern measurements), "in_model" (regions
        timed inside the captured graph, fxfusion.planning.insitu) or "mixed" (some regions could not be timed)."""
        timed = [Context.EAGER in g.regions for g in self.groups]
        return "in_model" if timed and all(timed) else "mixed" if any(timed) else "library"

    @property
    def predicted_fraction(self) -> float | None:
        """The predicted saving as a fraction of the original model's time: the groups' in-model fractions less the
        overhead's, each paired per round with the model (robust to the host's speed drifting between measurements);
        None unless every group has one and the overhead was measured."""
        if not self.groups:
            return 0.0
        p = predict([dataclasses.replace(g, classes={}) for g in self.groups], Context.EAGER, self.overhead_ms,
                    self.overhead_fraction)  # the regions' own, whatever classes were measured
        return p.fraction if p is not None else None

    def predict(self, context: Context, groups: list["FusionGroup"] | None = None) -> Prediction | None:
        """The prediction of the candidate of ``context`` over ``groups`` (default: those it applies),
        :func:`fxfusion.planning.prediction.predict`'s rule, with this plan's overhead."""
        return predict(self.groups_for(context) if groups is None else groups, context, self.overhead_ms,
                       self.overhead_fraction)

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
                shape=dict(site.shape), dtype=site.dtype, roles=dict(site.roles), flags=site.flags,
                extrapolated=not d.exact)

        for o in outcomes:
            site, d = o.site, o.decision
            if o.verdict == ALREADY_FUSED:
                refuse(site, ALREADY_FUSED, site.reasons or [f"already runs fused ({site.written_as or site.pattern})"])
            elif o.verdict == ILLEGAL:
                refuse(site, ILLEGAL, site.reasons or ["the matcher marked the site illegal"])
            elif d is None or o.verdict == Verdict.UNDECIDED:
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
            elif o.best_variant in (o.baseline_variant, site.baseline_variant):
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
        found = measure_in_model(self.groups + self.pending, self.captured, model, example_inputs,
                                 device or self.device, spec=spec, clock=clock, budget_s=budget_s)
        self._decide_pending(found)
        kept = []
        for g in self.groups:
            im = found.get(g.id, "not measured")
            g.library_saving_ms = g.predicted_saving_ms if g.library_saving_ms is None else g.library_saving_ms
            if not isinstance(im, RegionTiming):
                self.warnings.append(f"{g.id}: no in-model timing ({im}); its prediction is the library's")
                kept.append(g)
                continue
            g.regions[Context.EAGER] = im
            g.predicted_saving_ms = (im.fraction * reference_ms if reference_ms and im.fraction is not None
                                     else im.saving_ms)
            if im.noisy:
                self.warnings.append(f"{g.id}: its in-model timing is noisy ({im.noisy}); the group stays on the "
                                     "library's verdict")
            if im.slower:
                self.refused.append(RefusedSite(g.id, g.pattern, g.graph_index, g.nodes, SLOWER_IN_MODEL, [
                    f"inside the model its region takes {im.rewritten_ms:.4f} ms rewritten against "
                    f"{im.captured_ms:.4f} ms captured (saving {im.saving_ms:+.4f} ms, 95% CI "
                    f"[{im.ci_low_ms:+.4f}, {im.ci_high_ms:+.4f}])"]))
            else:
                kept.append(g)
        self.groups = kept

    def measure_in_compiled_model(self, model: torch.nn.Module, example_inputs: tuple, context: Context,
                                  device=None, spec=None, clock=None, budget_s: float = INSITU_BUDGET_S,
                                  groups: list[FusionGroup] | None = None) -> None:
        """Time each of ``groups``' (default: all) region with both forms compiled by Inductor, in a compiled
        ``context``: in the planned + compile candidate a rewrite competes with Inductor's own fusion of the same ops,
        not with eager.  The result goes to ``regions[context]``; :meth:`groups_for` drops the groups it shows
        slower."""
        groups = self.groups if groups is None else groups
        if not groups:
            return
        found = measure_in_model(groups, self.captured, model, example_inputs, device or self.device, spec=spec,
                                 clock=clock, budget_s=budget_s, context=context)
        for g in groups:
            im = found.get(g.id)
            if isinstance(im, RegionTiming):
                g.regions[context] = im
            else:
                where = " in channels-last" if context is Context.COMPILED_CHANNELS_LAST else ""
                self.warnings.append(f"{g.id}: not timed compiled{where} ({im}); kept for planned + compile")

    def groups_for(self, context: Context) -> list[FusionGroup]:
        """The groups the candidate of ``context`` applies.  Eager: all of them but a class measured slower with the
        model run eagerly beyond the noise (the groups were decided on their own timings; only a measured loss in the
        model leaves one out -- tv_resnet50 on an H100, 2026-12-07: 24 region-compiled conv+BN+ReLU groups, their class
        -3.08 ms, the planned model 0.53x eager).  Compiled: those whose class makes the whole compiled model faster
        there beyond the noise (the fuse rule) and, where no class was measured, those whose region compiled in that
        context is not slower rewritten beyond the noise."""
        def left_out(g: FusionGroup) -> bool:
            c, r = g.classes.get(context), g.regions.get(context)
            if context is Context.EAGER:
                return c is not None and c.slower
            return not c.faster if c else r is not None and r.slower
        return [g for g in self.groups if not left_out(g)]

    def _decide_pending(self, found: dict) -> None:
        """Admit each pending site whose region is faster rewritten beyond the noise (the fuse rule, applied to the
        region's speedup inside the model) and stays convex with the groups; the rest stay refused, with the numbers."""
        graph = captured_graph(self.captured) if self.pending else None
        for g in self.pending:
            im = found.get(g.id)
            refusal = next(r for r in self.refused if r.site_id == g.id)
            if not isinstance(im, RegionTiming):
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
        plan, and refuse every group when their predicted saving does not exceed its interval's upper end.  A noisy
        overhead (``Overhead.noisy``, or :func:`~fxfusion.planning.insitu.implausible`) is not charged and refuses
        nothing; the plan warns."""
        if not isinstance(overhead, Overhead):
            overhead = Overhead(float(overhead), float(overhead), float(overhead))
        noisy = overhead.noisy or implausible(overhead)
        if noisy:  # an estimate that cannot be right decides nothing: the groups stand on their own savings
            self.warnings.append(f"the captured graph's overhead is not charged, its measurement noisy: {noisy}")
            return
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
