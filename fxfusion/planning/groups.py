"""What a plan is made of: a group (one site to rewrite, with the evidence of what it saves) or a refused site
(with why, a :class:`Refusal`, and the reasons in words)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from fxfusion.graph.sites import Flag
from fxfusion.measure.stats import Speedup
from fxfusion.planning.prediction import ClassTiming, Context, RegionTiming
from fxfusion.profiles.profile import Decision, decision_to_dict


class Refusal(StrEnum):
    """Why a site is not fused (``RefusedSite.why``)."""

    ILLEGAL = "illegal"  # the matcher marked it so (a shared rule or the family's own)
    ALREADY_FUSED = "already_fused"
    UNDECIDED = "undecided"  # no decision: the profile has no entry, or nothing was timed
    NOT_FUSE = "not_fuse"  # decided neutral or avoid
    NO_GAIN = "no_gain"  # the winner is how the site already runs
    NO_REWRITE = "no_rewrite"  # no rewrite rule puts the winner into the graph
    NOT_CONVEX = "not_convex"  # fusing it with the groups admitted before would create a cycle
    BELOW_OVERHEAD = "below_overhead"  # the plan's saving does not cover the captured graph's overhead
    SLOWER_IN_MODEL = "slower_in_model"  # its region inside the model is slower rewritten beyond the noise


ILLEGAL, UNDECIDED, NOT_FUSE, NO_GAIN, NO_REWRITE, NOT_CONVEX, BELOW_OVERHEAD, SLOWER_IN_MODEL = (
    Refusal.ILLEGAL, Refusal.UNDECIDED, Refusal.NOT_FUSE, Refusal.NO_GAIN, Refusal.NO_REWRITE, Refusal.NOT_CONVEX,
    Refusal.BELOW_OVERHEAD, Refusal.SLOWER_IN_MODEL)


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
    flags: frozenset[Flag] = frozenset()  # the site's (graph.sites.Flag), for its rewrite
    extrapolated: bool = False  # the entry was measured at another shape
    # The saving the pattern library measured (standalone calls); predicted_saving_ms is replaced by the in-model
    # saving once FusionPlan.measure_in_model has timed the group's region (fxfusion.planning.insitu), kept here as well.
    library_saving_ms: float | None = None
    decided_in_model: bool = False  # the library could not decide the site (activation written out); the model did
    # Its region timed inside the model, per context it was timed in (fxfusion.planning.insitu), and its class of
    # rewrites applied alone to the whole model, per context (fxfusion.planning.incontext): the evidence
    # fxfusion.planning.prediction.predict reads.
    regions: dict[Context, RegionTiming] = field(default_factory=dict)
    classes: dict[Context, ClassTiming] = field(default_factory=dict)

    @property
    def site_id(self) -> str:
        return self.id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision"] = decision_to_dict(self.decision) if self.decision is not None else None
        d["flags"] = sorted(self.flags)
        d["regions"] = {str(c): r.to_dict() for c, r in self.regions.items()}
        d["classes"] = {str(c): t.to_dict() for c, t in self.classes.items()}
        d["in_model"] = d["regions"].get(Context.EAGER)  # what the reports show per group
        return d


@dataclass
class RefusedSite:
    site_id: str
    pattern: str
    graph_index: int
    nodes: list[str]
    why: Refusal
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
