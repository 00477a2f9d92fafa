"""A plan over dynamic shapes verified: its planned model against float64 at several shapes of its range -- the
buckets it was measured at and one it never saw -- and, with ``analyze --apply``, its candidates timed end to end at
each bucket (:func:`fxfusion.planning.verify.verify_plan` there), one candidate chosen for the whole range.

The candidate served is the one chosen at the most buckets (the middle bucket's on a tie), provided it verified at
every bucket; the report keeps each bucket's choice and times, so a candidate that wins at one end of the range and
loses at the other is seen, not averaged away.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch import nn

from fxfusion.calibration.variants import one_line
from fxfusion.graph.symbolic import DynamicDims, sizes_text
from fxfusion.planning.apply import apply
from fxfusion.planning.dynamic import shapes_to_verify
from fxfusion.planning.outputs import check_outputs, float64_reference, to_reference
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.verify import VerificationResult


def check_shapes(model: nn.Module, dims: DynamicDims, example_inputs: tuple, planned: nn.Module,
                 device: str = "cpu") -> list[dict[str, Any]]:
    """``planned`` against float64 at each shape of :func:`fxfusion.planning.dynamic.shapes_to_verify` of ``dims``: one
    row per shape -- sizes, whether it was measured, ok, the largest relative error and its limit, the reference."""
    rows = []
    for i, (sizes, measured) in enumerate(shapes_to_verify(dims)):
        inputs = dims.resize(tuple(example_inputs), sizes, seed=100 + i)
        row: dict[str, Any] = {"shape": sizes_text(sizes), "sizes": sizes, "measured": measured,
                               "input_shapes": [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)]}
        try:
            with torch.no_grad():
                got, original = planned(*inputs), model(*inputs)
        except Exception as exc:
            rows.append({**row, "ok": False, "error": None, "limit": None, "reference": None,
                         "reason": f"the planned model failed: {one_line(exc)}"})
            continue
        reference, why_not = float64_reference(model, inputs)
        name = "float64" if reference is not None else "original"
        if reference is None:
            reference = torch.utils._pytree.tree_map(to_reference, original)
        checks, failure = check_outputs(got, original, reference, str(device))
        errors = [c.error for c in checks if c.error is not None]
        rows.append({**row, "ok": not failure, "error": max(errors) if errors else None,
                     "limit": min((c.limit for c in checks if c.error is not None), default=None),
                     "reference": name, "reason": failure or why_not})
    return rows


def choose_over_buckets(results: list[tuple[dict[str, int], VerificationResult]]) -> dict[str, Any]:
    """The candidate served over the range (module doc), as ``plan.choice`` takes it: the middle bucket's choice
    dict with the candidate, why, and each bucket's choice."""
    chosen = [(sizes, (r.candidates or {}).get("chosen")) for sizes, r in results]
    middle = results[len(results) // 2][1]
    counts = Counter(name for _, name in chosen if name)
    ranked = sorted(counts, key=lambda n: (-counts[n], n != (middle.candidates or {}).get("chosen")))
    verified_everywhere = [n for n in ranked if all(_verified(r, n) for _, r in results)]
    name = verified_everywhere[0] if verified_everywhere else "eager"
    per = "; ".join(f"{sizes_text(s)}: {n}" for s, n in chosen)
    choice = dict(middle.candidates or {})
    choice["chosen"] = name
    choice["why"] = (f"chosen at {counts.get(name, 0)} of {len(results)} buckets and verified at every one ({per})"
                     if verified_everywhere else f"no candidate verified at every bucket ({per}): eager")
    choice["buckets"] = [{"bucket": sizes_text(s), "chosen": n} for s, n in chosen]
    return choice


def _verified(r: VerificationResult, name: str) -> bool:
    if name == "eager":
        return True
    rows = (r.candidates or {}).get("candidates", [])
    return r.ok and any(row.get("name") == name and row.get("verified") for row in rows)


def bucket_summary(sizes: dict[str, int], r: VerificationResult) -> dict[str, Any]:
    """What the report keeps of one bucket's end-to-end verification."""
    timings = {n: {"median_ms": t.median_ms, "speedup": t.speedup, "status": t.status}
               for n, t in r.timings.items()}
    return {"bucket": sizes_text(sizes), "ok": r.ok, "reason": r.reason, "timings": timings,
            "chosen": (r.candidates or {}).get("chosen")}


def verify_over_range(model: nn.Module, example_inputs: tuple, plan: FusionPlan,
                      verify_at: Callable[[tuple], VerificationResult], device: str = "cpu"
                      ) -> tuple[VerificationResult, dict[str, Any]]:
    """Each bucket's end-to-end verification (``verify_at(inputs)``), then the float64 check at every shape: the
    middle bucket's result, carrying the range's verdict, and the report's ``dynamic`` section."""
    dims = plan.captured.dynamic.dims
    measured = [s for s, m in shapes_to_verify(dims) if m]
    results = [(sizes, verify_at(dims.resize(tuple(example_inputs), sizes, seed=i)))
               for i, sizes in enumerate(measured)]
    shapes = check_shapes(model, dims, example_inputs, apply(model, plan, candidate="planned"), device)
    middle = results[len(results) // 2][1]
    plan.choice = choose_over_buckets(results)
    middle.candidates = {**(middle.candidates or {}), "chosen": plan.choice["chosen"], "why": plan.choice["why"]}
    failed = [r for r in shapes if not r["ok"]] + [{"shape": sizes_text(s), "reason": r.reason}
                                                   for s, r in results if not r.ok]
    if failed:
        middle.ok = False
        middle.reason = f"not verified at {failed[0]['shape']}: {failed[0]['reason']}"
    else:
        new = [r["shape"] for r in shapes if not r["measured"]]
        middle.reason = (f"outputs match float64 at {len(shapes)} shapes ({', '.join(r['shape'] for r in shapes)}; "
                         f"never measured: {', '.join(new) or 'none'}); " + middle.reason)
    section = report_section(plan, [bucket_summary(s, r) for s, r in results], shapes)
    return middle, section


def report_section(plan: FusionPlan, buckets: list[dict[str, Any]], shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``dynamic`` section: the ranges, each site at each bucket, each bucket's times, the shapes
    verified."""
    sym = plan.captured.dynamic
    return {"ranges": {r.name: [r.lo, r.hi] for r in sym.dims.ranges},
            "axes": [{str(d): n for d, n in a.items()} for a in sym.dims.axes],
            "buckets": [b["bucket"] for b in buckets] or [sizes_text(s) for s, m in shapes_to_verify(sym.dims) if m],
            "sites": sym.buckets, "end_to_end": buckets, "verified_shapes": shapes,
            "chosen": (plan.choice or {}).get("chosen"), "why": (plan.choice or {}).get("why")}


def shapes_line(rows: list[dict[str, Any]]) -> str:
    """One line: at which shapes the outputs matched (those never measured named), or the first that did not."""
    bad = next((r for r in rows if not r["ok"]), None)
    if bad is not None:
        return f"outputs do not match at {bad['shape']}: {bad['reason']}"
    new = [r["shape"] for r in rows if not r["measured"]]
    worst = max((r["error"] for r in rows if r["error"] is not None), default=0.0)
    return (f"outputs match {rows[0]['reference'] if rows else 'float64'} at {len(rows)} shapes "
            f"({'; '.join(r['shape'] for r in rows)}{'; never measured: ' + ', '.join(new) if new else ''}; largest "
            f"relative error {worst:.1e})")
