"""The analysis of a model: capture, match, decide every site (:mod:`fxfusion.planning.decide`), and the report.

The report is a dict validated against schemas/analysis.schema.json; its renderings (table, markdown, HTML) live in
:mod:`fxfusion.reports`.
"""

from __future__ import annotations

import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import torch

from fxfusion import __version__
from fxfusion.measure.devices import as_device
from fxfusion.measure.hardware import device_name
from fxfusion.fusions.registry import REGISTRY
from fxfusion.profiles.profile import Decision, decision_to_dict
from fxfusion.graph.sites import CapturedModel, Site
from fxfusion.measure.stats import AVOID, FUSE, NEUTRAL, UNDECIDED, summarize
from fxfusion.measure.timing import PIPELINED, QUICK_SPEC, Clock, TimingSpec, clock_for, measure
from fxfusion.profiles.schema import SCHEMA_VERSION, validate
from fxfusion.graph.capture import capture
from fxfusion.fusions.match import find_sites
from fxfusion.planning.coverage import measure_coverage
from fxfusion.planning.decide import LiveSource, Lookup, ProfileSource, SiteOutcome, decide_site
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.rewrite import trial_rewrites



# A forward pass whose median is this many times its fastest rounds' (10th percentile) was timed through stalls (a
# loaded 2-core VM stalled 2-thread PyTorch for 68-72 ms at a time, 2026-12-07, under a 0.26 ms model).
STALLED = 1.5


def measure_forward(model: torch.nn.Module, inputs: tuple, device: str, spec: TimingSpec = QUICK_SPEC,
                    clock: Clock | None = None) -> tuple[float, str | None]:
    """Median milliseconds of one eager forward pass of the whole model (under no_grad), and why that figure is noisy
    (None: it is not): the samples' spread beyond NOISY_IQR of the median (the rule every timing is flagged by), or a
    median over STALLED x the fastest rounds'."""
    clock = clock or clock_for(device)

    def forward():
        with torch.no_grad():
            return model(*inputs)

    s = summarize(measure({"forward": forward}, clock, spec).seconds["forward"])
    why = []
    if s.noisy:
        why.append(f"its samples spread {s.iqr / s.median:.0%} of the median (IQR)")
    if s.floor > 0 and s.median > STALLED * s.floor:
        why.append(f"the median is {s.median / s.floor:.1f}x the fastest rounds' {s.floor * 1e3:.4g} ms (stalls: "
                   "the machine was loaded)")
    return s.median * 1e3, "; ".join(why) or None


@dataclass
class Analysis:
    captured: CapturedModel
    sites: list[Site]
    outcomes: list[SiteOutcome]
    metadata: dict[str, Any]
    warnings: list[str]
    capture_seconds: float
    forward_ms: float | None = None
    forward_noisy: str | None = None  # why the forward pass's figure is not to be trusted (measure_forward)
    verification: dict[str, Any] | None = None
    coverage: dict[str, Any] | None = None  # fxfusion.planning.coverage: FLOPs and time inside the sites

    def decisions(self) -> dict[str, Decision]:
        """site id -> Decision, for every decided site (the plan acts on the ``fuse`` ones)."""
        return {o.site.id: o.decision for o in self.outcomes if o.decision is not None}

    def undecided(self) -> dict[str, str]:
        """site id -> why a legal site has no decision."""
        return {o.site.id: "; ".join(o.warnings) or "not decided (--match-only)"
                for o in self.outcomes if o.verdict == UNDECIDED}

    def to_dict(self) -> dict[str, Any]:
        data = {"schema_version": SCHEMA_VERSION, "kind": "fxfusion.analysis", "metadata": self.metadata,
                "capture": {"method": self.captured.method, "graphs": len(self.captured.graphs),
                            "nodes": sum(1 for g in self.captured.graphs for n in g.graph.nodes
                                         if n.op == "call_function"),
                            "graph_breaks": list(self.captured.graph_breaks), "notes": list(self.captured.notes),
                            "seconds": round(self.capture_seconds, 4)},
                "sites": [_outcome_dict(o) for o in self.outcomes], "unmatched": dict(self.captured.unmatched),
                "summary": self.summary(), "warnings": list(self.warnings)}
        if self.verification is not None:
            data["verification"] = self.verification
        if self.coverage is not None:
            data["coverage"] = self.coverage
        validate(data, "analysis", source="the analysis report")
        return data

    def summary(self) -> dict[str, Any]:
        def count(**kw):
            return sum(1 for o in self.outcomes
                       if all(getattr(o.site if k == "status" else o, k) == v for k, v in kw.items()))

        fused = [o for o in self.outcomes if o.verdict == FUSE and o.not_applied is None]  # what --apply can rewrite
        matched = sum(len(s.nodes) for s in self.sites)
        return {"sites": len(self.sites), "fusible": count(status="fusible"), "illegal": count(status="illegal"),
                "already_fused": count(status="already_fused"), "fuse": count(verdict=FUSE),
                "neutral": count(verdict=NEUTRAL), "avoid": count(verdict=AVOID),
                "undecided": count(verdict=UNDECIDED),
                "saved_ms_per_forward": sum(o.saved_ms or 0.0 for o in fused),
                "bytes_saved_per_forward": sum(o.bytes_saved or 0 for o in fused),
                "matched_nodes": matched, "unmatched_nodes": sum(self.captured.unmatched.values()),
                "forward_ms": self.forward_ms, "forward_noisy": self.forward_noisy}


def _outcome_dict(o: SiteOutcome) -> dict[str, Any]:
    s = o.site
    return {"id": s.id, "pattern": s.pattern, "title": REGISTRY[s.pattern].title if s.pattern in REGISTRY else "SDPA",
            "graph_index": s.graph_index, "nodes": list(s.nodes), "shape": dict(s.shape), "dtype": s.dtype,
            "status": s.status, "reasons": list(s.reasons), "roles": dict(s.roles), "flags": sorted(s.flags),
            "written_as": s.written_as,
            "source": s.source, "verdict": o.verdict, "best_variant": o.best_variant,
            "baseline_variant": o.baseline_variant, "speedup": asdict(o.speedup) if o.speedup else None,
            "decision": decision_to_dict(o.decision) if o.decision else None, "baseline_ms": o.baseline_ms,
            "best_ms": o.best_ms, "saved_ms": o.saved_ms, "bytes_unfused": o.bytes_unfused,
            "bytes_fused": o.bytes_fused, "bytes_saved": o.bytes_saved, "warnings": list(s.notes) + list(o.warnings)}


def analyze(model: torch.nn.Module, example_inputs: tuple, source: ProfileSource | LiveSource | None = None,
            device: str | torch.device = "cpu", model_label: str = "<model>", entry: str = "", dtype: str | None = None,
            command: str | None = None, time_forward: bool = True, forward_spec: TimingSpec = QUICK_SPEC,
            on_site: Callable[[int, int, Site], None] | None = None,
            on_note: Callable[[str], None] | None = None, coverage: bool = True) -> Analysis:
    """Capture, match and decide every site of ``model``; ``source`` None only captures and matches.

    ``on_site(index, sites, site)`` is called before each site is looked up or measured, ``on_note(message)`` at
    the other phases (capture, timing the forward pass): progress for the CLI."""
    device = as_device(device)
    note = on_note or (lambda message: None)
    note("capturing the model's graph and matching fusion sites")
    start = time.perf_counter()
    captured = capture(model, example_inputs)
    decided = decide_sites(captured, source, device, on_site)
    sites, outcomes = decided.sites, decided.outcomes
    capture_seconds = time.perf_counter() - start
    warnings = list(source.warnings()) if source else []
    if model.training:
        warnings.append("the model is in training mode: BatchNorm cannot be folded and dropout stays active; "
                        "return model.eval() from the model file (or pass --eval) to analyse inference")
    forward_ms = forward_noisy = None
    if time_forward:
        note("timing the whole forward pass")
        forward_ms, forward_noisy = measure_forward(model, tuple(example_inputs), device, forward_spec)
        if forward_noisy:
            warnings.append(f"the forward pass's time ({forward_ms:.4g} ms) is noisy: {forward_noisy}")
    profile_path = source.path if isinstance(source, ProfileSource) else None
    hardware = (source.profile.metadata.get("hardware") if isinstance(source, ProfileSource)
                else source.hw.name if isinstance(source, LiveSource) else None)
    metadata = {
        "model": model_label, "entry": entry, "device": str(device), "dtype": dtype,
        "mode": source.mode if source else "match_only", "profile": profile_path, "hardware": hardware,
        "device_name": device_name(device), "torch_version": torch.__version__, "fxfusion_version": __version__,
        "python_version": platform.python_version(), "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(["fxfusion"] + sys.argv[1:]), "host": socket.gethostname(),
        "timing": asdict(source.spec) if isinstance(source, LiveSource) else None,
        "profile_rule": getattr(source, "rule", None),
    }
    if source is not None:
        metadata["regime"] = getattr(source, "regime", PIPELINED)  # a caller's own source decides pipelined
    if source is None:
        warnings.append("matched only (--match-only): no decisions")
    warnings += [f"{o.site.id} {o.site.pattern} left neutral, its measurement noisy: {o.decision.reason}"
                 for o in outcomes if o.decision is not None and o.decision.noisy]
    covered = None
    if coverage:
        try:
            covered = measure_coverage(captured, sites, model, device).to_dict()
        except Exception as exc:  # coverage is a diagnosis: its failure must not lose the analysis
            warnings.append(f"coverage could not be measured: {type(exc).__name__}: {str(exc)[:200]}")
    result = Analysis(captured, sites, outcomes, metadata, warnings, capture_seconds, forward_ms, forward_noisy,
                      coverage=covered)
    check_rewrites(result, model)
    return result


def decide_sites(captured: CapturedModel, source: ProfileSource | LiveSource | None, device,
                 on_site: Callable[[int, int, Site], None] | None = None) -> Analysis:
    """Match the captured graphs and decide every legal site from ``source`` (one lookup per distinct pattern, shape
    and dtype, shared by identical sites); the analysis of the pipeline's first stages, without the report's extras
    (forward time, coverage, metadata beyond device and regime)."""
    sites = find_sites(captured)
    cache: dict[tuple, Lookup] = {}
    outcomes = []
    for i, site in enumerate(sites):
        lookup = None
        if source is not None and site.legal and site.pattern in REGISTRY:
            key = (site.pattern, tuple(site.shape.items()), site.dtype)
            if key not in cache:
                if on_site:
                    on_site(i, len(sites), site)
                cache[key] = source.lookup(REGISTRY[site.pattern], dict(site.shape), site.dtype)
            lookup = cache[key]
        outcomes.append(decide_site(site, lookup))
    metadata = {"device": str(as_device(device)), "regime": getattr(source, "regime", PIPELINED)}
    return Analysis(captured, sites, outcomes, metadata, [], 0.0)


def check_rewrites(result: Analysis, model: torch.nn.Module) -> None:
    """Count a 'fuse' site's saving only where ``--apply`` can put its winner into the graph.

    The 'fuse' sites are planned as ``--apply`` plans them (:meth:`FusionPlan.from_analysis`: no rewrite for the
    winner, or no gain) and rewritten on trial copies of the captured graphs
    (:func:`fxfusion.planning.rewrite.trial_rewrites`, the rules ``apply`` runs).  A site refused there keeps its own
    ``saved_ms``, gets the reason as ``not_applied`` and a warning, and leaves the summary's totals.  Not checked
    here: convexity (a cycle comes from fusing several groups together; ``--apply`` refuses those as not_convex) --
    its check searches the whole graph once per group.  Cost: one copy of each captured graph and one trial
    rewrite per 'fuse' site; nothing is timed."""
    fused = {o.site.id: o for o in result.outcomes if o.verdict == FUSE}
    if not fused:
        return
    plan = FusionPlan.from_analysis(result, convex=False)
    why = {r.site_id: "; ".join(r.reasons) for r in plan.refused if r.site_id in fused}
    why.update({r.site_id: r.detail for r in trial_rewrites(model, result.captured, plan.groups) if not r.applied})
    for site_id, reason in why.items():
        o = fused[site_id]
        o.not_applied = reason
        o.warnings.append(f"--apply cannot apply it ({reason}): its saving is not counted in the total")
