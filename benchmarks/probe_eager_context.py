"""Does the *planned* candidate's saving add up region by region?  Regions against classes applied to the whole model.

The planned candidate (rewrites, the rest eager) is predicted from each group's region timed inside the model
(:meth:`fxfusion.planning.plan.FusionPlan.measure_in_model`) plus what the captured graph saves over the module.  On
the H200 that prediction read high (docs/results/h200-2026-12-01d: GPT-2 predicted 0.67 of eager's time saved,
measured 0.47; Llama decode 0.18 against 0.11), while the compiled candidates, predicted from classes of rewrites
applied to the whole model (:mod:`fxfusion.planning.incontext`), came within 7-13%.  A guess to test: on a GPU a
region timed back to back is host-bound or device-bound on its own, while inside the model the host runs ahead of
the device during the large GEMMs, so a region's host-side saving is only partly a saving of the model.

This probe times, in one interleaved run (the verification's clock and spec): the model (eager), the captured graph,
the planned model, and each class of the plan's groups (one pattern and variant) applied alone to the model, and
prints the planned saving as a fraction of eager's time three ways: measured (paired per round), predicted from the
regions (the plan's ``predicted_fraction``), and predicted from the classes (what capturing saves plus each class's
saving over the captured graph, each paired per round), with each side's fastest rounds (10th percentiles) too.
It only measures; it changes nothing in the plan.  Its first run (H200, 2026-12-01 11:24 UTC,
docs/results/h200-2026-12-01e: regions +17% / +47%, classes -3% / -20%) led to the classes becoming the product's
prediction of the planned candidate (:func:`fxfusion.planning.incontext.measure_in_eager_context`, fc2e3df); the
probe stays as the check that compares the two from one run.

    python3 benchmarks/probe_eager_context.py models/zoo/hf_gpt2.py:bench --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxfusion.graph.loader import load_model  # noqa: E402
from fxfusion.measure.devices import dtype as dtype_record  # noqa: E402
from fxfusion.measure.stats import paired_fraction, summarize  # noqa: E402
from fxfusion.measure.timing import measure  # noqa: E402


def probe(spec: str, device: str, dtype: str | None, rounds: int) -> list[str]:
    from fxfusion.planning.analyze import analyze
    from fxfusion.planning.apply import apply
    from fxfusion.planning.candidates import PLANNED
    from fxfusion.planning.decide import LiveSource
    from fxfusion.planning.incontext import classes
    from fxfusion.planning.insitu import measure_overhead, model_clock
    from fxfusion.planning.plan import FusionPlan
    from fxfusion.planning.rewrite import captured_module
    from fxfusion.planning.verify import VERIFY_SPEC

    loaded = load_model(spec, device=device, dtype=dtype_record(dtype).torch if dtype else None)
    model, inputs = loaded.model, tuple(loaded.example_inputs)
    result = analyze(model, inputs, LiveSource(device, compile_modes=()), device=device, model_label=spec,
                     dtype=dtype, coverage=False)
    plan = FusionPlan.from_analysis(result, device=device)
    overhead = measure_overhead(model, result.captured, inputs, device)
    plan.measure_in_model(model, inputs, device, reference_ms=overhead.eager_ms)
    plan.require_saving_over(overhead)
    if not plan.groups:
        return [f"| {spec} | nothing to apply | | | | |"]
    thunks = {"eager": model, "captured": captured_module(model, plan.captured),
              "planned": apply(model, plan, candidate=PLANNED)}
    groups = classes(plan.groups)
    for i, members in enumerate(groups):
        thunks[f"class{i}"] = apply(model, dataclasses.replace(plan, groups=members), candidate=PLANNED)
    fns = {k: (lambda m=m: m(*inputs)) for k, m in thunks.items()}
    with torch.no_grad():
        s = measure(fns, model_clock(device), dataclasses.replace(VERIFY_SPEC, rounds=rounds, budget_s=60.0)).seconds
    floor = {k: summarize(v).floor for k, v in s.items()}
    eager = s["eager"]
    measured = paired_fraction(eager, s["planned"], eager)
    capture = paired_fraction(eager, s["captured"], eager)
    per_class = [paired_fraction(s["captured"], s[f"class{i}"], eager) for i in range(len(groups))]
    by_classes = capture.median + sum(c.median for c in per_class)
    floor_measured = (floor["eager"] - floor["planned"]) / floor["eager"]
    floor_classes = (floor["eager"] - floor["captured"] + sum(floor["captured"] - floor[f"class{i}"]
                                                              for i in range(len(groups)))) / floor["eager"]
    regions = plan.predicted_fraction

    def err(p: float | None, m: float) -> str:
        return "-" if p is None or m == 0 else f"{100 * (p - m) / abs(m):+.0f}%"

    said = ", ".join(f"{g[0].pattern}:{g[0].variant} x{len(g)} {c.median:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]"
                     for g, c in zip(groups, per_class))
    return [f"| {spec} | {summarize(eager).median * 1e3:.4f} | {measured.median:.3f} [{measured.ci_low:.3f}, "
            f"{measured.ci_high:.3f}] | {'-' if regions is None else f'{regions:.3f}'} ({err(regions, measured.median)}) | "
            f"{by_classes:.3f} ({err(by_classes, measured.median)}) | {floor_measured:.3f} / {floor_classes:.3f} "
            f"({err(floor_classes, floor_measured)}) | capture {capture.median:.3f}; {said} |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    print(f"# probe_eager_context, torch {torch.__version__}, {args.device}"
          f"{f' ({torch.cuda.get_device_name()})' if args.device.startswith('cuda') else ''}, dtype {args.dtype}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.rounds} interleaved rounds")
    print("| model | eager ms | planned saving / eager, measured (paired) | predicted from regions (error) | "
          "predicted from classes (error) | fastest rounds: measured / from classes (error) | fractions of eager |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.models:
        print("\n".join(probe(spec, args.device, args.dtype, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
