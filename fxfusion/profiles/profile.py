"""Profiles: the measured results of a calibration, and the questions cost models ask of them.

One serialization path: dataclasses -> dict (``to_dict``) -> JSON Schema validation -> atomic write.  Loading runs
the same path backwards and fails with one clear line on a corrupt, foreign or invalid file.

Two timing regimes (docs/decisions.md): a variant's top-level timing fields and an entry's ``decision`` are the
*isolated* regime, its ``pipelined`` object and the entry's ``pipelined_decision`` the *pipelined* one.  A schema 1.0
profile holds one regime only (:func:`legacy_regime`); it loads with a one-line note in :attr:`Profile.notes`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping
from warnings import warn

import torch

from fxfusion.errors import FxFusionError, FxFusionWarning
from fxfusion.measure.stats import UNDECIDED, Speedup
from fxfusion.measure.timing import ISOLATED, PIPELINED, REGIMES, check_regime
from fxfusion.profiles.schema import SCHEMA_VERSION, atomic_write_json, read_document, validate
from fxfusion.measure.devices import kind as device_kind

# decide() warns when the nearest entry is further than this in log-shape distance (about 2x in one dimension).
FAR_DISTANCE = math.log(2.0) + 1e-9


@dataclass
class Timing:
    """One regime's timing of a variant: raw samples, their summary, the speedup over eager and its verdict."""

    samples_ms: list[float] = field(default_factory=list)
    calls_per_sample: int | None = None
    median_ms: float | None = None
    iqr_ms: float | None = None
    noisy: bool = False
    speedup: Speedup | None = None
    verdict: str | None = None


@dataclass
class VariantResult:
    name: str
    kind: str  # "eager" | "manual" | "compile"
    status: str  # "ok" | "incorrect" | "not_a_fusion" | "unsupported" | "failed"
    reason: str | None = None
    note: str = ""
    samples_ms: list[float] = field(default_factory=list)
    calls_per_sample: int | None = None
    median_ms: float | None = None
    iqr_ms: float | None = None
    noisy: bool = False
    speedup: Speedup | None = None  # over eager; >1 is faster
    verdict: str | None = None
    compile_s: float | None = None
    kernels_per_call: float | None = None
    kernel_unit: str | None = None
    kernel_names: list[str] = field(default_factory=list)
    device_ms: float | None = None
    host_overhead_ms: float | None = None
    rel_error: float | None = None
    tolerance: float | None = None
    gflops: float | None = None
    gbs: float | None = None
    pct_of_roofline: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    pipelined: Timing | None = None  # the pipelined regime; the fields above are the isolated one

    def timing(self, regime: str) -> Timing | None:
        """This variant's timing in ``regime`` (None: not measured in it)."""
        if check_regime(regime) == PIPELINED:
            return self.pipelined
        return Timing(self.samples_ms, self.calls_per_sample, self.median_ms, self.iqr_ms, self.noisy, self.speedup,
                      self.verdict)


@dataclass
class Decision:
    pattern: str
    shape: dict[str, int]
    dtype: str
    device: str
    verdict: str  # "fuse" | "neutral" | "avoid"
    best_variant: str  # "eager" when nothing beats it
    speedup: Speedup | None
    reason: str
    measured_shape: dict[str, int] | None = None
    distance: float = 0.0  # log-shape distance from the measured entry; 0 for an exact match
    warnings: list[str] = field(default_factory=list)
    regime: str | None = None  # the timing regime the verdict was read in
    noisy: bool = False  # the measurement was unstable: the verdict was made neutral (reason starts "noisy")

    @property
    def exact(self) -> bool:
        return self.distance == 0.0

    @property
    def should_fuse(self) -> bool:
        return self.verdict == "fuse"

    @property
    def undecided(self) -> bool:
        """Nothing was timed against eager (no fused variant runs here): stored as ``neutral`` with no speedup, since
        no interval supports ``fuse`` or ``avoid``; tables show it as ``undecided``."""
        return self.verdict == "neutral" and self.speedup is None

    @property
    def display_verdict(self) -> str:
        """The verdict as tables show it: ``undecided`` for :attr:`undecided`, else the verdict."""
        return UNDECIDED if self.undecided else self.verdict


@dataclass
class Entry:
    pattern: str
    family: str
    title: str
    shape: dict[str, int]
    dtype: str
    device: str
    flops: int
    bytes_unfused: int
    bytes_fused: int
    memory_reduction: float
    roofline: dict[str, Any]
    variants: list[VariantResult]
    decision: Decision  # the isolated regime's
    extra: dict[str, Any] = field(default_factory=dict)
    pipelined_decision: Decision | None = None
    noise: dict[str, Any] = field(default_factory=dict)  # contention and stability of the measurement

    def key(self) -> str:
        return entry_key(self.pattern, self.shape, self.dtype, self.device)

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def regimes(self) -> tuple[str, ...]:
        """The regimes this entry was measured in: both, or (schema 1.0) the one its ``decision`` names."""
        return REGIMES if self.pipelined_decision is not None else (self.decision.regime or ISOLATED,)

    def decision_for(self, regime: str) -> Decision | None:
        if check_regime(regime) not in self.regimes():
            return None
        return self.pipelined_decision if regime == PIPELINED and self.pipelined_decision else self.decision

    def timing(self, name: str, regime: str) -> Timing | None:
        """Variant ``name``'s timing in ``regime``; None when it was not measured in it."""
        v = self.variant(name)
        if v is None or check_regime(regime) not in self.regimes():
            return None
        return v.timing(regime if self.pipelined_decision is not None else ISOLATED)


def entry_key(pattern: str, shape: Mapping[str, int], dtype: str, device: str) -> str:
    dims = ",".join(f"{k}={v}" for k, v in shape.items())
    return f"{pattern}[{dims}]:{dtype}@{device_kind(device)}"


def shape_distance(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """Euclidean distance between shapes in log space: 2x in one dimension is log(2) ~ 0.69."""
    return math.sqrt(sum(math.log(max(a[k], 1) / max(b[k], 1)) ** 2 for k in a))


@dataclass
class Profile:
    metadata: dict[str, Any]
    hardware: dict[str, Any]
    ceilings: dict[str, Any]
    entries: list[Entry]
    schema_version: str = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)  # said once when loading (not written): e.g. one regime only

    @property
    def regimes(self) -> tuple[str, ...]:
        """The timing regimes this profile's entries were measured in."""
        held = (self.metadata.get("timing") or {}).get("regimes")
        return tuple(held) if held else (legacy_regime(self.metadata.get("device", "cpu")),)

    # -- serialization -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "kind": "fxfusion.profile", "metadata": self.metadata,
                "hardware": self.hardware, "ceilings": self.ceilings,
                "entries": [entry_to_dict(e) for e in self.entries]}

    def save(self, path: str | Path) -> Path:
        data = self.to_dict()
        validate(data, "profile")
        return atomic_write_json(path, data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile", validated: bool = False) -> "Profile":
        if not validated:
            validate(data, "profile", source=source)
        profile = cls(metadata=data["metadata"], hardware=data["hardware"], ceilings=data["ceilings"],
                      entries=[entry_from_dict(e) for e in data["entries"]], schema_version=data["schema_version"])
        if profile.schema_version == "1.0":
            held = legacy_regime(profile.metadata.get("device", "cpu"))
            for e in profile.entries:
                e.decision.regime = e.decision.regime or held
            how = ("one flushed call per sample" if held == ISOLATED else
                   "on the CPU its samples are batches of back-to-back calls")
            profile.notes.append(f"{source} is a schema 1.0 profile: it holds the {held} regime only ({how}); "
                                 f"decisions asked for the other regime use it, with a warning")
        return profile

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        return cls.from_dict(read_document(path, "fxfusion.profile", "profile", schema="profile"), source=str(path),
                             validated=True)

    # -- questions -----------------------------------------------------------------------------------------------
    def find(self, pattern: str, shape: Mapping[str, int], dtype: str, device: str | None = None) -> list[Entry]:
        return [e for e in self.entries if e.pattern == pattern and e.dtype == dtype and e.shape == dict(shape)
                and (device is None or device_kind(e.device) == device_kind(device))]

    def decide(self, pattern: str, shape: Mapping[str, int], dtype: str = "float32",
               device: str | torch.device | None = None, regime: str = PIPELINED) -> Decision:
        """The decision of the nearest measured entry (same pattern, dtype and device) in ``regime``, saying how far
        it is.  Pipelined is the default: the regime of a forward pass, where a model's sites run."""
        check_regime(regime)
        device = str(device or self.metadata.get("device", "cpu"))
        candidates = [e for e in self.entries if e.pattern == pattern and device_kind(e.device) == device_kind(device)]
        if not candidates:
            devices = sorted({device_kind(e.device) for e in self.entries if e.pattern == pattern})
            if devices:
                raise FxFusionError(f"profile has entries for pattern {pattern!r} on {', '.join(devices)} only, "
                                    f"not on {device_kind(device)}")
            known = sorted({e.pattern for e in self.entries})
            raise FxFusionError(f"profile has no entries for pattern {pattern!r}; it has: {', '.join(known)}")
        same_dtype = [e for e in candidates if e.dtype == dtype]
        warnings = []
        if not same_dtype:
            have = sorted({e.dtype for e in candidates})
            warnings.append(f"no {dtype} entries for {pattern}; using {have[0]} (measured dtypes: {', '.join(have)})")
            same_dtype = [e for e in candidates if e.dtype == have[0]]
        shape = {k: int(v) for k, v in shape.items()}
        try:
            nearest = min(same_dtype, key=lambda e: shape_distance(shape, e.shape))
            distance = shape_distance(shape, nearest.shape)
        except KeyError as exc:
            raise FxFusionError(f"shape for {pattern} lacks dimension {exc.args[0]}") from None
        if distance > FAR_DISTANCE:
            warnings.append(f"nearest measured shape {nearest.shape} is far from {shape} "
                            f"(log distance {distance:.2f}); the decision is an extrapolation")
        d = nearest.decision_for(regime)
        if d is None:
            d = nearest.decision
            warnings.append(f"the profile holds no {regime} measurement of {pattern} (one regime only: "
                            f"{nearest.regimes()[0]}); using its {nearest.regimes()[0]} decision")
        return Decision(pattern=pattern, shape=shape, dtype=dtype, device=device, verdict=d.verdict,
                        best_variant=d.best_variant, speedup=d.speedup, reason=d.reason,
                        measured_shape=dict(nearest.shape), distance=round(distance, 6), warnings=warnings,
                        regime=d.regime or nearest.regimes()[0], noisy=d.noisy)

    def should_fuse(self, pattern: str, shape: Mapping[str, int], dtype: str = "float32",
                    device: str | None = None, regime: str = PIPELINED) -> bool:
        """Whether the nearest measured entry says ``fuse`` (in ``regime``).  A bare bool cannot carry the decision's
        warnings (the nearest measured shape is far away, another dtype stood in), so each is issued with
        :func:`warnings.warn` as an :class:`~fxfusion.errors.FxFusionWarning`; :meth:`decide` returns them with the
        whole decision."""
        decision = self.decide(pattern, shape, dtype, device, regime)
        for message in decision.warnings:
            warn(message, FxFusionWarning, stacklevel=2)
        return decision.should_fuse


def legacy_regime(device: str) -> str:
    """The one regime a schema 1.0 profile holds: on CUDA a sample was one isolated call (L2 flushed); on the CPU a
    batch of back-to-back calls, which is what 1.1 calls pipelined there."""
    return ISOLATED if device_kind(device) == "cuda" else PIPELINED


def entry_to_dict(e: Entry) -> dict[str, Any]:
    d = asdict(e)
    d["decision"] = decision_to_dict(e.decision)
    d["pipelined_decision"] = decision_to_dict(e.pipelined_decision) if e.pipelined_decision else None
    return d


def decision_to_dict(d: Decision) -> dict[str, Any]:
    out = asdict(d)
    out["exact"] = d.exact
    return out


def _speedup(d: dict | None) -> Speedup | None:
    return Speedup(**d) if d else None


def decision_from_dict(d: dict[str, Any]) -> Decision:
    d = {k: v for k, v in d.items() if k != "exact"}
    d["speedup"] = _speedup(d.get("speedup"))
    return Decision(**d)


def _timing(d: dict | None) -> Timing | None:
    return Timing(**{**d, "speedup": _speedup(d.get("speedup"))}) if d else None


def entry_from_dict(d: dict[str, Any]) -> Entry:
    d = dict(d)
    d["variants"] = [VariantResult(**{**v, "speedup": _speedup(v.get("speedup")), "pipelined": _timing(v.get("pipelined"))})
                     for v in d["variants"]]
    d["decision"] = decision_from_dict(d["decision"])
    if d.get("pipelined_decision"):
        d["pipelined_decision"] = decision_from_dict(d["pipelined_decision"])
    return Entry(**d)
