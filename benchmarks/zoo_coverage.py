"""Coverage over the zoo: per model, the share of FLOPs and of time inside matched sites and the unmatched op kinds
that take the most time -- what the tool leaves on the table.  Match only: no decisions, no apply
(``fxfusion.planning.analyze.analyze`` with no source, coverage by ``fxfusion.planning.coverage``).

It prints one table row per model, the medians the issue sets targets for (FLOPs >= 90%, time >= 85%), and the
unmatched op kinds summed over the zoo, ranked by their share of each model's time.

    python benchmarks/zoo_coverage.py                                   # tiny presets, this CPU
    python benchmarks/zoo_coverage.py models/zoo/hf_gpt2.py models/zoo/hf_t5.py
    python benchmarks/zoo_coverage.py --device cuda --dtype bfloat16 --preset realistic
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxfusion.graph.loader import load_model  # noqa: E402
from fxfusion.measure.devices import dtype as dtype_record  # noqa: E402
from fxfusion.planning.analyze import analyze  # noqa: E402

FLOPS_TARGET, TIME_TARGET = 0.90, 0.85  # issue 26's targets for the medians
TOP_ZOO = 15  # unmatched op kinds listed over the zoo


def _specs(args) -> list[str]:
    """The models named, else every models/zoo/*.py: the file (tiny preset) or each of its REALISTIC_ENTRIES."""
    if args.models:
        return args.models
    files = sorted(p for p in (ROOT / "models" / "zoo").glob("*.py") if not p.name.startswith("_"))
    if args.preset == "tiny":
        return [str(p.relative_to(ROOT)) for p in files]
    specs = []
    for p in files:
        line = next((x for x in p.read_text().splitlines() if x.startswith("REALISTIC_ENTRIES")), None)
        names = ast.literal_eval(line.split("=", 1)[1]) if line else ()
        specs += [f"{p.relative_to(ROOT)}:{n}" for n in names]
    return specs


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def run_one(spec: str, args) -> dict:
    loaded = load_model(spec, device=args.device, dtype=dtype_record(args.dtype).torch if args.dtype else None)
    start = time.perf_counter()
    result = analyze(loaded.model, loaded.example_inputs, None, device=args.device, model_label=spec,
                     dtype=args.dtype, time_forward=False, command="benchmarks/zoo_coverage.py")
    cov = result.coverage or {}
    patterns: dict[str, int] = defaultdict(int)
    for s in result.sites:
        patterns[s.pattern] += 1
    return {"model": spec, "sites": len(result.sites), "legal": sum(s.legal for s in result.sites),
            "flops_share": cov.get("flops_share"), "time_share": cov.get("time_share"),
            "flops_total": cov.get("flops_total"), "unmatched": cov.get("unmatched") or [],
            "notes": cov.get("notes") or [], "warnings": result.warnings, "seconds": time.perf_counter() - start,
            "patterns": dict(patterns)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--preset", default="tiny", choices=("tiny", "realistic"))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: on a shared 2-core machine a "
                    "second OpenMP thread waiting for a busy core makes a tiny model's GEMMs 10-100x slower at random, "
                    "and the time shares with it; tests/test_zoo.py runs on one thread for the same reason)")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    print(f"# zoo_coverage: torch {torch.__version__}, {args.device}, dtype {args.dtype}, preset {args.preset}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    print("| model | sites | legal | FLOPs in sites | time in sites | s | largest unmatched by time (share of time) |")
    print("|---|---|---|---|---|---|---|")
    rows, zoo_left = [], defaultdict(lambda: {"models": 0, "time_share": 0.0, "flops": 0})
    for spec in _specs(args):
        try:
            r = run_one(spec, args)
        except Exception as exc:  # a crash is a result here
            print(f"| {spec} | CRASH: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} |",
                  flush=True)
            traceback.print_exc(file=sys.stderr)
            continue
        rows.append(r)
        left = ", ".join(f"{u['op'].replace('aten.', '')} x{u['count']} ({_pct(u['time_share'])})"
                         for u in r["unmatched"][:4])
        print(f"| {spec} | {r['sites']} | {r['legal']} | {_pct(r['flops_share'])} | {_pct(r['time_share'])} | "
              f"{r['seconds']:.1f} | {left} |", flush=True)
        for u in r["unmatched"]:
            z = zoo_left[u["op"]]
            z["models"] += 1
            z["time_share"] += u["time_share"] or 0.0
            z["flops"] += u["flops"]
    flops = [r["flops_share"] for r in rows if r["flops_share"] is not None]
    times = [r["time_share"] for r in rows if r["time_share"] is not None]
    print(f"\nmodels: {len(rows)}; median FLOPs in sites {_pct(statistics.median(flops) if flops else None)} "
          f"(target {FLOPS_TARGET:.0%}), median time in sites {_pct(statistics.median(times) if times else None)} "
          f"(target {TIME_TARGET:.0%})")
    print("\nunmatched op kinds over the zoo (sum of each model's time share; models where it is among the top "
          "unmatched):")
    for op, z in sorted(zoo_left.items(), key=lambda kv: -kv[1]["time_share"])[:TOP_ZOO]:
        print(f"  {op}: {z['time_share']:.2f} over {z['models']} models, {z['flops']} FLOPs")
    print("\nsites per pattern:")
    for r in rows:
        print(f"  {r['model']}: " + ", ".join(f"{p} x{n}" for p, n in sorted(r["patterns"].items())))
        for n in r["notes"]:
            print(f"    note: {n}")


if __name__ == "__main__":
    main()
