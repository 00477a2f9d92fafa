"""Does Python's garbage collector run while a model is timed?  Counts collections per generation, and their time,
over back-to-back forward passes of a model and of its ``torch.compile``.

A process that has analysed a model holds far more objects tracked by the collector than a fresh one (see
``probe_timing_gap.py --analyze-first``), and a full collection walks them all: if collections ran during the timed
loops, fxfusion's figures would read slower than a fresh process's for that reason alone.  ``--analyze-first``
analyses and verifies the model in this process first (as bench_baseline's step 1 does).

    python benchmarks/probe_gc.py models/zoo/hf_gpt2.py --analyze-first
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_baseline import probe_model, user_fns  # noqa: E402

from fxfusion.measure.devices import synchronize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--analyze-first", action="store_true")
    args = ap.parse_args()
    loaded = probe_model(args.model, args.device, args.dtype, args.analyze_first)
    fns = user_fns(loaded.model, loaded.example_inputs, args.device)  # the model and its compile, warmed
    stats: dict[int, list] = {}
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            s = stats.setdefault(info["generation"], [0, 0.0])
            s[0] += 1
            s[1] += time.perf_counter() - started[0]

    print(f"# probe_gc, {args.model}, torch {torch.__version__}, {args.device}, {args.calls} calls each, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          f"{', after analysing and verifying it in this process' if args.analyze_first else ''}; "
          f"{len(gc.get_objects())} objects tracked, thresholds {gc.get_threshold()}")
    print("| callable | ms per call | collections (generation: count, ms) | collector ms per call |")
    print("|---|---|---|---|")
    gc.callbacks.append(callback)
    try:
        for name, fn in fns.items():
            stats.clear()
            with torch.no_grad():
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                synchronize(args.device)
                elapsed = time.perf_counter() - start
            counts = ", ".join(f"{g}: {n}, {sec * 1e3:.1f}" for g, (n, sec) in sorted(stats.items())) or "none"
            spent = sum(sec for _, sec in stats.values())
            print(f"| {name} | {elapsed / args.calls * 1e3:.4f} | {counts} | {spent / args.calls * 1e3:.5f} |")
    finally:
        gc.callbacks.remove(callback)


if __name__ == "__main__":
    main()
