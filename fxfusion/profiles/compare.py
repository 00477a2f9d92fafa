"""Side by side: two profiles (two machines, or one machine before and after a change), and where fusion flips.

Algorithm (:func:`compare_profiles`), linear in the number of entries:
  1. index each profile's entries by (pattern, shape, dtype); the device is left out of the key, because comparing
     a CPU with a GPU is the point.  A key seen twice in one profile keeps its first entry and adds a note;
  2. for each key in both, pair the two decisions: a *verdict flip* when the verdicts differ, a *best-variant flip*
     when the best variants differ, and speedup ratios (B over A) of the decisions and of each variant timed on both;
  3. keys in only one profile are listed, not dropped;
  4. decision boundaries, per profile: for each (pattern, dtype), its entries sorted by FLOPs; wherever the verdict
     changes between two consecutive sizes, the boundary lies between those two shapes.

The JSON form (:meth:`Comparison.to_json`) is validated against schemas/comparison.schema.json before it is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fxfusion.measure.stats import Speedup, interval_text
from fxfusion.measure.timing import PIPELINED, check_regime
from fxfusion.profiles.profile import Entry, Profile
from fxfusion.profiles.schema import SCHEMA_VERSION, json_text, validate

Key = tuple[str, tuple[tuple[str, int], ...], str]


def _key(e: Entry) -> Key:
    return e.pattern, tuple(e.shape.items()), e.dtype


def _shape_text(shape: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items())


@dataclass
class Side:
    """One profile's decision for a matched entry."""

    verdict: str
    best_variant: str
    speedup: Speedup | None
    eager_ms: float | None
    best_ms: float | None

    @classmethod
    def of(cls, e: Entry, regime: str = PIPELINED) -> "Side":
        d = _decision(e, regime)
        eager, best = _timing(e, "eager", regime), _timing(e, d.best_variant, regime)
        return cls(verdict=d.verdict, best_variant=d.best_variant, speedup=d.speedup,
                   eager_ms=eager.median_ms if eager else None, best_ms=best.median_ms if best else None)


def _decision(e: Entry, regime: str):
    """``e``'s decision in ``regime``, or its only one (a schema-1.0 entry measured in one regime)."""
    return e.decision_for(regime) or e.decision


def _timing(e: Entry, name: str, regime: str):
    return e.timing(name, regime) or e.timing(name, e.regimes()[0])


@dataclass
class EntryPair:
    pattern: str
    shape: dict[str, int]
    dtype: str
    flops: int
    a: Side
    b: Side
    speedup_ratio: float | None  # B's decision speedup / A's: >1 means fusing pays more on B
    variant_ratios: dict[str, float] = field(default_factory=dict)  # per variant timed on both: B speedup / A speedup
    eager_time_ratio: float | None = None  # A eager ms / B eager ms: >1 means B runs the unfused chain faster

    @property
    def verdict_flip(self) -> bool:
        return self.a.verdict != self.b.verdict

    @property
    def best_flip(self) -> bool:
        return self.a.best_variant != self.b.best_variant

    @property
    def flipped(self) -> bool:
        return self.verdict_flip or self.best_flip

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(verdict_flip=self.verdict_flip, best_flip=self.best_flip)
        return d


@dataclass
class Boundary:
    """Where one profile's verdict changes between two consecutive sizes of a (pattern, dtype)."""

    profile: str  # "a" | "b"
    pattern: str
    dtype: str
    below_shape: dict[str, int]
    below_flops: int
    below_verdict: str
    above_shape: dict[str, int]
    above_flops: int
    above_verdict: str


def _ratio(b: Speedup | None, a: Speedup | None) -> float | None:
    return b.median / a.median if a and b else None


def _pair(ea: Entry, eb: Entry, regime: str = PIPELINED) -> EntryPair:
    ratios = {}
    for va in ea.variants:
        vb = eb.variant(va.name)
        ta, tb = _timing(ea, va.name, regime), _timing(eb, va.name, regime) if vb else None
        if va.kind != "eager" and vb and va.status == vb.status == "ok" and ta and tb and ta.speedup and tb.speedup:
            ratios[va.name] = tb.speedup.median / ta.speedup.median
    a, b = Side.of(ea, regime), Side.of(eb, regime)
    eager_ratio = a.eager_ms / b.eager_ms if a.eager_ms and b.eager_ms else None
    return EntryPair(pattern=ea.pattern, shape=dict(ea.shape), dtype=ea.dtype, flops=ea.flops, a=a, b=b,
                     speedup_ratio=_ratio(b.speedup, a.speedup), variant_ratios=ratios, eager_time_ratio=eager_ratio)


def decision_boundaries(profile: Profile, name: str, regime: str = PIPELINED) -> list[Boundary]:
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in profile.entries:
        groups.setdefault((e.pattern, e.dtype), []).append(e)
    out = []
    for (pattern, dtype), entries in groups.items():
        entries.sort(key=lambda e: (e.flops, tuple(e.shape.values())))
        for lo, hi in zip(entries, entries[1:]):
            vlo, vhi = _decision(lo, regime).verdict, _decision(hi, regime).verdict
            if vlo != vhi:
                out.append(Boundary(name, pattern, dtype, dict(lo.shape), lo.flops, vlo, dict(hi.shape), hi.flops,
                                    vhi))
    return out


def _label(profile: Profile) -> str:
    m = profile.metadata
    return f"{m.get('hardware')} ({m.get('device_name')}, {m.get('device')})"


@dataclass
class Comparison:
    a_label: str
    b_label: str
    a_metadata: dict[str, Any]
    b_metadata: dict[str, Any]
    pairs: list[EntryPair]
    boundaries: list[Boundary]
    only_in_a: list[str]
    only_in_b: list[str]
    notes: list[str] = field(default_factory=list)
    regime: str = PIPELINED  # the regime whose decisions are compared

    @property
    def flips(self) -> list[EntryPair]:
        return [p for p in self.pairs if p.flipped]

    def to_dict(self) -> dict[str, Any]:
        keep = ("hardware", "device", "device_name", "torch_version", "threads", "date", "command")
        return {
            "schema_version": SCHEMA_VERSION, "kind": "fxfusion.comparison", "regime": self.regime,
            "a": {"label": self.a_label, **{k: self.a_metadata.get(k) for k in keep}},
            "b": {"label": self.b_label, **{k: self.b_metadata.get(k) for k in keep}},
            "summary": {"matched": len(self.pairs), "verdict_flips": sum(p.verdict_flip for p in self.pairs),
                        "best_variant_flips": sum(p.best_flip for p in self.pairs),
                        "only_in_a": len(self.only_in_a), "only_in_b": len(self.only_in_b)},
            "pairs": [p.to_dict() for p in self.pairs],
            "boundaries": [asdict(b) for b in self.boundaries],
            "only_in_a": self.only_in_a, "only_in_b": self.only_in_b, "notes": self.notes,
        }

    def to_json(self) -> str:
        """The JSON file: :meth:`to_dict`, checked against schemas/comparison.schema.json, then serialized the way
        every fxfusion file is (:func:`fxfusion.profiles.schema.json_text`); the caller writes it atomically or prints it."""
        data = self.to_dict()
        validate(data, "comparison", source="the comparison")
        return json_text(data)

    # -- rendering -----------------------------------------------------------------------------------------------
    def summary_line(self) -> str:
        s = self.to_dict()["summary"]
        return (f"{self.regime} regime: {s['matched']} entries in both, {s['verdict_flips']} verdict flips, "
                f"{s['best_variant_flips']} best-variant flips; {s['only_in_a']} only in A, {s['only_in_b']} only in B")

    def rows(self, pairs: list[EntryPair]) -> list[list[str]]:
        return [[p.pattern, _shape_text(p.shape), p.dtype, f"{p.flops:.3g}", p.a.verdict, p.b.verdict,
                 p.a.best_variant, p.b.best_variant, _ci(p.a.speedup), _ci(p.b.speedup), _x(p.speedup_ratio),
                 _x(p.eager_time_ratio), _flip_text(p)] for p in pairs]

    HEADERS = ("pattern", "shape", "dtype", "FLOPs", "A verdict", "B verdict", "A best", "B best",
               "A speedup [95% CI]", "B speedup [95% CI]", "speedup B/A", "eager A/B", "flip")
    BOUNDARY_HEADERS = ("pattern", "dtype", "profile", "smaller size", "larger size")

    def boundary_rows(self) -> list[list[str]]:
        name = {"a": "A", "b": "B"}
        return [[b.pattern, b.dtype, name[b.profile],
                 f"{b.below_verdict} at {_shape_text(b.below_shape)} ({b.below_flops:.3g} FLOPs)",
                 f"{b.above_verdict} at {_shape_text(b.above_shape)} ({b.above_flops:.3g} FLOPs)"]
                for b in self.boundaries]

    def to_markdown(self) -> str:
        def table(headers, rows):
            lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])

        def who(name, label, meta):
            date = "" if str(meta.get("date")) in label else f", measured {meta.get('date')}"
            return f"- **{name}**: {label}{date}, torch {meta.get('torch_version')}, `{meta.get('command')}`"

        out = ["# fxfusion compare", "", who("A", self.a_label, self.a_metadata),
               who("B", self.b_label, self.b_metadata), "", self.summary_line() + ".", "", "speedup B/A: B's decision speedup over A's (>1: fusing pays more on "
               "B); eager A/B: A's eager time over B's (>1: B is faster unfused).", "", "## Flips", ""]
        out.append(table(self.HEADERS, self.rows(self.flips)) if self.flips else "No verdict or best variant flips.")
        out += ["", "## Decision boundaries", ""]
        out.append(table(self.BOUNDARY_HEADERS, self.boundary_rows()) if self.boundaries
                   else "Neither profile changes verdict between consecutive sizes of any pattern.")
        out += ["", "## All entries in both", ""]
        out.append(table(self.HEADERS, self.rows(self.pairs)) if self.pairs else "The profiles share no entry.")
        for title, keys in (("Only in A", self.only_in_a), ("Only in B", self.only_in_b)):
            if keys:
                out += ["", f"## {title}", ""] + [f"- `{k}`" for k in keys]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def _arrow(a: str, b: str) -> str:
    return a if a == b else f"{a} -> {b}"


def _ci(s: Speedup | None) -> str:
    return interval_text(s)


def _x(r: float | None) -> str:
    return f"{r:.3g}" if r is not None else "-"


def _flip_text(p: EntryPair) -> str:
    parts = []
    if p.verdict_flip:
        parts.append(f"verdict {p.a.verdict} -> {p.b.verdict}")
    if p.best_flip:
        parts.append(f"best {p.a.best_variant} -> {p.b.best_variant}")
    return "; ".join(parts) or "-"


def _index(profile: Profile, name: str, notes: list[str]) -> dict[Key, Entry]:
    index: dict[Key, Entry] = {}
    for e in profile.entries:
        k = _key(e)
        if k in index:
            notes.append(f"profile {name} lists {e.pattern} {_shape_text(e.shape)} {e.dtype} more than once "
                         f"({index[k].device} and {e.device}); the first is compared")
            continue
        index[k] = e
    return index


def inconsistencies(data: dict[str, Any]) -> list[tuple[str, str]]:
    """What a schema-valid comparison document gets wrong about itself, as (JSON path, message): flip flags that
    disagree with the two verdicts or best variants, and summary counts that disagree with the lists they count."""
    out = []
    for i, p in enumerate(data["pairs"]):
        for flag, field_ in (("verdict_flip", "verdict"), ("best_flip", "best_variant")):
            if p[flag] != (p["a"][field_] != p["b"][field_]):
                out.append((f"$.pairs[{i}].{flag}", f"is {str(p[flag]).lower()} but a.{field_} is "
                            f"{p['a'][field_]!r} and b.{field_} is {p['b'][field_]!r}"))
    counts = {"matched": len(data["pairs"]), "verdict_flips": sum(p["verdict_flip"] for p in data["pairs"]),
              "best_variant_flips": sum(p["best_flip"] for p in data["pairs"]),
              "only_in_a": len(data["only_in_a"]), "only_in_b": len(data["only_in_b"])}
    for name, n in counts.items():
        if data["summary"][name] != n:
            out.append((f"$.summary.{name}", f"is {data['summary'][name]} but the document lists {n}"))
    return out


def compare_profiles(a: Profile, b: Profile, a_label: str | None = None, b_label: str | None = None,
                     regime: str = PIPELINED) -> Comparison:
    """The two profiles' decisions in ``regime`` (pipelined by default: the regime a model is planned in); a profile
    measured in one regime only (schema 1.0) gives its own, with a note."""
    notes: list[str] = []
    check_regime(regime)
    for name, p in (("A", a), ("B", b)):
        if regime not in p.regimes:
            notes.append(f"profile {name} was measured in the {'/'.join(p.regimes)} regime only: its decisions in "
                         f"that regime are compared")
    ia, ib = _index(a, "A", notes), _index(b, "B", notes)
    pairs = [_pair(ea, ib[k], regime) for k, ea in ia.items() if k in ib]

    def key_text(e: Entry) -> str:
        return f"{e.pattern}[{_shape_text(e.shape)}]:{e.dtype}"

    la, lb = a_label or _label(a), b_label or _label(b)
    if la == lb:  # same machine, e.g. before and after an upgrade: the dates tell them apart
        la, lb = f"{la}, measured {a.metadata.get('date')}", f"{lb}, measured {b.metadata.get('date')}"
    return Comparison(a_label=la, b_label=lb, a_metadata=dict(a.metadata), b_metadata=dict(b.metadata), pairs=pairs,
                      boundaries=decision_boundaries(a, "a", regime) + decision_boundaries(b, "b", regime),
                      only_in_a=[key_text(e) for k, e in ia.items() if k not in ib],
                      only_in_b=[key_text(e) for k, e in ib.items() if k not in ia], notes=notes, regime=regime)
