"""One plan for a range of shapes, deployed: planned once, saved, loaded in a fresh process with nothing timed, checked
against float64 at every bucket and a shape never measured, and timed per shape against whole-model torch.compile.

Per model spec (``FILE.py`` for the tiny preset, ``FILE.py:NAME`` for a named one; default: the zoo's causal LMs and
CNNs at their tiny presets):
  1. plan: ``fxfusion.plan(model, profile, inputs, dynamic=RANGES)`` -- sites decided from this machine's profile in
     ``profiles/`` as ``analyze`` finds it (``--measure``, or no profile of this machine: every site live), the
     regions timed in the model at each bucket of the range -- then ``fxfusion.save_plan``.  RANGES (``--ranges``, or
     per model: ``batch=1:B`` with B the preset's batch (at least 4), and for token inputs ``seq=L/4:L``) are
     ``--dynamic``'s;
  2. load: a fresh process (this script with ``--load``) loads the model, captures it once as any ``fxfusion.apply``
     does (a static capture, timed: the model's own cost), then ``fxfusion.apply(model, fxfusion.load_plan(path),
     example_inputs=...)``, timed; every timing clock of the library is counted while it runs (the target: 0 samples,
     and load + apply <= 5 s over the static capture);
  3. shapes: the loaded planned model against float64 at the shapes ``analyze --apply --dynamic`` verifies (the
     buckets and one never measured: ``planning.dynamic_verify.check_shapes``);
  4. timing, per shape in that order: eager, ``torch.compile(model)`` (default configuration), the planned model, and
     ``torch.compile`` of it -- both compiled objects see the shapes in the same order, so both recompile the same way
     (automatic dynamic shapes from the second); two untimed calls each (their wall time: the setup at that shape),
     then ``--rounds`` interleaved rounds (order rotated every round), each a block of calls synchronised at both
     ends, ms per call = block / calls.
Prints, per model, the load row and one markdown row per shape: medians with 95% bootstrap intervals, the paired
per-round speedup of planned+compile over compile (the issue's "speedup over default compile per shape") and over
eager, and the float64 check; the raw samples go to ``--out`` as JSON.  Inference only (``torch.no_grad``).  Write
down the machine's load with the result.

    python3 benchmarks/bench_dynamic.py --out /tmp/dyn                                    # tiny presets, this CPU
    python3 benchmarks/bench_dynamic.py models/zoo/hf_gpt2.py:bench --device cuda --dtype bfloat16 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fxfusion  # noqa: E402
from fxfusion.calibration.variants import compile_limits  # noqa: E402
from fxfusion.graph.capture import capture  # noqa: E402
from fxfusion.graph.loader import load_model  # noqa: E402
from fxfusion.graph.symbolic import sizes_text  # noqa: E402
from fxfusion.measure.timing import SampleCount  # noqa: E402
from fxfusion.measure.devices import dtype as dtype_record  # noqa: E402
from fxfusion.measure.devices import is_cuda  # noqa: E402
from fxfusion.measure.stats import interval_text, median_interval, paired_speedup  # noqa: E402
from fxfusion.planning.dynamic import position_limit, shapes_to_verify  # noqa: E402
from fxfusion.planning.dynamic_verify import check_shapes  # noqa: E402
from fxfusion.profiles.machine import find_machine_profile  # noqa: E402

MODELS = ("hf_gpt2", "hf_llama", "hf_qwen2", "hf_phi3", "hf_gemma", "timm_resnet18", "tv_resnet50", "tv_mobilenet_v3_large",
          "tv_efficientnet_b0", "tv_convnext_tiny")
LOAD_TARGET_S, SHAPES_TARGET = 5.0, 3
CANDIDATES = ("eager", "compile", "planned", "planned+compile")
BLOCK_S = 0.02  # a timed block lasts about this long (at least one call)


def _load(spec: str, args) -> tuple[torch.nn.Module, tuple]:
    loaded = load_model(spec, device=args.device, dtype=dtype_record(args.dtype).torch if args.dtype else None,
                        eval_mode=True)
    return loaded.model, tuple(loaded.example_inputs)


def default_ranges(model: torch.nn.Module, inputs: tuple) -> str:
    """``batch=1:B`` (B the example's batch, at least 4), and ``seq=L/4:L`` for token inputs (L the example's length,
    at least 32, at most the model's position limit)."""
    tensors = [x for x in inputs if isinstance(x, torch.Tensor) and x.dim() >= 1]
    text = f"batch=1:{max(4, tensors[0].shape[0])}"
    tokens = [x for x in tensors if not x.is_floating_point() and x.dim() >= 2]
    if tokens:
        hi = max(32, tokens[0].shape[1])
        hi = min(hi, position_limit(model) or hi)
        text += f",seq={max(2, hi // 4)}:{hi}"
    return text


def load_in_this_process(spec: str, path: str, args) -> dict:
    """Step 2 (run by ``--load`` in a fresh process): the static capture's seconds, then load + apply's."""
    model, inputs = _load(spec, args)
    start = time.perf_counter()
    capture(model, inputs)
    capture_s = time.perf_counter() - start
    with SampleCount() as clocks:
        start = time.perf_counter()
        fast = fxfusion.apply(model, fxfusion.load_plan(path), example_inputs=inputs)
        apply_s = time.perf_counter() - start
    return {"capture_s": capture_s, "load_apply_s": apply_s, "clock_samples": clocks.n,
            "rewrites": sum(bool(r.applied) for r in getattr(fast, "fxfusion_rewrites", [])),
            "candidate": getattr(fast, "fxfusion_candidate", None)}


def _sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def time_shape(fns: dict, inputs: tuple, rounds: int, device: str) -> dict:
    """Step 4 at one shape: setup seconds and ms-per-call samples of each candidate, interleaved."""
    out = {n: {"setup_s": None, "samples_ms": []} for n in fns}
    calls = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn(*inputs), fn(*inputs)
        _sync(device)
        out[name]["setup_s"] = time.perf_counter() - start
        start = time.perf_counter()
        fn(*inputs)
        _sync(device)
        calls[name] = max(1, min(200, int(BLOCK_S / max(time.perf_counter() - start, 1e-6))))
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, k = fns[name], calls[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(k):
                fn(*inputs)
            _sync(device)
            out[name]["samples_ms"].append((time.perf_counter() - start) * 1e3 / k)
    return out


def run_one(spec: str, args) -> dict:
    model, inputs = _load(spec, args)
    ranges = args.ranges or default_ranges(model, inputs)
    row: dict = {"model": spec, "ranges": ranges}
    found = None if args.measure else find_machine_profile(ROOT / "profiles", args.device)
    row["decided_by"] = str(found.path.relative_to(ROOT)) if found else "live timings"
    path = Path(args.out) / (spec.replace("/", "_").replace(":", "__") + ".plan.json")
    start = time.perf_counter()
    with torch.no_grad():
        plan = fxfusion.plan(model, found.profile if found else None, inputs, device=args.device, dynamic=ranges)
    fxfusion.save_plan(plan, path, model, inputs)
    saved = fxfusion.load_plan(path)
    row.update(plan_s=time.perf_counter() - start, groups=len(plan.groups), saved_groups=len(saved.groups),
               patterns=sorted({g.pattern for g in saved.groups}))
    cmd = [sys.executable, __file__, spec, "--load", str(path), "--device", args.device]
    cmd += ["--dtype", args.dtype] if args.dtype else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"--load failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    row["load"] = json.loads(done.stdout.strip().splitlines()[-1])
    with torch.no_grad(), compile_limits():
        planned = fxfusion.apply(model, fxfusion.load_plan(path), example_inputs=inputs, candidate="planned")
        dims = plan.captured.dynamic.dims
        row["float64"] = check_shapes(model, dims, inputs, planned, args.device)
        torch._dynamo.reset()
        fns = {"eager": model, "compile": torch.compile(model), "planned": planned,
               "planned+compile": torch.compile(planned)}
        row["shapes"] = []
        for i, (sizes, measured) in enumerate(shapes_to_verify(dims)):
            at = dims.resize(inputs, sizes, seed=200 + i)
            t = time_shape(fns, at, args.rounds, args.device)
            s = {n: t[n]["samples_ms"] for n in CANDIDATES}
            row["shapes"].append({"shape": sizes_text(sizes), "measured": measured, "timings": t,
                                  "medians": {n: dataclasses.asdict(median_interval(v)) for n, v in s.items()},
                                  "over_compile": dataclasses.asdict(paired_speedup(s["compile"], s["planned+compile"])),
                                  "over_eager": dataclasses.asdict(paired_speedup(s["eager"], s["planned+compile"])),
                                  "planned_over_eager": dataclasses.asdict(paired_speedup(s["eager"], s["planned"]))})
    return row


def _ms(m: dict) -> str:
    return f"{m['median']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def print_row(row: dict) -> None:
    ld = row["load"]
    over = ld["load_apply_s"] - ld["capture_s"]
    print(f"\n### {row['model']} ({row['ranges']}; sites decided by {row['decided_by']})\n")
    print(f"planned over the range in {row['plan_s']:.1f} s: {row['groups']} groups, {row['saved_groups']} in the saved "
          f"plan's candidate ({', '.join(row['patterns']) or 'none'}); "
          f"in a fresh process: static capture {ld['capture_s']:.2f} s, load + apply {ld['load_apply_s']:.2f} s "
          f"({over:+.2f} s over the capture; target <= {LOAD_TARGET_S:.0f} s: {'met' if over <= LOAD_TARGET_S else 'MISSED'}), "
          f"{ld['clock_samples']} timing samples taken, {ld['rewrites']} rewrites applied, candidate {ld['candidate']}\n")
    checks = {r["shape"]: r for r in row["float64"]}
    print("| shape | measured | float64 (rel. error) | " + " | ".join(f"{n} ms" for n in CANDIDATES)
          + " | planned+compile over compile | over eager | setup s (compile / planned+compile) |")
    print("|---|---|---|" + "---|" * len(CANDIDATES) + "---|---|---|")
    for s in row["shapes"]:
        c = checks.get(s["shape"], {})
        ok = "ok" if c.get("ok") else f"FAILED ({c.get('reason')})"
        err = f" ({c['error']:.1e})" if c.get("error") is not None else ""
        setup = f"{s['timings']['compile']['setup_s']:.1f} / {s['timings']['planned+compile']['setup_s']:.1f}"
        print(f"| {s['shape']} | {'yes' if s['measured'] else 'no'} | {ok}{err} | "
              + " | ".join(_ms(s["medians"][n]) for n in CANDIDATES)
              + f" | {interval_text(s['over_compile'])} | {interval_text(s['over_eager'])} | {setup} |")
    verified = sum(bool(r.get("ok")) for r in row["float64"])
    print(f"\nfloat64: {verified} of {len(row['float64'])} shapes "
          f"(target >= {SHAPES_TARGET}, one never measured: "
          f"{'yes' if any(not r['measured'] and r['ok'] for r in row['float64']) else 'no'})")


def _specs(args) -> list[str]:
    if args.models:
        return args.models
    return [f"models/zoo/{m}.py" for m in MODELS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="FILE.py or FILE.py:ENTRY (default: the zoo's LMs and CNNs, tiny)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--ranges", default=None, help="--dynamic's ranges for every model (default: per model, see above)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--measure", action="store_true", help="decide every site live (default: this machine's profile)")
    ap.add_argument("--out", default="/tmp/fxfusion-dynamic")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--load", default=None, help=argparse.SUPPRESS)  # step 2, in a fresh process
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.load:
        print(json.dumps(load_in_this_process(args.models[0], args.load, args)))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"# bench_dynamic: {args.device} {args.dtype or 'float32'}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    rows, failed = [], []
    for spec in _specs(args):
        start = time.perf_counter()
        try:
            row = run_one(spec, args)
        except Exception as exc:  # one model's failure is a row, not the end of the run
            failed.append(spec)
            print(f"\n### {spec}\n\nFAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", flush=True)
            continue
        row["wall_s"] = time.perf_counter() - start
        rows.append(row)
        print_row(row)
        print(f"({row['wall_s']:.0f} s)", flush=True)
        (Path(args.out) / "bench_dynamic.json").write_text(json.dumps(rows, indent=1, allow_nan=False))
    loads = [r["load"]["load_apply_s"] - r["load"]["capture_s"] for r in rows]
    shapes = [sum(bool(c.get("ok")) for c in r["float64"]) for r in rows]
    print(f"\nmodels: {len(rows)} ran, {len(failed)} failed{' (' + ', '.join(failed) + ')' if failed else ''}; "
          f"load + apply over the capture at most {max(loads, default=0):.2f} s (target <= {LOAD_TARGET_S:.0f} s), "
          f"{sum(r['load']['clock_samples'] for r in rows)} timing samples at load; "
          f"verified at >= {SHAPES_TARGET} shapes: {sum(n >= SHAPES_TARGET for n in shapes)} of {len(rows)}")


if __name__ == "__main__":
    main()
