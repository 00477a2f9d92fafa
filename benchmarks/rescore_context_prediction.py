"""Planned + compile's in-context prediction from a bench_zoo JSON, in ms and as a fraction of the base.

    python3 benchmarks/rescore_context_prediction.py docs/results/h200-2026-12-01c/context/*.json

bench_zoo writes each model's analysis with its verification (the plan, every group's ``in_context``, the candidates'
medians).  This prints, per model and layout, the classes measured with the whole model compiled and the prediction
both ways: the sum of the classes' savings in ms as that run measured them (what the run printed when the prediction
was in ms), and the sum of their fractions of the control times the base's median in the candidates' run (the rule
of ``fxfusion.planning.candidates.CompiledPrediction``), each against the measured saving.  It recomputes from the
recorded numbers only; it times nothing.

Historical: it applies the rules as they were when call 4 of 2026-12-01 ran (a group left out only where its region
compiled was slower; no fastest-rounds figures), for that call's JSON, which predates the fractions the verification
now stores (``predicted_fraction`` and the rest on the candidate's row).  For a newer run read those fields instead.
"""

from __future__ import annotations

import json
import sys

BASES = {"planned+compile": ("captured+compile", "model"),
         "planned+channels_last+compile": ("channels_last+compile", "channels_last")}


def _left_out(g: dict) -> bool:
    """Planned + compile leaves the group out (FusionPlan.groups_for_compile): its region compiled was slower."""
    r = g.get("in_compiled_model")
    return not g.get("in_context") and bool(r) and r["ci_high_ms"] < 0 and not r.get("noisy")


def main(paths: list[str]) -> None:
    print("| model | candidate | classes (groups: saving ms / control ms) | measured saving ms | predicted ms, "
          "as measured (error) | predicted ms, fraction x base (error) |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        v = json.load(open(path)).get("verification") or {}
        rows = {r["name"]: r for r in (v.get("candidates") or {}).get("candidates", [])}
        groups = (v.get("plan") or {}).get("groups", [])
        for name, (base_name, layout) in BASES.items():
            row, base = rows.get(name), rows.get(base_name)
            if not row or not base or row.get("median_ms") is None or base.get("median_ms") is None:
                continue
            kept = [g for g in groups if not _left_out(g)]
            if not kept or any(not (g.get("in_context") or {}).get(layout) for g in kept):
                continue  # a prediction partly from regions: not this comparison
            classes = {tuple(g["in_context"][layout]["class_groups"]): g["in_context"][layout] for g in kept}
            control = next(iter(classes.values()))["control_ms"]
            capture = next(iter(classes.values())).get("capture_ms", 0.0)
            ms = sum(c["class_saving_ms"] for c in classes.values()) + capture
            cf = capture / control
            fraction = (sum(c["class_saving_ms"] for c in classes.values()) / control + cf) / (1 + cf)
            scaled = fraction * base["median_ms"]
            measured = base["median_ms"] - row["median_ms"]
            said = ", ".join(f"{len(k)}: {c['class_saving_ms']:.4f} / {c['control_ms']:.4f}" for k, c in classes.items())
            print(f"| {v.get('model') or path.split('/')[-1]} | {name} | {said} | {measured:.4f} | "
                  f"{ms:.4f} ({100 * (ms - measured) / abs(measured):+.0f}%) | "
                  f"{scaled:.4f} ({100 * (scaled - measured) / abs(measured):+.0f}%) |")


if __name__ == "__main__":
    main(sys.argv[1:])
