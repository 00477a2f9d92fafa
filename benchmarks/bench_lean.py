"""What lean calls save: each reference model's forward pass eager, as the captured graph runs without lean calls,
and lean (fxfusion.graph.lean), timed with torch.utils.benchmark (blocked_autorange, one thread unless --threads),
interleaved model by model; the median of --repeats medians per variant, in microseconds.

    python benchmarks/bench_lean.py [--models resnet_basic,...] [--repeats 5] [--threads 1]

Also checks that the lean graph's outputs are bit for bit the captured graph's, and first prints what one call costs
through an aten overload and through its public binding (relu, view) on a small tensor.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxfusion.graph.capture import capture  # noqa: E402
from fxfusion.graph.lean import lean  # noqa: E402
from fxfusion.graph.loader import load_model  # noqa: E402
from fxfusion.planning.rewrite import runnable_graph  # noqa: E402


def _us(fn, threads: int) -> float:
    with torch.no_grad():
        return benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
            min_run_time=0.3).median * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=None, help="comma list of models/ file stems (default: every export capture)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    names = args.models.split(",") if args.models else sorted(p.stem for p in (ROOT / "models").glob("*.py"))
    x = torch.randn(2, 32, 8, 8)
    for label, overload, binding in (("relu", lambda: torch.ops.aten.relu.default(x), lambda: torch.relu(x)),
                                     ("view", lambda: torch.ops.aten.view.default(x, [2, -1]),
                                      lambda: x.view([2, -1]))):
        a = statistics.median(_us(overload, args.threads) for _ in range(args.repeats))
        b = statistics.median(_us(binding, args.threads) for _ in range(args.repeats))
        print(f"one {label} call on a (2, 32, 8, 8) tensor: aten overload {a:.2f} us, public binding {b:.2f} us")
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} medians, us per forward")
    print(f"{'model':20s} {'eager':>8s} {'captured':>9s} {'lean':>8s}  lean/eager")
    for name in names:
        loaded = load_model(ROOT / "models" / f"{name}.py")
        model, inputs = loaded.model, loaded.example_inputs
        captured = capture(model, inputs)
        if captured.method != "export":
            print(f"{name:20s} captured by {captured.method}: its graphs run through Dynamo, not timed here")
            continue
        plain = runnable_graph(captured, 0, model)  # aten overloads, as exported
        leaned = lean(copy.deepcopy(plain))
        with torch.no_grad():
            same = all(torch.equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves(plain(*inputs)),
                                                         torch.utils._pytree.tree_leaves(leaned(*inputs))))
        runs = {"eager": [], "captured": [], "lean": []}
        for _ in range(args.repeats):
            for label, fn in (("eager", model), ("captured", plain), ("lean", leaned)):
                runs[label].append(_us(lambda f=fn: f(*inputs), args.threads))
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"{name:20s} {med['eager']:8.1f} {med['captured']:9.1f} {med['lean']:8.1f}  "
              f"{med['lean'] / med['eager']:.2f}{'' if same else '  OUTPUTS DIFFER'}")


if __name__ == "__main__":
    main()
