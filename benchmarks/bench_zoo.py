"""The zoo of third-party models, analysed and applied end to end: what the tool sees and what its candidates give.

Per model spec (``FILE.py`` for the tiny preset, ``FILE.py:NAME`` for a named one; default: every models/zoo/*.py):
  1. ``analyze`` as the CLI runs it without ``--apply`` (sites measured live at their shapes, without the compile
     variants unless --site-compile), with coverage: wall time, sites found / legal / fuse, coverage of FLOPs and time;
  2. ``apply_and_verify`` (the ``--apply`` path): the plan applied and verified against float64, and the candidates
     (eager, whole-model compile in each configuration -- default, freezing, CUDA graphs, both --, planned, the
     rewrites compiled in the default and the best configuration, ...) searched and timed in one interleaved run;
     the chosen one, and the time --apply took.
It prints one table row per model and the summary the issues set targets for (sites / applied / verified, coverage,
analyze <= 60 s; the chosen candidate >= 0.98x the fastest measured and >= 1.00x the best whole-model configuration;
geometric means of the chosen over default compile (target 1.35x) and over the best whole-model configuration
(target 1.10x); --apply <= 90 s), then each model's "where the time went" lines, and writes each model's analysis
JSON into --out.

    python benchmarks/bench_zoo.py --device cuda --dtype bfloat16 --preset realistic --out /tmp/zoo
    python benchmarks/bench_zoo.py models/zoo/hf_gpt2.py --out /tmp/zoo            # tiny preset on this CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxfusion.graph.loader import load_model  # noqa: E402
from fxfusion.measure.devices import as_device  # noqa: E402
from fxfusion.measure.devices import dtype as dtype_record  # noqa: E402
from fxfusion.planning.analyze import analyze  # noqa: E402
from fxfusion.planning.decide import LiveSource, ProfileSource  # noqa: E402
from fxfusion.profiles.machine import find_machine_profile  # noqa: E402
from fxfusion.planning.candidates import CandidateSet, parse_candidates, whole_model  # noqa: E402
from fxfusion.planning.pipeline import Planner, apply_and_verify, default_budget_s  # noqa: E402
from fxfusion.planning.prediction import HOST_MOVED  # noqa: E402
from fxfusion.reports.verification import prediction_cell  # noqa: E402

ANALYZE_TARGET_S, CHOSEN_TARGET, GEOMEAN_TARGET, PREDICTION_TARGET_PCT = 60.0, 0.98, 1.10, 20.0
OVER_COMPILE_TARGET, APPLY_TARGET_S = 1.35, 90.0
CONFIG_COLUMNS = ("compile", "compile+freezing", "compile+cudagraphs", "compile+freezing+cudagraphs")


def _specs(args) -> list[str]:
    if args.models:
        return args.models
    files = sorted(p for p in (ROOT / "models" / "zoo").glob("*.py") if not p.name.startswith("_"))
    sys.path.insert(0, str(ROOT / "models" / "zoo"))
    if args.preset == "tiny":
        return [str(p.relative_to(ROOT)) for p in files]
    specs = []
    for p in files:  # realistic presets: the file's entry functions named in its PRESET_ENTRIES (or "realistic")
        names = _entries(p)
        specs += [f"{p.relative_to(ROOT)}:{n}" for n in names]
    return specs


def _entries(path: Path) -> list[str]:
    text = path.read_text()
    for line in text.splitlines():
        if line.startswith("REALISTIC_ENTRIES"):
            return list(eval(line.split("=", 1)[1]))  # a literal tuple of names in the model file
    return ["realistic"] if "\ndef realistic(" in text else []


def _source(args):
    """What decides the sites: this machine's profile in profiles/ as ``analyze`` finds it (sites of patterns it
    lacks measured live), or every site measured live (--measure, or no profile of this machine)."""
    live = LiveSource(args.device, compile_modes=("compile",) if args.site_compile else ())
    found = None if args.measure else find_machine_profile(ROOT / "profiles", args.device)
    return live if found is None else ProfileSource(found.profile, args.device, str(found.path), live=live)


def run_one(spec: str, args) -> dict:
    row: dict = {"model": spec}
    loaded = load_model(spec, device=args.device, dtype=dtype_record(args.dtype).torch if args.dtype else None)
    start = time.perf_counter()
    result = analyze(loaded.model, loaded.example_inputs, _source(args), device=args.device, model_label=spec, dtype=args.dtype, command="benchmarks/bench_zoo.py")
    row["analyze_s"] = time.perf_counter() - start
    report = result.to_dict()
    sm, cov = report["summary"], report.get("coverage") or {}
    row.update(sites=sm["sites"], legal=sm["fusible"], fuse=sm["fuse"], flops_share=cov.get("flops_share"),
               time_share=cov.get("time_share"), graphs=report["capture"]["graphs"],
               left=[u["op"] for u in (cov.get("unmatched") or [])[:3]])
    if args.no_apply:
        return row
    candidates = CandidateSet.uncompiled() if args.no_compile else CandidateSet(
        optional=parse_candidates(args.candidates))
    planner = Planner(as_device(args.device), budget_s=args.insitu_budget_s, candidates=candidates,
                      compiled_regime=args.compiled_regime, compiled_classes=args.compiled_context is not False,
                      total_s=args.apply_budget_s or default_budget_s(args.device))
    start = time.perf_counter()
    plan, v = apply_and_verify(result, loaded.model, loaded.example_inputs, planner)
    row["apply_s"] = time.perf_counter() - start
    row["stages_s"] = (result.verification or {}).get("stages_s")
    row["verify_steps_s"] = (result.verification or {}).get("steps_s")
    report = result.to_dict()  # now with the verification and the plan (every group's timings, the warnings)
    rewrites = v.rewrites
    row.update(applied=sum(r["applied"] for r in rewrites), groups=len(plan.groups), reference=v.reference,
               verified=v.ok if v.reference == "float64" else f"{v.ok} (against the original: no float64 run)",
               reason=v.reason, prediction_error_pct=v.prediction_error_pct, fraction_error_pct=v.fraction_error_pct)
    c = v.candidates or {}
    rows = {r["name"]: r for r in c.get("candidates", [])}
    row["candidates_ms"] = {n: r.get("median_ms") for n, r in rows.items()}
    row["chosen"] = c.get("chosen")
    row["chosen_prediction"] = (rows.get(row["chosen"]) or {}).get("prediction")
    row["explanation"], row["not_tried"] = c.get("explanation") or [], c.get("not_tried") or {}
    ok = {n: r["median_ms"] for n, r in rows.items() if r.get("verified") and r.get("median_ms")}
    if ok and row["chosen"] in ok:
        chosen = ok[row["chosen"]]
        whole = {n: ms for n, ms in ok.items() if whole_model(n)}
        row["chosen_ms"], row["best_whole"] = chosen, min(whole, key=whole.get) if whole else None
        row["chosen_vs_best"] = min(ok.values()) / chosen
        row["chosen_vs_baseline"] = min(ok[n] for n in ("eager", "compile") if n in ok) / chosen
        row["chosen_vs_compile"] = ok["compile"] / chosen if "compile" in ok else None
        row["chosen_vs_whole"] = whole[row["best_whole"]] / chosen if whole else None
    (Path(args.out) / (spec.replace("/", "_").replace(":", "__") + ".json")).write_text(
        json.dumps(report, indent=1, allow_nan=False))
    return row


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--preset", default="tiny", choices=("tiny", "realistic"))
    ap.add_argument("--out", default="/tmp/fxfusion-zoo")
    ap.add_argument("--no-apply", action="store_true", help="analyze only (coverage, sites, wall time)")
    ap.add_argument("--no-compile", action="store_true", help="no whole-model or planned compile candidates")
    ap.add_argument("--measure", action="store_true", help="measure every site live, as analyze --measure (default: "
                    "this machine's profile in profiles/, as analyze finds it)")
    ap.add_argument("--site-compile", action="store_true", help="measure sites with their compile variants too")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting models after this many seconds")
    ap.add_argument("--insitu-budget-s", type=float, default=120.0, help="in-model timing budget per model")
    ap.add_argument("--apply-budget-s", type=float, default=None, help="the whole --apply's budget per model "
                    "(analyze --budget-s; default: 90 s on CUDA, none on a CPU)")
    ap.add_argument("--candidates", default="all", help="optional candidates: all, none or a comma list (see "
                    "fxfusion.planning.candidates.OPTIONAL)")
    ap.add_argument("--compiled-regime", action=argparse.BooleanOptionalAction, default=None,
                    help="time each group's region compiled too (default: on CUDA)")
    ap.add_argument("--compiled-context", action=argparse.BooleanOptionalAction, default=None,
                    help="measure each class of rewrites with the whole model compiled (default: with the compiled "
                         "regime; fxfusion.planning.incontext)")
    ap.add_argument("--progress", action="store_true", help="log each --apply stage and candidate build to stderr, "
                    "with its seconds (also in each model's JSON: verification.stages_s)")
    args = ap.parse_args()
    if args.progress:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("fxfusion.planning").setLevel(logging.INFO)
    parse_candidates(args.candidates)  # a bad list fails here, not as a crash of every model
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# bench_zoo: torch {torch.__version__}, {args.device} ({name}), dtype {args.dtype}, preset {args.preset}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, threads {torch.get_num_threads()}; sites decided by "
          f"{getattr(_source(args), 'path', '') or 'live measurement'}", flush=True)
    print("| model | sites | legal | fuse | applied | verified | FLOPs in sites | time in sites | analyze s | apply s | "
          "eager ms | " + " | ".join(f"{c} ms" for c in CONFIG_COLUMNS) + " | best whole-model | chosen | chosen ms | "
          "over compile | over best whole-model | of fastest | chosen's saving ms, predicted / measured |")
    print("|" + "---|" * (18 + len(CONFIG_COLUMNS)))
    rows, t0 = [], time.perf_counter()
    for spec in _specs(args):
        if time.perf_counter() - t0 > args.budget_s:
            print(f"| {spec} | not run: the --budget-s of {args.budget_s:.0f} s was spent |")
            continue
        try:
            r = run_one(spec, args)
        except Exception as exc:  # a crash is a result here: it is what the issue counts
            print(f"| {spec} | CRASH: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} |",
                  flush=True)
            traceback.print_exc(file=sys.stderr)
            rows.append({"model": spec, "crash": True})
            continue
        rows.append(r)
        ms = r.get("candidates_ms", {})
        print(f"| {spec} | {r['sites']} | {r['legal']} | {r['fuse']} | {r.get('applied', '-')} | "
              f"{r.get('verified', '-')} | {_f(r['flops_share'], '.0%')} | {_f(r['time_share'], '.0%')} | "
              f"{r['analyze_s']:.1f} | {_f(r.get('apply_s'), '.1f')} | {_f(ms.get('eager'), '.4f')} | "
              + " | ".join(_f(ms.get(c), '.4f') for c in CONFIG_COLUMNS) + f" | {r.get('best_whole') or '-'} | "
              f"{r.get('chosen', '-')} | {_f(r.get('chosen_ms'), '.4f')} | {_f(r.get('chosen_vs_compile'), '.3f')}x | "
              f"{_f(r.get('chosen_vs_whole'), '.3f')}x | {_f(r.get('chosen_vs_best'), '.3f')} | "
              f"{prediction_cell(r.get('chosen_prediction'))} |", flush=True)
    done = [r for r in rows if not r.get("crash")]
    with_error = [r for r in done if (r.get("chosen_prediction") or {}).get("error_pct") is not None]
    errors = [abs(r["chosen_prediction"]["error_pct"]) for r in with_error
              if r["chosen_prediction"].get("comparable", True)]
    moved = [r["model"] for r in with_error if not r["chosen_prediction"].get("comparable", True)]
    floors = [abs(r["chosen_prediction"]["floor_error_pct"]) for r in with_error
              if r["chosen_prediction"].get("floor_error_pct") is not None]
    crashes = [r["model"] for r in rows if r.get("crash")]
    print(f"\ncrashes: {len(crashes)} {crashes}")
    slow = [r["model"] for r in done if r["analyze_s"] > ANALYZE_TARGET_S]
    print(f"analyze over {ANALYZE_TARGET_S:.0f} s: {slow or 'none'}")
    for key, what, target in (("chosen_vs_compile", "default torch.compile", OVER_COMPILE_TARGET),
                              ("chosen_vs_whole", "the best whole-model configuration", GEOMEAN_TARGET),
                              ("chosen_vs_baseline", "the better of eager and default compile", None)):
        gains = [r[key] for r in done if r.get(key)]
        if gains:
            geo = math.exp(sum(math.log(g) for g in gains) / len(gains))
            print(f"geometric mean of the chosen candidate over {what}: {geo:.3f}x"
                  + (f" (target {target:.2f}x)" if target else "") + f" over {len(gains)} models")
    below = [r["model"] for r in done if (r.get("chosen_vs_best") or 1) < CHOSEN_TARGET]
    slower = [r["model"] for r in done if (r.get("chosen_vs_whole") or 1) < 1.0]
    late = [f"{r['model']} ({r['apply_s']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in
            (r.get("stages_s") or {}).items()) + "; of verify_and_choose: " + ", ".join(
            f"{k} {v:.0f} s" for k, v in (r.get("verify_steps_s") or {}).items()) + ")"
            for r in done if (r.get("apply_s") or 0) > APPLY_TARGET_S]
    print(f"chosen below {CHOSEN_TARGET}x of the fastest: {below or 'none'}; chosen slower than the best whole-model "
          f"configuration: {slower or 'none'}; --apply over {APPLY_TARGET_S:.0f} s: {late or 'none'}")
    for r in done:
        if r.get("explanation") or r.get("not_tried"):
            print(f"\n{r['model']}: chosen {r.get('chosen')}; where the time went:")
            print("\n".join(f"  {x}" for x in r.get("explanation") or []))
            for name, why in (r.get("not_tried") or {}).items():
                print(f"  not tried {name}: {why}")
    without = [r["model"] for r in done if (r.get("chosen") or "").startswith("planned")
               and (r.get("chosen_prediction") or {}).get("error_pct") is None]
    print(f"chosen candidate's predicted saving within {PREDICTION_TARGET_PCT:.0f}%: "
          f"{sum(e <= PREDICTION_TARGET_PCT for e in errors)} of {len(errors)} with a comparable prediction; "
          f"not comparable (the base's speed moved over {HOST_MOVED}x between the runs): {moved or 'none'}; "
          f"chosen rewritten candidates without one: {without or 'none'}")
    if floors:
        print(f"the same from each side's fastest rounds (10th percentiles): "
              f"{sum(e <= PREDICTION_TARGET_PCT for e in floors)} of {len(floors)} within {PREDICTION_TARGET_PCT:.0f}%")


if __name__ == "__main__":
    main()
