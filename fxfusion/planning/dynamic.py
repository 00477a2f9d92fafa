"""One plan for a range of shapes: every batch size (dim 0 of the inputs) and sequence length (dim 1 of token inputs)
in a declared range, instead of the example inputs' shapes only (``--dynamic batch=1:32,seq=16:512``).

Method (:func:`plan_over_range`; ``fxfusion.plan(..., dynamic=)`` and ``analyze --apply --dynamic`` run it):
  1. the ranges are read (:func:`parse_dynamic`) and placed on the inputs (:func:`resolve`): ``batch`` is dim 0 of
     every input of the first input's batch size, ``seq`` dim 1 of every integer input (token ids, masks) of the
     first one's length; a range not given takes :data:`DEFAULTS`, ``seq`` at most the model's position limit;
  2. the model is captured with symbolic dimensions (``torch.export`` ``Dim``, one per range): one graph for every
     shape of the range (first, so a model that does not export so fails before anything is measured);
  3. the model is planned at each bucket of the range -- every range at its smallest, middle and largest size
     (:func:`buckets`) -- as at any shape: captured there, each site decided and its region timed at that shape; the
     symbolic graph's sites correspond to the buckets' by site id and pattern;
  4. a site is planned (:func:`combine`) only where every bucket planned it with the same variant: a rewrite that
     pays at one bucket and not at another is refused, with each bucket's verdict.  An attention whose mask a bucket
     proved causal (a constant of its capture) is, in the symbolic graph, a mask computed from the sequence length:
     it is proved causal at *every* length of the range (:mod:`fxfusion.planning.causal_proof`: the mask evaluated
     from the graph at each) before it becomes SDPA's ``is_causal``, else refused with the length where it is not;
  5. the plan is applied to the symbolic graph and run at the smallest and largest shapes against the original
     model (:func:`drop_specialised`): a rewrite that traced a size into the graph is refused there.
The planned model checks every call against the ranges (:class:`fxfusion.graph.symbolic.RangeGuard`).  ``--apply``
then verifies it against float64 at the buckets and at a shape never measured (:func:`shapes_to_verify`).
Cost: one plan per bucket (three), one symbolic capture and match, the mask evaluations (at most
:data:`fxfusion.planning.causal_proof.PROOF_ELEMENTS` mask elements in all), one application of the plan per shape
checked.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from fxfusion.errors import FxFusionError
from fxfusion.fusions.attention.rewrite import PROVED_CAUSAL
from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.sites import CapturedModel, Site
from fxfusion.graph.symbolic import DimRange, DynamicDims, sizes_text
from fxfusion.measure.correctness import relative_error, tolerance
from fxfusion.planning.apply import apply
from fxfusion.planning.causal_proof import prove_causal
from fxfusion.planning.groups import ILLEGAL, NOT_FUSE, RefusedSite
from fxfusion.planning.plan import FusionPlan

NAMES = ("batch", "seq")
# A range not given: batch sizes a server batches, sequence lengths of a chat turn (seq at most the model's limit).
DEFAULTS = {"batch": (1, 32), "seq": (16, 512)}
MASKED = "masked_attention"


# -- the ranges --------------------------------------------------------------------------------------------------------

def parse_dynamic(text: str) -> dict[str, tuple[int | None, int | None]]:
    """``"batch,seq"`` or ``"batch=1:32,seq=16:512"`` (``seq=:256``: the default smallest) -> name -> (lo, hi)."""
    out: dict[str, tuple[int | None, int | None]] = {}
    for part in [p.strip() for p in str(text).split(",") if p.strip()] or [""]:
        name, _, rng = part.partition("=")
        name = name.strip()
        if name not in NAMES:
            raise FxFusionError(f"--dynamic: unknown dimension {name!r}; name batch and/or seq, e.g. "
                                "batch=1:32,seq=16:512")
        if name in out:
            raise FxFusionError(f"--dynamic: {name} is given twice")
        lo = hi = None
        if rng:
            a, colon, b = rng.partition(":")
            try:
                lo, hi = (int(a) if a.strip() else None), (int(b) if b.strip() else None)
            except ValueError:
                lo = hi = -1
            if not colon or (lo is not None and lo < 1) or (hi is not None and hi < 1):
                raise FxFusionError(f"--dynamic: {part!r} is not NAME=LO:HI with positive sizes, e.g. {name}=1:32")
            if lo is not None and hi is not None and hi <= lo:
                raise FxFusionError(f"--dynamic: {part!r} must span more than one size (LO < HI)")
        out[name] = (lo, hi)
    return out


def position_limit(model: nn.Module) -> int | None:
    """The longest sequence the model's config allows (Hugging Face's max_position_embeddings / n_positions)."""
    for m in model.modules():
        config = getattr(m, "config", None)
        for key in ("max_position_embeddings", "n_positions"):
            limit = getattr(config, key, None)
            if isinstance(limit, int) and limit > 0:
                return limit
    return None


def resolve(spec: str | dict | DynamicDims, model: nn.Module, inputs: tuple) -> DynamicDims:
    """The ranges of ``spec`` placed on ``inputs`` (module doc, step 1)."""
    if isinstance(spec, DynamicDims):
        return spec
    asked = parse_dynamic(spec) if isinstance(spec, str) else dict(spec)
    tensors = [x for x in inputs if isinstance(x, torch.Tensor) and x.dim() >= 1]
    if not tensors:
        raise FxFusionError("--dynamic needs tensor inputs: the model takes none")
    tokens = [x for x in tensors if not x.is_floating_point() and x.dim() >= 2]
    if "seq" in asked and not tokens:
        raise FxFusionError("--dynamic seq is dim 1 of the token (integer) inputs, and this model takes none; "
                            "use --dynamic batch")
    axes: list[dict[int, str]] = []
    for x in inputs:
        a: dict[int, str] = {}
        if isinstance(x, torch.Tensor) and "batch" in asked and x.dim() >= 1 and x.shape[0] == tensors[0].shape[0]:
            a[0] = "batch"
        if "seq" in asked and any(x is t for t in tokens) and x.shape[1] == tokens[0].shape[1]:
            a[1] = "seq"
        axes.append(a)
    ranges = []
    for name in NAMES:
        if name not in asked:
            continue
        lo, hi = asked[name]
        lo = lo if lo is not None else DEFAULTS[name][0]
        limit = position_limit(model) if name == "seq" else None
        if hi is None:
            hi = min(DEFAULTS[name][1], limit) if limit else DEFAULTS[name][1]
        elif limit and hi > limit:
            raise FxFusionError(f"--dynamic: seq={lo}:{hi} goes past the model's {limit} positions")
        if hi <= lo:
            raise FxFusionError(f"--dynamic: {name}={lo}:{hi} spans one size or none")
        ranges.append(DimRange(name, lo, hi))
    return DynamicDims(tuple(ranges), tuple(axes))


def buckets(dims: DynamicDims) -> list[dict[str, int]]:
    """The shapes a shape-dependent decision is measured at: every range at its smallest, middle, largest size."""
    out: list[dict[str, int]] = []
    for i in range(3):
        sizes = {r.name: r.points()[i] for r in dims.ranges}
        if sizes not in out:
            out.append(sizes)
    return out


def shapes_to_verify(dims: DynamicDims) -> list[tuple[dict[str, int], bool]]:
    """(sizes, measured) for the float64 check: the buckets, then one shape never measured -- each range at a size off
    its buckets (:func:`_unmeasured`), else the smallest of one range with the largest of the others."""
    measured = buckets(dims)
    new = {r.name: _unmeasured(r) for r in dims.ranges}
    if new in measured and len(dims.ranges) > 1:
        new = {r.name: (r.lo if i == 0 else r.hi) for i, r in enumerate(dims.ranges)}
    return [(s, True) for s in measured] + ([(new, False)] if new not in measured else [])


def _unmeasured(r: DimRange) -> int:
    """A size of ``r`` off its buckets, nearest halfway between the smallest and the middle one (odd preferred: a
    size no power-of-two kernel path was tuned for); the smallest where every size is a bucket."""
    lo, mid, hi = r.points()
    free = [v for v in range(r.lo, r.hi + 1) if v not in (lo, mid, hi)]
    return min(free, key=lambda v: (abs(v - (lo + mid) / 2), v % 2 == 0, v)) if free else lo


def capture_inputs(dims: DynamicDims, inputs: tuple) -> tuple:
    """Inputs to capture the symbolic graph at: the example inputs where each range's size lies in it and is not 1
    (export specialises a dimension of size 1), else the inputs at the middle bucket."""
    sizes = dims.sizes_of(inputs)
    if all(dims.range(n).lo <= s <= dims.range(n).hi and s > 1 for n, s in sizes.items()):
        return inputs
    return dims.resize(inputs, {r.name: max(2, r.points()[1]) for r in dims.ranges})


# -- one plan from the buckets' ----------------------------------------------------------------------------------------

def _bucket_row(sizes: dict[str, int], plan: FusionPlan, site_id: str) -> dict[str, Any]:
    g = next((g for g in plan.groups if g.id == site_id), None)
    if g is not None:
        s = g.speedup
        return {"bucket": sizes_text(sizes), "planned": True, "pattern": g.pattern, "variant": g.variant,
                "speedup": None if s is None else {"median": s.median, "ci_low": s.ci_low, "ci_high": s.ci_high},
                "predicted_saving_ms": g.predicted_saving_ms}
    r = next((r for r in plan.refused if r.site_id == site_id), None)
    pattern = next((s.pattern for s in plan.sites if s.id == site_id), None)
    return {"bucket": sizes_text(sizes), "planned": False, "pattern": pattern, "variant": None, "speedup": None,
            "predicted_saving_ms": None, "why": (f"{r.why}: " + "; ".join(r.reasons)) if r else "no such site"}


def plain_shapes(sites):
    """Sites of a symbolic graph with their shape keys as ints (a matcher may keep a size it computed as a SymInt,
    which a report or a saved plan cannot hold): the example's sizes."""
    for site in sites:
        site.shape = {k: int(v) for k, v in site.shape.items()}
    return sites


def combine(captured: CapturedModel, per_bucket: list[tuple[dict[str, int], FusionPlan]],
            device: torch.device) -> FusionPlan:
    """The plan of the symbolic capture: each site planned where every bucket planned it alike (module doc, step 4).
    The buckets' rows go on ``captured.dynamic.buckets`` for the report."""
    sites = plain_shapes(find_sites(captured))
    groups, refused, rows = [], [], []
    for site in sites:
        per = [_bucket_row(sizes, plan, site.id) for sizes, plan in per_bucket]
        planned = [r for r in per if r["planned"]]
        reason, why = None, NOT_FUSE
        if not planned:  # refused alike at every bucket (already fused, illegal, not worth it): the middle's reasons
            r = next((r for r in per_bucket[len(per_bucket) // 2][1].refused if r.site_id == site.id), None)
            if r is not None:
                refused.append(RefusedSite(site.id, site.pattern, site.graph_index, list(site.nodes), r.why,
                                           list(r.reasons)))
            rows.append({"id": site.id, "pattern": site.pattern, "kept": False, "why": None, "buckets": per})
            continue
        if len(planned) < len(per):
            reason = "not planned at every bucket: " + "; ".join(f"{r['bucket']}: {r['why']}" for r in per
                                                                if not r["planned"])
        elif len({(r["pattern"], r["variant"]) for r in planned}) > 1:
            reason = "the buckets plan it differently: " + "; ".join(f"{r['bucket']}: {r['pattern']} {r['variant']}"
                                                                   for r in planned)
        elif site.pattern != planned[0]["pattern"]:
            if site.pattern == MASKED and planned[0]["pattern"] in PROVED_CAUSAL:
                reason, why = prove_causal(captured, site), ILLEGAL
                if reason is None:
                    site.pattern = planned[0]["pattern"]
                    ranges = ", ".join(map(str, captured.dynamic.dims.ranges))
                    site.notes.append(f"mask proved causal at every shape of {ranges}")
                else:
                    reason = f"causal at each bucket, not proved at every shape of the range: {reason}"
            else:
                reason = f"a {site.pattern} site in the symbolic graph, {planned[0]['pattern']} at the buckets"
        rows.append({"id": site.id, "pattern": site.pattern, "kept": reason is None, "why": reason, "buckets": per})
        if reason is not None:
            refused.append(RefusedSite(site.id, site.pattern, site.graph_index, list(site.nodes), why, [reason]))
            continue
        middle = next(g for g in per_bucket[len(per_bucket) // 2][1].groups if g.id == site.id)
        groups.append(dataclasses.replace(middle, pattern=site.pattern, graph_index=site.graph_index,
                                          nodes=list(site.nodes), roles=dict(site.roles), flags=site.flags,
                                          shape=dict(site.shape)))
    captured.dynamic.buckets = rows
    warnings = [f"at {sizes_text(sizes)}: {w}" for sizes, p in per_bucket for w in p.warnings]
    plan = FusionPlan(captured=captured, sites=sites, groups=groups, refused=refused, device=device,
                      warnings=list(dict.fromkeys(warnings)))
    middle = per_bucket[len(per_bucket) // 2][1]
    plan.overhead_ms, plan.regime = middle.overhead_ms, middle.regime
    return plan


def drop_specialised(model: nn.Module, plan: FusionPlan, inputs: tuple) -> FusionPlan:
    """The plan less the groups whose rewrite does not hold across the range (module doc, step 5): the planned model
    run at the smallest and largest shapes against the original model; where it fails, each group alone."""
    dims: DynamicDims = plan.captured.dynamic.dims
    shapes = [dims.resize(inputs, {r.name: r.lo for r in dims.ranges}, seed=1),
              dims.resize(inputs, {r.name: r.hi for r in dims.ranges}, seed=2)]
    if not plan.groups or _holds(model, plan, shapes) is None:
        return plan
    kept, refused = [], list(plan.refused)
    for g in plan.groups:
        why = _holds(model, dataclasses.replace(plan, groups=[g]), shapes)
        if why is None:
            kept.append(g)
        else:
            refused.append(RefusedSite(g.id, g.pattern, g.graph_index, list(g.nodes), ILLEGAL,
                                       [f"its rewrite does not hold across the range: {why}"]))
    return dataclasses.replace(plan, groups=kept, refused=refused)


def _holds(model: nn.Module, plan: FusionPlan, shapes: list[tuple]) -> str | None:
    try:
        planned = apply(model, plan, candidate="planned")
    except Exception as exc:
        return f"applying failed ({type(exc).__name__}: {str(exc)[:160]})"
    for inputs in shapes:
        with torch.no_grad():
            try:
                got = planned(*inputs)
            except Exception as exc:
                return f"at {tuple(inputs[0].shape)} it fails ({type(exc).__name__}: {str(exc)[:160]})"
            want = model(*inputs)
        for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
            if isinstance(a, torch.Tensor) and a.is_floating_point() and (
                    a.shape != b.shape or relative_error(a, b.double()) > 10 * tolerance(a.dtype, False)):
                return f"at {tuple(inputs[0].shape)} its output is off the original's"
    return None


def plan_over_range(model: nn.Module, example_inputs: tuple, dynamic: str | dict | DynamicDims,
                    plan_at: Callable[[tuple, dict[str, int]], FusionPlan], device: torch.device) -> FusionPlan:
    """Module doc, steps 1-5: ``plan_at(inputs, sizes)`` plans the model at one bucket (``fxfusion.plan``'s stages,
    or ``analyze --apply``'s)."""
    if not isinstance(model, nn.Module):
        raise FxFusionError(f"a plan over dynamic shapes needs the nn.Module, got {type(model).__name__}")
    dims = resolve(dynamic, model, tuple(example_inputs))
    captured = capture(model, capture_inputs(dims, tuple(example_inputs)), dynamic=dims)  # first: fails fast
    per_bucket = [(sizes, plan_at(dims.resize(tuple(example_inputs), sizes, seed=i), sizes))
                  for i, sizes in enumerate(buckets(dims))]
    return drop_specialised(model, combine(captured, per_bucket, device), captured.example_inputs)


# -- a saved plan's range ----------------------------------------------------------------------------------------------

def to_record(dims: DynamicDims) -> dict[str, Any]:
    """What a saved plan keeps of its range (``schemas/plan.schema.json``'s ``dynamic``)."""
    return {"ranges": {r.name: [r.lo, r.hi] for r in dims.ranges},
            "axes": [{str(d): n for d, n in a.items()} for a in dims.axes],
            "buckets": [sizes_text(s) for s in buckets(dims)]}


def from_record(record: dict[str, Any]) -> DynamicDims:
    ranges = tuple(DimRange(n, int(lo), int(hi)) for n, (lo, hi) in record["ranges"].items())
    return DynamicDims(ranges, tuple({int(d): n for d, n in a.items()} for a in record["axes"]))


def sizes_of_specs(dims: DynamicDims, specs: list[dict[str, Any]]) -> dict[str, int]:
    """Each range's size in saved input specs (``saved.input_specs``)."""
    return {n: int(specs[i]["shape"][d]) for i, a in enumerate(dims.axes) for d, n in a.items()
            if specs[i].get("shape") is not None}


def relabel_causal(captured: CapturedModel, sites: dict[str, Site], wanted: dict[str, str]) -> list[str]:
    """Where a saved plan rewrites a site as a causal attention that the symbolic graph matches as masked: the mask
    proved causal at every shape of the range again, the site relabelled; the problems, one sentence each."""
    problems = []
    plain_shapes(sites.values())
    for site_id, pattern in wanted.items():
        site = sites.get(site_id)
        if site is None or site.pattern != MASKED or pattern not in PROVED_CAUSAL:
            continue
        why = prove_causal(captured, site)
        if why is None:
            site.pattern = pattern
        else:
            problems.append(f"site {site_id}'s mask is not proved causal over the range here: {why}")
    return problems
