"""Deciding one site at its own shape and dtype: the one rule the analysis report and the plan share.

For each fusible site (:func:`decide_site`, given a :class:`Lookup` from a source), in one timing regime
(pipelined by default: the regime of a forward pass; isolated on request):
  1. find a measurement of the site's pattern: the nearest entry of a profile (``ProfileSource``; a profile of another
     device is refused unless allowed, :mod:`fxfusion.profiles.machine`), or a live
     :func:`fxfusion.calibration.calibrate.measure_entry` of eager / manual / compile variants at the site's exact shape
     (``LiveSource``; one measurement per distinct pattern, shape and dtype, shared by identical sites);
  2. the *baseline* is the variant that runs like the user's code, as the family's matcher recorded it
     (``Site.baseline_variant``): ``eager``, or e.g. for a linear whose bias is already in the GEMM (nn.Linear,
     F.linear, torch.addmm) the ``addmm`` variant; the verdict and
     interval are those of the best variant against that baseline (the decision's own, when the baseline is eager);
  3. estimated time saved per forward pass = baseline median - best median, for ``fuse`` verdicts only; a profile
     entry measured at another shape is scaled by the roofline time ratio of the two shapes, with a warning;
  4. bytes saved = the pattern's cost model, unfused - fused, at the site's shape.
Illegal and already-fused sites are reported, never decided; a decision the calibration found noisy stays neutral.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fxfusion.errors import FxFusionError
from fxfusion.fusions.registry import REGISTRY, Pattern
from fxfusion.graph.sites import ALREADY_FUSED, ILLEGAL, Flag, Site
from fxfusion.measure.hardware import HardwareSpec, detect
from fxfusion.measure.stats import AVOID, FUSE, NEUTRAL, UNDECIDED, speedup
from fxfusion.measure.noise import MEDIAN, NoiseGuard, entry_speedup
from fxfusion.measure.timing import PIPELINED, QUICK_SPEC, Clock, TimingSpec, check_regime, clock_for
from fxfusion.profiles.machine import check_profile
from fxfusion.profiles.profile import Decision, Entry, Profile, Timing
from fxfusion.measure.stats import Speedup
from fxfusion.calibration.calibrate import measure_entry
from fxfusion.measure.devices import kind as device_kind
from fxfusion.measure.devices import as_device
from fxfusion.measure.devices import dtype as dtype_record



@dataclass
class Lookup:
    """A measurement of one (pattern, shape, dtype): the entry, its decision, and how it relates to the site."""

    entry: Entry | None
    decision: Decision | None
    warnings: list[str] = field(default_factory=list)
    scale: float = 1.0  # site time / measured time, from the roofline model (1 for an exact shape)
    regime: str = PIPELINED  # the regime whose timings decide_site reads off the entry


class ProfileSource:
    """Decisions from a calibration profile: the nearest entry of the same pattern, dtype and device kind.

    A profile of another device is an FxFusionError naming both, unless ``allow_foreign`` (then its entries are
    looked up on the device it was measured on, and every report warns).  A pattern the profile has no entry for (on
    this device kind) is measured live at the site's shape by ``live`` -- a :class:`LiveSource`; True (the default):
    one made on first need, on this device, as ``--measure`` makes it (:data:`QUICK_SPEC`, the compile variants);
    False: such sites stay undecided -- and :meth:`warnings` says how many and what decides them."""

    mode = "profile"

    def __init__(self, profile: Profile, device: str, path: str = "", regime: str = PIPELINED,
                 allow_foreign: bool = False, live: "LiveSource | bool" = True):
        self.profile, self.device, self.path, self.regime = profile, as_device(device), path, check_regime(regime)
        self._warnings = check_profile(profile, self.device, allow_foreign, path or "the profile")
        there = profile.metadata.get("device", "cpu")
        self.lookup_device = self.device if device_kind(there) == device_kind(self.device) else as_device(
            device_kind(there))
        self.rule: str | None = None  # why this profile (set by whoever chose it)
        self.live = live
        self.lacking: dict[str, int] = {}  # pattern the profile has no entry for -> distinct site shapes looked up

    def warnings(self) -> list[str]:
        return list(self._warnings) + self._lacking_summary()

    def _lacking_summary(self) -> list[str]:
        if not self.lacking:
            return []
        names = ",".join(sorted(self.lacking))
        lacking = (f"{sum(self.lacking.values())} site shape(s) of {len(self.lacking)} pattern(s) the profile has no "
                   f"entries for ({names})")
        if self.live:
            return [f"{lacking} were measured live at their shapes ({_live_how(self.live)}); calibrate --patterns "
                    f"{names} to keep them in the profile"]
        return [f"{lacking} were not decided: decide them live (--measure), or calibrate --patterns {names} into the "
                "profile"]

    def lookup(self, pattern: Pattern, shape: dict[str, int], dtype: str) -> Lookup:
        kind = device_kind(self.lookup_device)
        if not any(e.pattern == pattern.name and device_kind(e.device) == kind for e in self.profile.entries):
            return self._lookup_lacking(pattern, shape, dtype)
        try:
            decision = self.profile.decide(pattern.name, shape, dtype, self.lookup_device, self.regime)
        except FxFusionError as exc:
            return Lookup(None, None, [str(exc)], regime=self.regime)
        return self.lookup_for(pattern, shape, dtype, decision)

    def _lookup_lacking(self, pattern: Pattern, shape: dict[str, int], dtype: str) -> Lookup:
        """A pattern the profile has no entry for: measured live (``self.live``), or undecided saying how to decide."""
        self.lacking[pattern.name] = self.lacking.get(pattern.name, 0) + 1
        lacks = f"the profile has no entries for pattern {pattern.name!r} on {device_kind(self.lookup_device)}"
        if not self.live:
            return Lookup(None, None, [f"{lacks}: measure it live (--measure) or calibrate --patterns {pattern.name}"],
                          regime=self.regime)
        if self.live is True:  # as --measure would (compile variants too: an nn.Linear site has no other rival)
            self.live = LiveSource(self.device, QUICK_SPEC, regime=self.regime)
        lookup = self.live.lookup(pattern, shape, dtype)
        lookup.warnings.insert(0, f"measured live at this shape ({_live_how(self.live)}): {lacks}")
        return lookup

    def lookup_for(self, pattern: Pattern, shape: dict[str, int], dtype: str, decision: Decision) -> Lookup:
        """The Lookup behind a decision already made (the entry at its measured shape), without deciding again."""
        kind = device_kind(self.lookup_device)
        entries = [e for e in self.profile.entries if e.pattern == pattern.name and e.shape == decision.measured_shape
                   and device_kind(e.device) == kind]
        entry = next((e for e in entries if e.dtype == dtype), entries[0] if entries else None)
        lookup = Lookup(entry, decision, list(decision.warnings), regime=decision.regime or self.regime)
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
                 hw: HardwareSpec | None = None, seed: int = 0, regime: str = PIPELINED,
                 guard: NoiseGuard | None = None):
        self.device, self.spec, self.compile_modes, self.seed = as_device(device), spec, compile_modes, seed
        self.regime = check_regime(regime)
        # the real machine is watched for noise; a caller's (fake) clock times no reference kernel
        self.guard = guard or (NoiseGuard.for_device(self.device) if clock is None else NoiseGuard())
        self.clock = clock or clock_for(device)
        self.hw = hw or detect(device)
        self.rule: str | None = None

    def warnings(self) -> list[str]:
        return []

    def lookup(self, pattern: Pattern, shape: dict[str, int], dtype: str) -> Lookup:
        try:
            entry = measure_entry(pattern, shape, dtype, self.device, self.hw, self.spec, self.clock,
                                  seed=self.seed, compile_modes=self.compile_modes, guard=self.guard)
        except FxFusionError as exc:
            return Lookup(None, None, [f"measuring {pattern.name} failed: {exc}"], regime=self.regime)
        return Lookup(entry, entry.decision_for(self.regime), regime=self.regime)


def _live_how(live) -> str:
    compiles = not isinstance(live, LiveSource) or bool(live.compile_modes)
    return "eager, hand-fused and compile variants" if compiles else "eager and hand-fused variants"


def _fmt_shape(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _roofline_ms(pattern: Pattern, shape: dict, entry: Entry) -> float:
    itemsize = dtype_record(entry.dtype).itemsize
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
    speedup: Speedup | None = None
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
    # Why ``analyze --apply`` could not put the winner of a 'fuse' site into the graph (None: it can, or not checked);
    # such a site keeps its own saved_ms but is not counted in the analysis's total (planning.analyze).
    not_applied: str | None = None


def _ok(entry: Entry, name: str, regime: str = PIPELINED) -> Timing | None:
    """Variant ``name``'s timing in ``regime`` when it ran correctly and was timed in it."""
    v, t = entry.variant(name), entry.timing(name, regime)
    return t if v is not None and v.status == "ok" and t and t.samples_ms and t.median_ms is not None else None


def _against(entry: Entry, baseline: str, regime: str = PIPELINED) -> tuple[str, str, Speedup | None]:
    """(verdict, best variant, speedup) of the best correct variant against ``baseline``, as calibrate decides."""
    base = _ok(entry, baseline, regime)
    rivals = [v for v in entry.variants if v.name not in ("eager", baseline) and _ok(entry, v.name, regime)]
    if base is None or not rivals:
        return UNDECIDED, baseline, None
    scored = []
    for v in rivals:
        other = _ok(entry, v.name, regime).samples_ms
        # samples of one entry were taken in the same rounds: read as calibrate read them (paired, or floors when
        # the measurement saw contention)
        s = (entry_speedup(base.samples_ms, other, entry.noise.get("statistic", MEDIAN))
             if len(other) == len(base.samples_ms) else speedup(base.samples_ms, other))
        scored.append((v, s, s.verdict()))
    fuse = [t for t in scored if t[2] == FUSE]
    if fuse:
        v, s, _ = max(fuse, key=lambda t: t[1].median)
        return FUSE, v.name, s
    v, s, _ = max(scored, key=lambda t: t[1].median)
    if all(t[2] == AVOID for t in scored):
        return AVOID, baseline, s
    return NEUTRAL, v.name, s


def _bytes(site: Site, pattern: Pattern, baseline: str) -> tuple[int, int]:
    itemsize = dtype_record(site.dtype).itemsize
    return pattern.bytes_as(site.shape, itemsize, baseline), pattern.bytes(site.shape, itemsize, True)


def decide_site(site: Site, lookup: Lookup | None) -> SiteOutcome:
    if site.status == ILLEGAL:
        return SiteOutcome(site, ILLEGAL)
    if site.status == ALREADY_FUSED or site.pattern not in REGISTRY:
        return SiteOutcome(site, ALREADY_FUSED)
    pattern = REGISTRY[site.pattern]
    out = SiteOutcome(site, UNDECIDED, warnings=list(lookup.warnings) if lookup else [])
    baseline = "eager"
    entry = lookup.entry if lookup else None
    regime = lookup.regime if lookup else PIPELINED
    if entry is not None and regime not in entry.regimes():  # one regime only (a 1.0 profile): its decision used it
        regime = entry.regimes()[0]
    if entry is not None and site.baseline_variant != "eager":  # the family says how the site already runs
        if _ok(entry, site.baseline_variant, regime):
            baseline = site.baseline_variant
        else:
            out.warnings.append(f"the {site.baseline_variant} variant (how this site already runs) was not measured: "
                                "compared against eager, which overstates the gain")
    out.bytes_unfused, out.bytes_fused = _bytes(site, pattern, baseline)
    out.bytes_saved = max(0, out.bytes_unfused - out.bytes_fused)
    if lookup is None or lookup.decision is None:
        return out
    out.decision, out.baseline_variant = lookup.decision, baseline
    if lookup.decision.undecided:  # nothing was timed against eager: no evidence either way
        out.warnings.append(f"undecided: {lookup.decision.reason}")
    if entry is None:
        out.verdict, out.best_variant, out.speedup = lookup.decision.display_verdict, lookup.decision.best_variant, \
            lookup.decision.speedup
        return out
    if baseline == "eager":
        d = lookup.decision
        out.verdict, out.best_variant, out.speedup = d.display_verdict, d.best_variant, d.speedup
    else:
        out.verdict, out.best_variant, out.speedup = _against(entry, baseline, regime)
        if out.verdict == UNDECIDED:
            out.warnings.append(f"no correct variant other than {baseline} (how this site already runs) was "
                                "measured, so nothing to compare against (live: drop --no-compile)")
        elif lookup.decision.noisy and out.verdict != NEUTRAL:  # the measurement was unstable: never act on it
            out.warnings.append(f"{out.verdict} against {baseline} made neutral: the measurement was noisy")
            out.verdict = NEUTRAL
    base = _ok(entry, baseline, regime)
    best = _ok(entry, out.best_variant, regime) if out.best_variant else None
    out.baseline_ms = base.median_ms * lookup.scale if base else None
    out.best_ms = best.median_ms * lookup.scale if best else out.baseline_ms
    if out.verdict == FUSE and out.baseline_ms is not None and out.best_ms is not None:
        out.saved_ms = max(0.0, out.baseline_ms - out.best_ms)
    if out.verdict != FUSE and Flag.ACT_WRITTEN in site.flags:
        rivals = [v for v in entry.variants if v.name not in ("eager", baseline) and _ok(entry, v.name, regime)]
        if rivals:
            out.in_model_candidate = min(rivals, key=lambda v: _ok(entry, v.name, regime).median_ms).name
    return out


def lookup_for_decision(profile: Profile | None, site: Site, decision: Decision, device: str):
    """The profile entry behind ``decision`` (via the analysis's ProfileSource), or the decision alone."""
    regime = decision.regime or PIPELINED
    if profile is None or site.pattern not in REGISTRY:
        return Lookup(None, decision, regime=regime)
    # whoever made the decisions chose the profile (plan() and analyze refuse a foreign one unless allowed)
    source = ProfileSource(profile, device, regime=regime, allow_foreign=True)
    lookup = source.lookup_for(REGISTRY[site.pattern], dict(site.shape), site.dtype, decision)
    if lookup.entry is None or decision.measured_shape is None:
        return Lookup(None, decision, ["the decision is not the profile's: its entry's timings are not used"],
                      regime=regime)
    return lookup
