"""Where does fxfusion's end-to-end timing part from a plain loop?  One process, one model, interleaved sources.

bench_baseline found fxfusion's timing (``measure()`` with the verification's pipelined clock) 12-24% slower than a
plain back-to-back loop in the same process on the Llama decode preset on the H200, and within 3% on GPT-2.  This
probe takes the difference apart, each source timing the model and its ``torch.compile`` in the same rounds, in a
shuffled order per round:
  - ``measure``: :func:`fxfusion.measure.timing.measure` as bench_baseline calls it (the verification's spec, three
    rounds; the batch size per sample chosen by ``measure``: recorded);
  - ``measure, 50 per sample``: the same with the batch size fixed at the plain loop's 50 calls;
  - ``clock, 50 per sample``: the pipelined clock's ``sample(fn, 50)``, three per callable, alternating;
  - ``plain loop``: bench_baseline's plain loop (two CUDA events around 50 calls, three per callable);
  - ``plain loop, gc off``: the same with Python's garbage collector off for the block (``timeit``'s default): after
    an analysis the process holds far more tracked objects than a fresh one, and each full collection walks them all.

    python benchmarks/probe_timing_gap.py models/zoo/hf_llama.py:decode --device cuda --dtype bfloat16 --json raw.json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_baseline import CALLS, clock_block, fxfusion_block, plain_block, probe_model, user_fns  # noqa: E402

from fxfusion.planning.insitu import model_clock  # noqa: E402

SOURCES = ("measure", "measure, 50 per sample", "clock, 50 per sample", "plain loop", "plain loop, gc off")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json", default=None)
    ap.add_argument("--analyze-first", action="store_true",
                    help="first analyse and verify the model in this process, as bench_baseline's step 1 does")
    ap.add_argument("--candidates", default="none", help="with --analyze-first: the extra candidates verified")
    ap.add_argument("--insitu-budget-s", type=float, default=20.0, help="with --analyze-first: the in-model budget")
    args = ap.parse_args()
    loaded = probe_model(args.model, args.device, args.dtype, args.analyze_first, args.candidates, args.insitu_budget_s)
    fns, clock = user_fns(loaded.model, loaded.example_inputs, args.device), model_clock(args.device)
    out = {src: {k: [] for k in fns} for src in SOURCES}
    blocks, rng = [], random.Random(0)
    print(f"# probe_timing_gap, {args.model}, torch {torch.__version__}, {args.device} "
          f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), dtype {args.dtype}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.rounds} interleaved rounds"
          f"{', after analysing and verifying it in this process' if args.analyze_first else ''}, "
          f"{len(gc.get_objects())} objects tracked by the garbage collector", flush=True)
    for r in range(args.rounds):
        order = list(SOURCES)
        rng.shuffle(order)
        for src in order:
            extra = {}
            if src.startswith("measure"):
                got, extra = fxfusion_block(fns, clock, None if src == "measure" else CALLS)
            elif src.startswith("clock"):
                got = clock_block(fns, clock)
            elif src == "plain loop":
                got = plain_block(fns, args.device)
            else:
                gc.disable()
                try:
                    got = plain_block(fns, args.device)
                finally:
                    gc.enable()
            for k in fns:
                out[src][k] += got[k]
            blocks.append({"round": r, "source": src, "samples_ms": got, **extra})
    print("| candidate | " + " | ".join(f"{s} ms" for s in SOURCES) + " | measure / plain loop |")
    print("|---|" + "---|" * (len(SOURCES) + 1))
    for k in fns:
        med = {s: statistics.median(out[s][k]) for s in SOURCES}
        print(f"| {k} | " + " | ".join(f"{med[s]:.4f}" for s in SOURCES) + f" | {med['measure'] / med['plain loop']:.3f} |")
    inner = [b["inner"] for b in blocks if b["source"] == "measure"]
    print(f"measure's batch sizes: {inner}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "blocks": blocks}, indent=1))


if __name__ == "__main__":
    main()
