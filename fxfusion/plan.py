"""Fusion plans: which sites of a captured model to fuse, with which variant, and what that should save.

A plan is made from decisions (:meth:`FusionPlan.from_decisions`), one per legal site, in four steps:

  1. refuse every site that is illegal, already fused, undecided (no profile entry) or not decided ``fuse``;
  2. for the rest, find the profile entry behind the decision and compare the winning variant with the variant that
     runs like the user's code -- the *baseline*: ``eager`` unless part of the site already runs fused (an
     ``aten.linear`` with a bias already is ``addmm``) -- from the entry's raw samples, with a bootstrap interval;
     a site whose winner is its baseline, or that is not ``fuse`` against it, is refused;
  3. predict the time saved per forward: baseline median - winner median, scaled by the FLOP ratio when the
     entry was measured at another shape;
  4. admit groups by predicted saving, largest first, while the graph with every admitted group contracted to
     one node stays acyclic (networkx): fusing them all creates no cycle.  Cost O(groups x (V + E));
  5. where the cost of running the captured graph instead of the model is known (:func:`measure_overhead`), keep
     the groups only if their predicted saving exceeds it -- a plan must not make the model slower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import fx

from fxfusion.errors import FxFusionError
from fxfusion.profile import Decision, Entry, Profile, SpeedupCI, decision_to_dict
from fxfusion.sites import ALREADY_FUSED, CapturedModel, Site

ILLEGAL, UNDECIDED, NOT_FUSE, NO_GAIN, NO_REWRITE, NOT_CONVEX, BELOW_OVERHEAD = (
    "illegal", "undecided", "not_fuse", "no_gain", "no_rewrite", "not_convex", "below_overhead")


@dataclass
class FusionGroup:
    id: str  # the site id ("g0.s3"): one group per site
    pattern: str
    graph_index: int
    nodes: list[str]
    variant: str  # the winning variant, applied by fxfusion.rewrite
    baseline_variant: str  # the variant that runs like the user's code
    speedup: SpeedupCI | None  # variant over baseline, 95% interval
    predicted_saving_ms: float | None  # per forward pass; None without timings
    baseline_ms: float | None
    variant_ms: float | None
    decision: Decision
    shape: dict[str, int]
    dtype: str
    roles: dict[str, str] = field(default_factory=dict)
    extrapolated: bool = False  # the entry was measured at another shape

    @property
    def site_id(self) -> str:
        return self.id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision"] = decision_to_dict(self.decision)
        return d


@dataclass
class RefusedSite:
    site_id: str
    pattern: str
    graph_index: int
    nodes: list[str]
    why: str  # ILLEGAL | already_fused | UNDECIDED | NOT_FUSE | NO_GAIN | NO_REWRITE | NOT_CONVEX | BELOW_OVERHEAD
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_variant(site: Site, gm: fx.GraphModule | None) -> str:
    """The measured variant that runs like the site as written: an aten.linear with a bias already is addmm."""
    if gm is None or site.pattern.split("_")[0] != "linear":
        return "eager"
    by_name = {n.name: n for n in gm.graph.nodes}
    for name in site.nodes:
        n = by_name.get(name)
        if n is not None and n.op == "call_function" and n.target == torch.ops.aten.linear.default:
            if len(n.args) > 2 and n.args[2] is not None:
                return "addmm"
    return "eager"


def _variants_of(pattern: str) -> set[str]:
    """The variant names a decision for ``pattern`` can name: its manual fusions and the compile variants."""
    from fxfusion.patterns import REGISTRY
    from fxfusion.variants import COMPILE_MODES

    p = REGISTRY.get(pattern)
    return ({mv.name for mv in p.manual} if p else set()) | set(COMPILE_MODES)


def _flops_ratio(pattern: str, shape: Mapping[str, int], measured: Mapping[str, int]) -> float:
    from fxfusion.patterns import REGISTRY

    p = REGISTRY.get(pattern)
    if p is None:
        return 1.0
    return p.flops(shape) / max(p.flops(measured), 1)


def _entry_for(profile: Profile, d: Decision) -> Entry | None:
    if d.measured_shape is None:
        return None
    same = [e for e in profile.entries if e.pattern == d.pattern and e.shape == d.measured_shape
            and e.device.split(":")[0] == d.device.split(":")[0]]
    return next((e for e in same if e.dtype == d.dtype), same[0] if same else None)


@dataclass
class _Estimate:
    verdict: str
    variant: str
    speedup: SpeedupCI | None
    baseline_ms: float | None
    variant_ms: float | None
    reason: str


def estimate(site: Site, decision: Decision, baseline: str, profile: Profile | None) -> _Estimate:
    """The winning variant against the baseline, from the entry's raw samples when a profile is at hand."""
    from fxfusion.stats import FUSE, speedup

    entry = _entry_for(profile, decision) if profile is not None else None
    if entry is None:
        if baseline != "eager" and decision.best_variant == baseline:
            return _Estimate("no_gain", baseline, None, None, None,
                             f"the winner {baseline} is how the site already runs")
        return _Estimate(decision.verdict, decision.best_variant, decision.speedup, None, None, decision.reason)
    scale = _flops_ratio(site.pattern, site.shape, entry.shape)
    base = entry.variant(baseline)
    if base is None or base.status != "ok" or not base.samples_ms:
        return _Estimate("undecided", "eager", None, None, None,
                         f"the profile has no timing of {baseline}, the variant the site runs as written")
    best, best_s = None, None
    for v in entry.variants:
        if v.name in ("eager", baseline) or v.status != "ok" or not v.samples_ms:
            continue
        s = speedup(base.samples_ms, v.samples_ms)
        if s.verdict() == FUSE and (best_s is None or s.median > best_s.median):
            best, best_s = v, s
    if best is None:
        why = (decision.reason if baseline == "eager"
               else f"no variant beats {baseline} (how the site already runs) beyond the noise interval")
        return _Estimate("not_fuse", baseline, None, base.median_ms * scale, None, why)
    sp = SpeedupCI(best_s.median, best_s.ci_low, best_s.ci_high)
    return _Estimate("fuse", best.name, sp, base.median_ms * scale, best.median_ms * scale,
                     f"{best.name} is {sp.median:.2f}x {baseline}, 95% CI [{sp.ci_low:.2f}, {sp.ci_high:.2f}]")


@dataclass
class FusionPlan:
    captured: CapturedModel
    sites: list[Site]
    groups: list[FusionGroup]
    refused: list[RefusedSite]
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    # Median time the captured graph (no rewrite) takes over the original model per forward; None: not measured.
    overhead_ms: float | None = None

    @property
    def groups_saving_ms(self) -> float | None:
        """Sum over groups of the predicted saving per forward; None when no group has a timing."""
        known = [g.predicted_saving_ms for g in self.groups if g.predicted_saving_ms is not None]
        return sum(known) if known else (0.0 if not self.groups else None)

    @property
    def predicted_saving_ms(self) -> float | None:
        """The predicted end-to-end saving per forward: the groups' savings less the captured graph's overhead."""
        if not self.groups:
            return 0.0  # no group: apply() returns a copy of the model itself
        saving = self.groups_saving_ms
        return None if saving is None else saving - (self.overhead_ms or 0.0)

    def group(self, group_id: str) -> FusionGroup:
        for g in self.groups:
            if g.id == group_id:
                return g
        raise FxFusionError(f"plan has no group {group_id!r}; groups: {', '.join(g.id for g in self.groups)}")

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_decisions(cls, captured: CapturedModel, sites: list[Site], decisions: Mapping[str, Decision],
                       profile: Profile | None = None, device: str | None = None,
                       undecided: Mapping[str, str] | None = None) -> "FusionPlan":
        from fxfusion.rewrite import REWRITES

        undecided = dict(undecided or {})
        groups, refused, warnings = [], [], []

        def refuse(site, why, reasons):
            refused.append(RefusedSite(site.id, site.pattern, site.graph_index, list(site.nodes), why, list(reasons)))

        for site in sites:
            if site.status == ALREADY_FUSED:
                refuse(site, ALREADY_FUSED, site.reasons or [f"already runs fused ({site.written_as or site.pattern})"])
                continue
            if not site.legal:
                refuse(site, ILLEGAL, site.reasons or ["the matcher marked the site illegal"])
                continue
            decision = decisions.get(site.id)
            if decision is None:
                refuse(site, UNDECIDED, [undecided.get(site.id, "no decision for this site")])
                continue
            gm = captured.graphs[site.graph_index] if site.graph_index < len(captured.graphs) else None
            base = baseline_variant(site, gm)
            est = estimate(site, decision, base, profile)
            if est.verdict == "no_gain":
                refuse(site, NO_GAIN, [est.reason])
                continue
            if est.verdict != "fuse":
                refuse(site, UNDECIDED if est.verdict == "undecided" else NOT_FUSE, [est.reason])
                continue
            if est.variant not in REWRITES or est.variant not in _variants_of(site.pattern):
                refuse(site, NO_REWRITE, [f"fxfusion has no rewrite of a {site.pattern} site into {est.variant!r}"])
                continue
            saving = est.baseline_ms - est.variant_ms if est.baseline_ms is not None else None
            warnings.extend(f"{site.id}: {w}" for w in decision.warnings)
            groups.append(FusionGroup(
                id=site.id, pattern=site.pattern, graph_index=site.graph_index, nodes=list(site.nodes),
                variant=est.variant, baseline_variant=base, speedup=est.speedup, predicted_saving_ms=saving,
                baseline_ms=est.baseline_ms, variant_ms=est.variant_ms, decision=decision, shape=dict(site.shape),
                dtype=site.dtype, roles=dict(site.roles), extrapolated=not decision.exact))
        plan = cls(captured=captured, sites=list(sites), groups=[], refused=refused,
                   device=device or (decisions[next(iter(decisions))].device if decisions else "cpu"),
                   warnings=warnings)
        plan._admit_convex(groups)
        return plan

    def _admit_convex(self, candidates: list[FusionGroup]) -> None:
        from fxfusion.partition import captured_graph, contracted_cycle

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

    def require_saving_over(self, overhead_ms: float) -> None:
        """Record the captured graph's overhead (signed: the graph can be faster than the module it came from);
        refuse every group when their predicted saving does not cover it."""
        self.overhead_ms = float(overhead_ms)
        saving = self.groups_saving_ms
        if not self.groups or saving is None or any(g.predicted_saving_ms is None for g in self.groups):
            return
        if saving <= self.overhead_ms:
            why = (f"the plan's predicted saving ({saving:.4f} ms per forward) does not cover the "
                   f"{self.overhead_ms:.4f} ms the captured graph costs over the original model")
            self.refused += [RefusedSite(g.id, g.pattern, g.graph_index, g.nodes, BELOW_OVERHEAD, [why])
                             for g in self.groups]
            self.groups = []

    # -- views ----------------------------------------------------------------------------------------------------
    def to_networkx(self):
        """A networkx.DiGraph of the captured model; see :func:`fxfusion.partition.plan_graph`."""
        from fxfusion.partition import plan_graph

        return plan_graph(self)

    def check_convex(self) -> list[str]:
        """Problems that would make fusing the groups create a cycle (empty when every group is convex)."""
        from fxfusion.partition import convexity_problems

        return convexity_problems(self)

    def to_dict(self) -> dict[str, Any]:
        c = self.captured
        return {
            "device": self.device,
            "capture": {"method": c.method, "graphs": len(c.graphs), "graph_breaks": list(c.graph_breaks)},
            "groups": [g.to_dict() for g in self.groups],
            "refused": [r.to_dict() for r in self.refused],
            "groups_saving_ms": self.groups_saving_ms,
            "overhead_ms": self.overhead_ms,
            "predicted_saving_ms": self.predicted_saving_ms,
            "warnings": list(self.warnings),
        }


# -- making a plan from a model --------------------------------------------------------------------------------------

def _as_captured(model_or_graph: Any, example_inputs: tuple) -> CapturedModel:
    if isinstance(model_or_graph, CapturedModel):
        return model_or_graph
    if isinstance(model_or_graph, torch.export.ExportedProgram):
        return CapturedModel("export", [model_or_graph.module()], tuple(example_inputs))
    if not isinstance(model_or_graph, torch.nn.Module):
        raise FxFusionError(f"plan() takes an nn.Module, a GraphModule or an ExportedProgram, "
                            f"got {type(model_or_graph).__name__}")
    if isinstance(model_or_graph, fx.GraphModule) and _is_aten(model_or_graph):
        return CapturedModel("export", [model_or_graph], tuple(example_inputs))
    from fxfusion.capture import capture

    return capture(model_or_graph, example_inputs)


def _is_aten(gm: fx.GraphModule) -> bool:
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    return bool(calls) and all(isinstance(n.target, torch._ops.OpOverload) or n.target.__module__ == "_operator"
                               for n in calls)


def _device_of(example_inputs: tuple) -> str:
    for t in torch.utils._pytree.tree_leaves(example_inputs):
        if isinstance(t, torch.Tensor):
            return t.device.type
    return "cpu"


def measure_sites(sites: list[Site], device: str = "cpu", spec=None, hardware: str | None = None,
                  compile_modes: tuple[str, ...] = ("compile",), clock=None) -> Profile:
    """A profile measured live at exactly the shapes and dtypes of the legal sites (one entry per distinct one)."""
    from fxfusion.calibrate import measure_entry
    from fxfusion.hardware import resolve
    from fxfusion.patterns import REGISTRY
    from fxfusion.timing import QUICK_SPEC, CpuClock, CudaClock

    hw = resolve(hardware or ("h100-sxm" if device.startswith("cuda") else "generic-cpu"), device=device)
    clock = clock or (CudaClock() if device.startswith("cuda") else CpuClock())
    entries, seen = [], set()
    for site in sites:
        key = (site.pattern, tuple(sorted(site.shape.items())), site.dtype)
        if not site.legal or site.pattern not in REGISTRY or key in seen:
            continue
        seen.add(key)
        entries.append(measure_entry(REGISTRY[site.pattern], dict(site.shape), site.dtype, device, hw,
                                     spec or QUICK_SPEC, clock, compile_modes=compile_modes))
    return Profile(metadata={"device": device, "hardware": hw.name, "mode": "measure"},
                   hardware={"name": hw.name, "device": hw.device}, ceilings={}, entries=entries)


# Enough rounds to see a 10 us difference on a 2-core CPU, little enough to keep planning quick.
OVERHEAD_SPEC_ROUNDS, OVERHEAD_SPEC_BUDGET_S = 30, 3.0


def measure_overhead(model: torch.nn.Module, captured: CapturedModel, example_inputs: tuple, device: str = "cpu",
                     spec=None, clock=None) -> float:
    """Median ms per forward that the captured graph, unrewritten, takes over the original model (may be < 0)."""
    from fxfusion.rewrite import captured_module
    from fxfusion.timing import CpuClock, CudaClock, TimingSpec, measure

    spec = spec or TimingSpec(rounds=OVERHEAD_SPEC_ROUNDS, warmup=2, target_sample_s=0.005,
                              budget_s=OVERHEAD_SPEC_BUDGET_S)
    clock = clock or (CudaClock() if device.startswith("cuda") else CpuClock())
    graph = captured_module(model, captured)
    with torch.no_grad():
        samples = measure({"eager": lambda: model(*example_inputs), "captured": lambda: graph(*example_inputs)},
                          clock, spec)
    median = lambda xs: float(torch.tensor(xs, dtype=torch.float64).median())  # noqa: E731
    return (median(samples.seconds["captured"]) - median(samples.seconds["eager"])) * 1e3


def plan(model_or_graph: Any, profile: Profile | str | None, example_inputs: tuple, device: str | None = None,
         spec=None, compile_modes: tuple[str, ...] = ("compile",), check_overhead: bool = True) -> FusionPlan:
    """Capture, find the sites, decide each from ``profile`` (or measure them live when it is None), and plan.

    With ``check_overhead`` (and an nn.Module to compare with), the captured graph's call overhead over the model is
    measured and the groups are kept only when their predicted saving covers it.
    """
    from fxfusion.match import find_sites

    if not isinstance(example_inputs, tuple):
        raise FxFusionError(f"example_inputs must be a tuple of the model's positional arguments, "
                            f"got {type(example_inputs).__name__}")
    if isinstance(profile, str) or hasattr(profile, "__fspath__"):
        profile = Profile.load(profile)
    captured = _as_captured(model_or_graph, example_inputs)
    sites = find_sites(captured)
    device = device or (profile.metadata.get("device") if profile is not None else None) or _device_of(example_inputs)
    if profile is None:
        profile = measure_sites(sites, device, spec, compile_modes=compile_modes)
    decisions, undecided = {}, {}
    for site in sites:
        if not site.legal:
            continue
        try:
            decisions[site.id] = profile.decide(site.pattern, site.shape, site.dtype, device)
        except FxFusionError as exc:
            undecided[site.id] = str(exc)
    result = FusionPlan.from_decisions(captured, sites, decisions, profile=profile, device=device,
                                       undecided=undecided)
    if check_overhead and result.groups and isinstance(model_or_graph, torch.nn.Module):
        result.require_saving_over(measure_overhead(model_or_graph, captured, example_inputs, device))
    return result
