"""What in-model prediction costs: N tiny transformer blocks (models/transformer_block.py) stacked, every causal
attention decided SDPA by hand, then FusionPlan.measure_in_model timed end to end on this machine.

    python benchmarks/bench_insitu_cost.py [--blocks 12,48]
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
from fxfusion.profiles.profile import Decision  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="12,48", help="comma list of block counts")
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
              f"(prediction: {plan.prediction})")


if __name__ == "__main__":
    main()
