"""Is fxfusion's whole-model torch.compile figure what a user gets?  Checked against a plain, independent timing loop.

For each model spec (``FILE.py`` or ``FILE.py:NAME``, the model-file convention), in this order:
  1. fxfusion's figure: the model analysed and verified as ``analyze --apply`` does (sites measured live without
     compile variants, then :func:`fxfusion.planning.pipeline.apply_and_verify` with the whole-model compile
     candidate), and the compile candidate's median per forward read from the verification;
  2. the user's figure, in a fresh Python process (nothing compiled before it): ``torch.compile(model)``, ten warm-up
     calls, then CUDA events (or perf_counter on the CPU) around 5 x 50 back-to-back calls; the median per call.
It prints both, their ratio, and whether it is within +-5% (issue 12's target).

    python benchmarks/bench_baseline.py models/zoo/tv_resnet50.py:realistic --device cuda --dtype bfloat16
    python benchmarks/bench_baseline.py --independent SPEC --device cuda --dtype bfloat16   # step 2 alone (JSON)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxfusion.graph.loader import load_model  # noqa: E402
from fxfusion.measure.devices import dtype as dtype_record  # noqa: E402
from fxfusion.measure.devices import synchronize  # noqa: E402

TARGET = 0.05
CALLS, REPEATS, WARMUP = 50, 5, 10


def independent(spec: str, device: str, dtype: str | None) -> dict:
    """What a user writing it themselves measures: compile, warm, time back-to-back calls."""
    loaded = load_model(spec, device=device, dtype=dtype_record(dtype).torch if dtype else None)
    model, inputs = loaded.model, loaded.example_inputs
    out = {}
    for name, fn in (("eager", model), ("compile", torch.compile(model))):
        with torch.no_grad():
            start = time.perf_counter()
            fn(*inputs)
            synchronize(device)
            first = time.perf_counter() - start
            for _ in range(WARMUP):
                fn(*inputs)
            per_call = []
            for _ in range(REPEATS):
                synchronize(device)
                if device.startswith("cuda"):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    for _ in range(CALLS):
                        fn(*inputs)
                    b.record()
                    b.synchronize()
                    per_call.append(a.elapsed_time(b) / CALLS)
                else:
                    t0 = time.perf_counter()
                    for _ in range(CALLS):
                        fn(*inputs)
                    per_call.append((time.perf_counter() - t0) * 1e3 / CALLS)
        out[name] = {"median_ms": statistics.median(per_call), "samples_ms": per_call, "first_call_s": first}
    return out


def fxfusion_figure(spec: str, device: str, dtype: str | None) -> dict:
    from fxfusion.planning.analyze import analyze
    from fxfusion.planning.decide import LiveSource
    from fxfusion.planning.pipeline import apply_and_verify

    loaded = load_model(spec, device=device, dtype=dtype_record(dtype).torch if dtype else None)
    start = time.perf_counter()
    result = analyze(loaded.model, loaded.example_inputs, LiveSource(device, compile_modes=()), device=device,
                     model_label=spec, dtype=dtype, coverage=False)
    analyze_s = time.perf_counter() - start
    _, verification = apply_and_verify(result, loaded.model, loaded.example_inputs, device, include_compile=True)
    t = verification.timings
    if "eager" not in t or "compile" not in t:  # the plan did not verify before anything was timed
        return {"analyze_s": analyze_s, "eager_ms": None, "compile_ms": None, "compile_status": verification.reason,
                "chosen": None}
    return {"analyze_s": analyze_s, "eager_ms": t["eager"].median_ms,
            "compile_ms": t["compile"].median_ms if t["compile"].status == "ok" else None,
            "compile_status": t["compile"].status, "chosen": (verification.candidates or {}).get("chosen"),
            "cupti": [w for w in verification.warnings if "CUPTI" in w]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--independent", default=None, help="time SPEC the plain way and print JSON (a subprocess)")
    args = ap.parse_args()
    if args.independent:
        print(json.dumps(independent(args.independent, args.device, args.dtype)))
        return
    print(f"# bench_baseline, torch {torch.__version__}, {args.device} "
          f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), dtype {args.dtype}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| model | fxfusion compile ms | independent compile ms | ratio | within 5% | fxfusion eager ms | "
          "independent eager ms |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.models:
        ours = fxfusion_figure(spec, args.device, args.dtype)
        cmd = [sys.executable, __file__, "--independent", spec, "--device", args.device]
        cmd += ["--dtype", args.dtype] if args.dtype else []
        theirs = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        ic, ie = theirs["compile"]["median_ms"], theirs["eager"]["median_ms"]
        oc = ours["compile_ms"]
        ratio = oc / ic if oc else None
        ok = ratio is not None and abs(ratio - 1) <= TARGET
        print(f"| {spec} | {oc if oc is None else f'{oc:.4f}'} | {ic:.4f} | "
              f"{'-' if ratio is None else f'{ratio:.3f}'} | {'yes' if ok else 'NO'} | {ours['eager_ms'] or float('nan'):.4f} | "
              f"{ie:.4f} |", flush=True)
        for w in ours.get("cupti", []):
            print(f"  note ({spec}): {w}", flush=True)


if __name__ == "__main__":
    main()
