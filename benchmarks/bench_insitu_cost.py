"""What planning and applying cost on this machine, per step of fxfusion's own (no model is faster or slower for it).

In-model prediction (the default): N tiny transformer blocks (models/transformer_block.py) stacked, every causal
attention decided SDPA by hand, then FusionPlan.measure_in_model timed end to end.  With ``--models``, zoo models too
(their tiny presets, sites measured live without compile, one thread): groups, how many timed in the model, how many
of those share a repeated block's timing (``InModel.same_as``), and the seconds.

A saved plan (``--saved``; issue 25's target: load + apply within 5 s of the model's own capture, nothing timed), per
zoo model's tiny preset (every models/zoo/*.py, or ``--models``), on the CPU: a plan with every legal site rewritten by
its first variant that runs here (no timing; the most rewrites a plan can hold) saved with ``fxfusion.save_plan``,
then ``--repeats`` times, alternating: the model captured alone (``graph.capture.capture``) and
``fxfusion.apply(model, fxfusion.load_plan(path), example_inputs=inputs)`` -- medians of both and their difference
against the target, with every clock's samples counted while applying (must be 0); then, once, what ``fxfusion
apply`` adds after it: the planned and original outputs and the float64 reference, compared.

    python benchmarks/bench_insitu_cost.py [--blocks 12,48] [--models models/zoo/tv_resnet50.py,...]
    python benchmarks/bench_insitu_cost.py --saved [--models models/zoo/tv_efficientnet_b0.py,...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))

import transformer_block as tb  # noqa: E402
from fxfusion.graph.capture import capture  # noqa: E402
from fxfusion.fusions.match import find_sites  # noqa: E402
from fxfusion.planning.plan import FusionPlan  # noqa: E402
from fxfusion.planning.prediction import Context  # noqa: E402
from fxfusion.profiles.profile import Decision  # noqa: E402
from fxfusion.measure.timing import SampleCount  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="12,48", help="comma list of block counts")
    ap.add_argument("--models", default="", help="comma list of model specs (FILE.py[:NAME]) to time as well")
    ap.add_argument("--saved", action="store_true", help="a saved plan's load + apply against the capture instead")
    ap.add_argument("--repeats", type=int, default=3, help="--saved: captures and applies per model, alternating")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.saved:
        saved_cost([s for s in args.models.split(",") if s] or zoo_specs(), args.repeats)
        return
    cfg = tb.PRESETS["tiny"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for n in (int(b) for b in args.blocks.split(",")):
        torch.manual_seed(0)
        model, inputs = nn.Sequential(*[tb.Block(cfg) for _ in range(n)]).eval(), tb.get_inputs(cfg)
        start = time.perf_counter()
        captured = capture(model, inputs)
        sites = find_sites(captured)
        captured_s = time.perf_counter() - start
        decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "sdpa", None, "by hand")
                     for s in sites if s.legal and s.pattern == "causal_attention"}
        plan = FusionPlan.from_decisions(captured, sites, decisions)
        start = time.perf_counter()
        plan.measure_in_model(model, inputs)
        print(f"{n} blocks: {sum(len(g.graph.nodes) for g in captured.graphs)} nodes, {len(plan.groups)} groups; "
              f"capture+match {captured_s:.1f} s, measure_in_model {time.perf_counter() - start:.1f} s "
              f"(prediction: {plan.prediction}; "
              f"{sum(1 for g in plan.groups if (r := g.regions.get(Context.EAGER)) is not None and r.same_as)} sharing a twin's timing)",
              flush=True)
    for spec in filter(None, args.models.split(",")):
        zoo(spec)


def zoo(spec: str) -> None:
    from fxfusion.graph.loader import load_model
    from fxfusion.planning.analyze import analyze
    from fxfusion.planning.decide import LiveSource
    from fxfusion.planning.insitu import InModel, measure_in_model

    torch.set_num_threads(1)
    loaded = load_model(spec)
    analysis = analyze(loaded.model, loaded.example_inputs, LiveSource("cpu", compile_modes=()), device="cpu",
                       model_label=spec, coverage=False)
    plan = FusionPlan.from_analysis(analysis)
    start = time.perf_counter()
    found = measure_in_model(plan, loaded.model, loaded.example_inputs, "cpu", budget_s=600)
    timed = [im for im in found.values() if isinstance(im, InModel)]
    print(f"{spec}: {len(plan.groups) + len(plan.pending)} groups, {len(timed)} timed in the model, "
          f"{sum(1 for im in timed if im.same_as)} of them sharing a twin's timing; measure_in_model "
          f"{time.perf_counter() - start:.1f} s (1 thread)", flush=True)



# -- a saved plan: load + apply against the model's own capture ------------------------------------------------------

LOAD_APPLY_TARGET_S = 5.0  # issue 25: over the model's own capture, every zoo model's tiny preset on a CPU


def zoo_specs() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "models" / "zoo").glob("*.py"))
            if not p.name.startswith("_")]


def every_site_plan(model: nn.Module, inputs: tuple) -> FusionPlan:
    """Every legal site decided fuse with the first manual variant that runs on the CPU at float32 (no timing)."""
    from fxfusion.fusions.registry import REGISTRY

    captured = capture(model, inputs)
    sites = find_sites(captured)
    decisions = {}
    for s in sites:
        runs = [mv.name for mv in REGISTRY.get(s.pattern).manual
                if mv.unsupported(s.shape, torch.float32, "cpu") is None] if s.legal and s.pattern in REGISTRY else []
        if runs:
            decisions[s.id] = Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", runs[0], None, "bench")
    plan = FusionPlan.from_decisions(captured, sites, decisions)
    plan.choice = {"chosen": "planned", "why": "every legal site (bench_insitu_cost --saved)", "candidates": []}
    return plan


def saved_cost(specs: list[str], repeats: int) -> None:
    import os
    import statistics
    import tempfile

    import fxfusion
    from fxfusion.graph.loader import load_model
    from fxfusion.planning.outputs import check_outputs, float64_reference

    print(f"# a saved plan's load + apply against the capture: torch {torch.__version__}, cpu, "
          f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; medians of {repeats}\n")
    print("| model (tiny) | rewrites | applied | capture alone s | load + apply s | over the capture s | samples "
          "timed | float64 check s (once) | outputs |")
    print("|---|---|---|---|---|---|---|---|---|")
    over_all, folder = [], Path(tempfile.mkdtemp(prefix="fxfusion-saved-"))
    for spec in specs:
        loaded = load_model(spec)
        model, inputs = loaded.model, loaded.example_inputs
        path = fxfusion.save_plan(every_site_plan(model, inputs), folder / (Path(spec).stem + ".json"), model, inputs)
        captures, applies, timed = [], [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            capture(model, inputs)
            captures.append(time.perf_counter() - start)
            with SampleCount() as counted:
                start = time.perf_counter()
                planned = fxfusion.apply(model, fxfusion.load_plan(path), example_inputs=inputs)
                applies.append(time.perf_counter() - start)
            timed += counted.n
        start = time.perf_counter()  # what `fxfusion apply` adds once: the outputs against float64
        with torch.no_grad():
            got, original = planned(*inputs), model(*inputs)
        reference, why_not = float64_reference(model, inputs)
        checks, failure = check_outputs(got, original, reference if reference is not None else original, "cpu")
        check_s = time.perf_counter() - start
        cap, app = statistics.median(captures), statistics.median(applies)
        over_all.append((spec, app - cap))
        records = getattr(planned, "fxfusion_rewrites", [])
        print(f"| {Path(spec).stem} | {len(records)} | {sum(r.applied for r in records)} | {cap:.2f} | {app:.2f} | "
              f"{app - cap:.2f} | {timed} | {check_s:.2f} | "
              f"{failure or ('match float64' if reference is not None else f'match the original ({why_not})')} |",
              flush=True)
    missed = [f"{s} ({o:.1f} s)" for s, o in over_all if o > LOAD_APPLY_TARGET_S]
    print(f"\nload + apply within {LOAD_APPLY_TARGET_S:.0f} s of the capture: {len(over_all) - len(missed)} of "
          f"{len(over_all)}{'; MISSED: ' + ', '.join(missed) if missed else ' (OK)'}; load average at the end "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
