"""What in-model prediction costs: N tiny transformer blocks (models/transformer_block.py) stacked, every causal
attention decided SDPA by hand, then FusionPlan.measure_in_model timed end to end on this machine.  With
``--models``, zoo models too (their tiny presets, sites measured live without compile, one thread): groups, how many
timed in the model, how many of those share a repeated block's timing (``InModel.same_as``), and the seconds.

    python benchmarks/bench_insitu_cost.py [--blocks 12,48] [--models models/zoo/tv_resnet50.py,...]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="12,48", help="comma list of block counts")
    ap.add_argument("--models", default="", help="comma list of model specs (FILE.py[:NAME]) to time as well")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
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


if __name__ == "__main__":
    main()
