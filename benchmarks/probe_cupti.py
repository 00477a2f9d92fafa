"""Does a profiler session slow down what a process times afterwards?  The cause of bench_baseline's gap, tested.

For each model spec and each condition, a fresh Python process times the model's eager forward with a plain loop
(CUDA events around 50 back-to-back calls, 7 samples, median per call), then does the condition's step, then times
the same loop again; it prints after / before.  Conditions:
  control      nothing between the two timings (the drift of the machine);
  raw          one ``torch.profiler`` session with CUDA activity over 5 forwards, environment untouched
               (what fxfusion did before: Kineto leaves CUPTI attached unless TEARDOWN_CUPTI=1);
  fxfusion     ``fxfusion.measure.kernelcount.count_launches`` of the forward (through ``measure.profiling.profiled``);
  analyze      a whole live analysis of the model (``fxfusion.planning.analyze.analyze`` with a LiveSource), as
               ``analyze --apply`` runs before it times the candidates.

    python benchmarks/probe_cupti.py models/zoo/hf_llama.py:decode --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_baseline import plain_loop  # noqa: E402  (the same plain loop the baseline check uses)

CONDITIONS = ("control", "raw", "fxfusion", "analyze")
SAMPLES, WARMUP = 7, 10  # samples of bench_baseline.CALLS calls


def _loop(fn, device) -> float:
    with torch.no_grad():
        for _ in range(WARMUP):
            fn()
    return plain_loop({"fn": fn}, device, repeats=SAMPLES, warm_s=0)["fn"]["median_ms"]


def one(spec: str, condition: str, device: str, dtype: str | None) -> dict:
    from fxfusion.graph.loader import load_model
    from fxfusion.measure.devices import dtype as dtype_record
    loaded = load_model(spec, device=device, dtype=dtype_record(dtype).torch if dtype else None)
    model, inputs = loaded.model, loaded.example_inputs

    def fwd():
        return model(*inputs)

    before = _loop(fwd, device)
    start = time.perf_counter()
    if condition == "raw":
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with torch.no_grad(), profile(activities=acts):
            for _ in range(5):
                fwd()
            torch.cuda.synchronize() if device.startswith("cuda") else None
    elif condition == "fxfusion":
        from fxfusion.measure.kernelcount import count_launches
        with torch.no_grad():
            count_launches(fwd, device)
    elif condition == "analyze":
        from fxfusion.planning.analyze import analyze
        from fxfusion.planning.decide import LiveSource
        analyze(model, inputs, LiveSource(device, compile_modes=()), device=device, model_label=spec, dtype=dtype,
                coverage=True)
    step_s = time.perf_counter() - start
    after = _loop(fwd, device)
    import os
    return {"before_ms": before, "after_ms": after, "ratio": after / before, "step_s": step_s,
            "TEARDOWN_CUPTI": os.environ.get("TEARDOWN_CUPTI")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--one", nargs=2, metavar=("SPEC", "CONDITION"), help="one process's measurement, as JSON")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.device, args.dtype)))
        return
    print(f"# probe_cupti, torch {torch.__version__}, {args.device} "
          f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), dtype {args.dtype}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| model | condition | eager ms before | eager ms after | after / before | step s | TEARDOWN_CUPTI after |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.models:
        for cond in args.conditions.split(","):
            cmd = [sys.executable, __file__, "--one", spec, cond, "--device", args.device]
            cmd += ["--dtype", args.dtype] if args.dtype else []
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                print(f"| {spec} | {cond} | failed: {run.stderr.strip().splitlines()[-1:]} |", flush=True)
                continue
            r = json.loads(run.stdout.splitlines()[-1])
            print(f"| {spec} | {cond} | {r['before_ms']:.4f} | {r['after_ms']:.4f} | {r['ratio']:.3f} | "
                  f"{r['step_s']:.1f} | {r['TEARDOWN_CUPTI']} |", flush=True)


if __name__ == "__main__":
    main()
