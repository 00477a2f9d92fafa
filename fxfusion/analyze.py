"""Deciding every site of a model at its own shape and dtype, and the analysis report.

For each fusible site (:func:`analyze`):
  1. find a measurement of the site's pattern: the nearest entry of a profile (``ProfileSource``), or a live
     :func:`fxfusion.calibrate.measure_entry` of eager / manual / compile variants at the site's exact shape
     (``LiveSource``; one measurement per distinct pattern, shape and dtype, shared by identical sites);
  2. the *baseline* is the variant that runs like the user's code: ``eager``, except for a linear whose bias is
     already in the GEMM (nn.Linear, F.linear, torch.addmm), which runs like the ``addmm`` variant; the verdict and
     interval are those of the best variant against that baseline (the decision's own, when the baseline is eager);
  3. estimated time saved per forward pass = baseline median - best median, for ``fuse`` verdicts only; a profile
     entry measured at another shape is scaled by the roofline time ratio of the two shapes, with a warning;
  4. bytes saved = the pattern's cost model, unfused - fused, at the site's shape.
Illegal and already-fused sites are reported, never decided.  The report is a dict validated against
schemas/analysis.schema.json; the table and markdown renderings are made from that dict.
"""

from __future__ import annotations

import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import torch

from fxfusion import __version__
from fxfusion.errors import FxFusionError
from fxfusion.hardware import HardwareSpec, detect, device_name
from fxfusion.patterns import REGISTRY, Pattern
from fxfusion.profile import Decision, Entry, Profile, SpeedupCI, decision_to_dict
from fxfusion.sites import ALREADY_FUSED, ILLEGAL, CapturedModel, Site
from fxfusion.stats import AVOID, FUSE, NEUTRAL, speedup, summarize
from fxfusion.timing import QUICK_SPEC, Clock, TimingSpec, clock_for, measure

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


@dataclass
class Lookup:
    """A measurement of one (pattern, shape, dtype): the entry, its decision, and how it relates to the site."""

    entry: Entry | None
    decision: Decision | None
    warnings: list[str] = field(default_factory=list)
    scale: float = 1.0  # site time / measured time, from the roofline model (1 for an exact shape)


class ProfileSource:
    """Decisions from a calibration profile: the nearest entry of the same pattern, dtype and device kind."""

    mode = "profile"

    def __init__(self, profile: Profile, device: str, path: str = ""):
        self.profile, self.device, self.path = profile, device, path

    def warnings(self) -> list[str]:
        meta = self.profile.metadata
        here_kind, there_kind = self.device.split(":")[0], meta.get("device", "cpu").split(":")[0]
        if here_kind != there_kind:
            return [f"the profile was measured on {there_kind} ({meta.get('device_name')}) but the model runs on "
                    f"{self.device}: its decisions may not transfer"]
        here = device_name(self.device)
        if meta.get("device_name") and meta["device_name"] != here:
            return [f"the profile was measured on other hardware ({meta['device_name']}, {meta.get('hardware')}); "
                    f"this is {here}: its decisions may not transfer"]
        return []

    def lookup(self, pattern: Pattern, shape: dict[str, int], dtype: str) -> Lookup:
        try:
            decision = self.profile.decide(pattern.name, shape, dtype, self.device)
        except FxFusionError as exc:
            return Lookup(None, None, [str(exc)])
        kind = self.device.split(":")[0]
        entries = [e for e in self.profile.entries if e.pattern == pattern.name and e.shape == decision.measured_shape
                   and e.device.split(":")[0] == kind]
        entry = next((e for e in entries if e.dtype == dtype), entries[0] if entries else None)
        lookup = Lookup(entry, decision, list(decision.warnings))
        if entry is not None and not decision.exact:
            lookup.scale = _roofline_ms(pattern, shape, entry) / _roofline_ms(pattern, entry.shape, entry)
            lookup.warnings.append(f"times scaled from the measured shape {_fmt_shape(entry.shape)} by the roofline "
                                   f"model (x{lookup.scale:.3g})")
        return lookup


class LiveSource:
    """Decisions measured now: measure_entry at the site's exact shape and dtype, once per distinct problem."""

    mode = "measure"

    def __init__(self, device: str, spec: TimingSpec = QUICK_SPEC, clock: Clock | None = None,
                 compile_modes: tuple[str, ...] = ("compile", "compile_reduce_overhead"),
                 hw: HardwareSpec | None = None, seed: int = 0):
        self.device, self.spec, self.compile_modes, self.seed = device, spec, compile_modes, seed
        self.clock = clock or clock_for(device)
        self.hw = hw or detect(device)

    def warnings(self) -> list[str]:
        return []

    def lookup(self, pattern: Pattern, shape: dict[str, int], dtype: str) -> Lookup:
        from fxfusion.calibrate import measure_entry

        try:
            entry = measure_entry(pattern, shape, dtype, self.device, self.hw, self.spec, self.clock,
                                  seed=self.seed, compile_modes=self.compile_modes)
        except FxFusionError as exc:
            return Lookup(None, None, [f"measuring {pattern.name} failed: {exc}"])
        return Lookup(entry, entry.decision)


def _fmt_shape(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _roofline_ms(pattern: Pattern, shape: dict, entry: Entry) -> float:
    itemsize = ITEMSIZE.get(entry.dtype, 4)
    r = entry.roofline
    return max(pattern.flops(shape) / (r["peak_gflops"] * 1e9),
               pattern.bytes(shape, itemsize, False) / (r["peak_gbs"] * 1e9)) * 1e3


@dataclass
class SiteOutcome:
    """A site with its decision, against the baseline that runs like the user's code."""

    site: Site
    verdict: str  # fuse | neutral | avoid | illegal | already_fused | undecided
    decision: Decision | None = None
    best_variant: str | None = None
    baseline_variant: str | None = None
    speedup: SpeedupCI | None = None
    baseline_ms: float | None = None
    best_ms: float | None = None
    saved_ms: float | None = None
    bytes_unfused: int | None = None
    bytes_fused: int | None = None
    bytes_saved: int | None = None
    warnings: list[str] = field(default_factory=list)
    # For a site whose activation is written out (the library measured it as one op): the library's fastest fused
    # variant, to be decided inside the model instead (FusionPlan.measure_in_model).
    in_model_candidate: str | None = None


def _ok(entry: Entry, name: str):
    v = entry.variant(name)
    return v if v is not None and v.status == "ok" and v.samples_ms and v.median_ms is not None else None


def _against(entry: Entry, baseline: str) -> tuple[str, str, SpeedupCI | None]:
    """(verdict, best variant, speedup) of the best correct variant against ``baseline``, as calibrate decides."""
    base = _ok(entry, baseline)
    rivals = [v for v in entry.variants if v.name not in ("eager", baseline) and _ok(entry, v.name)]
    if base is None or not rivals:
        return "undecided", baseline, None
    scored = []
    for v in rivals:
        s = speedup(base.samples_ms, v.samples_ms)
        scored.append((v, SpeedupCI(s.median, s.ci_low, s.ci_high), s.verdict()))
    fuse = [t for t in scored if t[2] == FUSE]
    if fuse:
        v, s, _ = max(fuse, key=lambda t: t[1].median)
        return FUSE, v.name, s
    v, s, _ = max(scored, key=lambda t: t[1].median)
    if all(t[2] == AVOID for t in scored):
        return AVOID, baseline, s
    return NEUTRAL, v.name, s


def _bytes(site: Site, pattern: Pattern, baseline: str) -> tuple[int, int]:
    itemsize = ITEMSIZE.get(site.dtype, 4)
    fused = pattern.bytes(site.shape, itemsize, True)
    if baseline == "addmm":  # bias already in the GEMM: what is left unfused is the activation's read and write
        return REGISTRY["linear_bias"].bytes(site.shape, itemsize, True) + 2 * itemsize * site.shape["M"] * \
            site.shape["N"], fused
    return pattern.bytes(site.shape, itemsize, False), fused


def decide_site(site: Site, lookup: Lookup | None) -> SiteOutcome:
    if site.status == ILLEGAL:
        return SiteOutcome(site, "illegal")
    if site.status == ALREADY_FUSED or site.pattern not in REGISTRY:
        return SiteOutcome(site, "already_fused")
    pattern = REGISTRY[site.pattern]
    uses_addmm = site.roles.get("bias_in_gemm") == "true"
    out = SiteOutcome(site, "undecided", warnings=list(lookup.warnings) if lookup else [])
    baseline = "eager"
    entry = lookup.entry if lookup else None
    if entry is not None and uses_addmm:
        if _ok(entry, "addmm"):
            baseline = "addmm"
        else:
            out.warnings.append("the addmm variant (how this site already runs) was not measured: compared "
                                "against eager, which overstates the gain")
    out.bytes_unfused, out.bytes_fused = _bytes(site, pattern, baseline)
    out.bytes_saved = max(0, out.bytes_unfused - out.bytes_fused)
    if lookup is None or lookup.decision is None:
        return out
    out.decision, out.baseline_variant = lookup.decision, baseline
    if entry is None:
        out.verdict, out.best_variant, out.speedup = lookup.decision.verdict, lookup.decision.best_variant, \
            lookup.decision.speedup
        return out
    if baseline == "eager":
        d = lookup.decision
        out.verdict, out.best_variant, out.speedup = d.verdict, d.best_variant, d.speedup
    else:
        out.verdict, out.best_variant, out.speedup = _against(entry, baseline)
        if out.verdict == "undecided":
            out.warnings.append(f"no correct variant other than {baseline} (how this site already runs) was "
                                "measured, so nothing to compare against (live: drop --no-compile)")
    base, best = _ok(entry, baseline), _ok(entry, out.best_variant) if out.best_variant else None
    out.baseline_ms = base.median_ms * lookup.scale if base else None
    out.best_ms = best.median_ms * lookup.scale if best else out.baseline_ms
    if out.verdict == FUSE and out.baseline_ms is not None and out.best_ms is not None:
        out.saved_ms = max(0.0, out.baseline_ms - out.best_ms)
    if out.verdict != FUSE and site.roles.get("act_written") == "true":
        rivals = [v for v in entry.variants if v.name not in ("eager", baseline) and _ok(entry, v.name)]
        if rivals:
            out.in_model_candidate = min(rivals, key=lambda v: v.median_ms).name
    return out


def measure_forward(model: torch.nn.Module, inputs: tuple, device: str, spec: TimingSpec = QUICK_SPEC,
                    clock: Clock | None = None) -> float:
    """Median milliseconds of one eager forward pass of the whole model (under no_grad)."""
    clock = clock or clock_for(device)

    def forward():
        with torch.no_grad():
            return model(*inputs)

    samples = measure({"forward": forward}, clock, spec)
    return summarize(samples.seconds["forward"]).median * 1e3


@dataclass
class Analysis:
    captured: CapturedModel
    sites: list[Site]
    outcomes: list[SiteOutcome]
    metadata: dict[str, Any]
    warnings: list[str]
    capture_seconds: float
    forward_ms: float | None = None
    verification: dict[str, Any] | None = None

    def decisions(self) -> dict[str, Decision]:
        """site id -> Decision, for every decided site (the plan acts on the ``fuse`` ones)."""
        return {o.site.id: o.decision for o in self.outcomes if o.decision is not None}

    def undecided(self) -> dict[str, str]:
        """site id -> why a legal site has no decision."""
        return {o.site.id: "; ".join(o.warnings) or "not decided (--match-only)"
                for o in self.outcomes if o.verdict == "undecided"}

    def to_dict(self) -> dict[str, Any]:
        from fxfusion.schema import SCHEMA_VERSION, validate

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
        validate(data, "analysis", source="the analysis report")
        return data

    def summary(self) -> dict[str, Any]:
        def count(**kw):
            return sum(1 for o in self.outcomes
                       if all(getattr(o.site if k == "status" else o, k) == v for k, v in kw.items()))

        fused = [o for o in self.outcomes if o.verdict == FUSE]
        matched = sum(len(s.nodes) for s in self.sites)
        return {"sites": len(self.sites), "fusible": count(status="fusible"), "illegal": count(status="illegal"),
                "already_fused": count(status="already_fused"), "fuse": count(verdict=FUSE),
                "neutral": count(verdict=NEUTRAL), "avoid": count(verdict=AVOID),
                "undecided": count(verdict="undecided"),
                "saved_ms_per_forward": sum(o.saved_ms or 0.0 for o in fused),
                "bytes_saved_per_forward": sum(o.bytes_saved or 0 for o in fused),
                "matched_nodes": matched, "unmatched_nodes": sum(self.captured.unmatched.values()),
                "forward_ms": self.forward_ms}


def _outcome_dict(o: SiteOutcome) -> dict[str, Any]:
    s = o.site
    return {"id": s.id, "pattern": s.pattern, "title": REGISTRY[s.pattern].title if s.pattern in REGISTRY else "SDPA",
            "graph_index": s.graph_index, "nodes": list(s.nodes), "shape": dict(s.shape), "dtype": s.dtype,
            "status": s.status, "reasons": list(s.reasons), "roles": dict(s.roles), "written_as": s.written_as,
            "source": s.source, "verdict": o.verdict, "best_variant": o.best_variant,
            "baseline_variant": o.baseline_variant, "speedup": asdict(o.speedup) if o.speedup else None,
            "decision": decision_to_dict(o.decision) if o.decision else None, "baseline_ms": o.baseline_ms,
            "best_ms": o.best_ms, "saved_ms": o.saved_ms, "bytes_unfused": o.bytes_unfused,
            "bytes_fused": o.bytes_fused, "bytes_saved": o.bytes_saved, "warnings": list(s.notes) + list(o.warnings)}


def analyze(model: torch.nn.Module, example_inputs: tuple, source: ProfileSource | LiveSource | None = None,
            device: str = "cpu", model_label: str = "<model>", entry: str = "", dtype: str | None = None,
            command: str | None = None, time_forward: bool = True, forward_spec: TimingSpec = QUICK_SPEC,
            on_site: Callable[[int, int, Site], None] | None = None) -> Analysis:
    """Capture, match and decide every site of ``model``; ``source`` None only captures and matches."""
    from fxfusion.capture import capture
    from fxfusion.match import find_sites

    start = time.perf_counter()
    captured = capture(model, example_inputs)
    sites = find_sites(captured)
    capture_seconds = time.perf_counter() - start
    warnings = list(source.warnings()) if source else []
    if model.training:
        warnings.append("the model is in training mode: BatchNorm cannot be folded and dropout stays active; "
                        "return model.eval() from the model file (or pass --eval) to analyse inference")
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
    forward_ms = None
    if time_forward:
        forward_ms = measure_forward(model, tuple(example_inputs), device, forward_spec)
    profile_path = source.path if isinstance(source, ProfileSource) else None
    hardware = (source.profile.metadata.get("hardware") if isinstance(source, ProfileSource)
                else source.hw.name if isinstance(source, LiveSource) else None)
    metadata = {
        "model": model_label, "entry": entry, "device": device, "dtype": dtype,
        "mode": source.mode if source else "match_only", "profile": profile_path, "hardware": hardware,
        "device_name": device_name(device), "torch_version": torch.__version__, "fxfusion_version": __version__,
        "python_version": platform.python_version(), "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(["fxfusion"] + sys.argv[1:]), "host": socket.gethostname(),
        "timing": asdict(source.spec) if isinstance(source, LiveSource) else None,
    }
    if source is None:
        warnings.append("matched only (--match-only): no decisions")
    return Analysis(captured, sites, outcomes, metadata, warnings, capture_seconds, forward_ms)


# -- renderings of the report dict -----------------------------------------------------------------------------------

def _ci(s: dict | None) -> str:
    return f"{s['median']:.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}]" if s else "-"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _bytes_h(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


COLUMNS = ("site", "pattern", "nodes", "shape", "dtype", "legality", "verdict", "best", "speedup [95% CI]",
           "saved ms/fwd", "bytes saved")


def rows(report: dict) -> list[tuple[str, ...]]:
    out = []
    for s in report["sites"]:
        out.append((s["id"], s["pattern"], str(len(s["nodes"])), _fmt_shape(s["shape"]), s["dtype"],
                    s["status"].replace("_", " "), s["verdict"].replace("_", " "), s["best_variant"] or "-",
                    _ci(s["speedup"]), _ms(s["saved_ms"]), _bytes_h(s["bytes_saved"])))
    return out


def total_line(report: dict) -> str:
    sm = report["summary"]
    fwd = sm.get("forward_ms")
    share = f" of a {fwd:.3f} ms forward pass ({sm['saved_ms_per_forward'] / fwd:.1%})" if fwd else ""
    return (f"{sm['sites']} sites: {sm['fusible']} fusible, {sm['illegal']} illegal, {sm['already_fused']} already "
            f"fused; {sm['fuse']} worth fusing. Estimated saving {sm['saved_ms_per_forward']:.4f} ms per forward"
            f"{share}, {_bytes_h(sm['bytes_saved_per_forward'])} less memory traffic.")


def _notes(report: dict) -> list[str]:
    lines = []
    for s in report["sites"]:
        if s["decision"] and s["baseline_variant"] == "eager":
            lines.append(f"{s['id']} {s['verdict']}: {s['decision']['reason']}")
        for r in s["reasons"]:
            lines.append(f"{s['id']} refused: {r}")
        for w in s["warnings"]:
            lines.append(f"{s['id']}: {w}")
    cap = report["capture"]
    lines += [f"graph break: {b}" for b in cap["graph_breaks"]] + [f"capture: {n}" for n in cap["notes"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    if report["unmatched"]:
        lines.append("unmatched ops: " + ", ".join(f"{k} x{v}" for k, v in report["unmatched"].items()))
    return lines


def _decided_by(meta: dict) -> str:
    return {"profile": f"profile {meta['profile']}", "measure": "live measurement"}.get(meta["mode"], "nothing "
                                                                                           "(match only)")


def render_table(report: dict):
    """A rich renderable: the sites table, then reasons, notes, unmatched ops and the total."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    meta = report["metadata"]
    source = _decided_by(meta)
    table = Table(title=f"{meta['model']} on {meta['device']} ({meta['device_name']}), decided by {source}, "
                        f"captured by {report['capture']['method']}")
    style = {"fuse": "green", "neutral": "yellow", "avoid": "red", "illegal": "red", "already_fused": "dim"}
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("nodes", "saved ms/fwd", "bytes saved") else "left")
    for s, row in zip(report["sites"], rows(report)):
        st = style.get(s["verdict"])
        table.add_row(*row[:6], f"[{st}]{row[6]}[/]" if st else row[6], *row[7:])
    parts = [table] + [Text(line) for line in _notes(report)] + [Text(total_line(report), style="bold")]
    return Group(*parts)


def render_markdown(report: dict) -> str:
    meta = report["metadata"]
    lines = [f"# fxfusion analysis: {meta['model']}", "",
             f"Device {meta['device']} ({meta['device_name']}), torch {meta['torch_version']}, "
             f"decided by {_decided_by(meta)}, "
             f"captured by {report['capture']['method']} ({report['capture']['graphs']} graph(s), "
             f"{report['capture']['nodes']} ops).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(report)]
    lines += ["", total_line(report), ""]
    lines += [f"- {line}" for line in _notes(report)]
    if report.get("verification"):
        from fxfusion.verify import render_markdown as verification_markdown

        lines += [""] + verification_markdown(report["verification"])
    return "\n".join(lines) + "\n"
