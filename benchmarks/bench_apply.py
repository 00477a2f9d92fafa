"""Plans applied end to end: for every model in models/, plan, apply, verify, and compare prediction with measurement.

Targets (issue 4): on every model the planned model is never slower than eager beyond the noise interval (its
speedup interval does not lie wholly below 1 - MIN_EFFECT), and the predicted saving is within +-20% of the
measured one.  Per model it prints eager / planned / torch.compile medians with the speedup's 95% interval, the
planned-vs-eager verdict, the predicted and measured saving per forward and the prediction error -- in milliseconds,
and as fractions of the original model's time paired per round (robust to a host whose speed drifts) -- each
group's in-model saving, and what the pattern library's standalone timings alone would have predicted.

Decisions come from a live measurement of each model's sites at their exact shapes (default), or from a profile;
predictions come from each group's region timed inside the model (fxfusion.planning.insitu):
    python benchmarks/bench_apply.py [--device cuda] [--profile profiles/h100.json] [--models resnet_basic,...]
                                     [--preset tiny] [--dtype bfloat16] [--no-compile] [--json out.json]
Run it on an otherwise idle machine: the end-to-end times of these small models are tens to hundreds of us.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxfusion.graph.loader import import_file, move  # noqa: E402
from fxfusion.planning.pipeline import plan  # noqa: E402
from fxfusion.profiles.profile import Profile  # noqa: E402
from fxfusion.measure.stats import MIN_EFFECT  # noqa: E402
from fxfusion.measure.timing import QUICK_SPEC, TimingSpec  # noqa: E402
from fxfusion.planning.verify import verify_plan  # noqa: E402

ERROR_TARGET_PCT = 20.0
VERIFY_SPEC = TimingSpec(rounds=40, warmup=5, target_sample_s=0.02, budget_s=30.0)


def load(name: str, preset: str, device: str, dtype: torch.dtype | None = None):
    """The model at ``preset``: 'tiny' (get_model's default), 'large' (the model's first other preset) or a name."""
    module = import_file(ROOT / "models" / f"{name}.py")
    presets = getattr(module, "PRESETS", {})
    if preset == "large":
        preset = next((p for p in presets if p != "tiny"), "")
    if preset != "tiny" and preset not in presets:
        return None
    cfg = presets.get(preset)
    model = module.get_model(cfg) if cfg is not None else module.get_model()
    inputs = module.get_inputs(cfg) if cfg is not None else module.get_inputs()
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return move(model, inputs, device, dtype)


def fmt_ci(t) -> str:
    if t is None or t.median_ms is None:
        return f"{'-':>28}"
    sp = t.speedup
    tail = f" {sp['median']:.2f}x[{sp['ci_low']:.2f},{sp['ci_high']:.2f}]" if sp else ""
    return f"{t.median_ms:8.3f}ms{tail:>20}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", default=None, help="decide from this profile instead of measuring the sites live")
    ap.add_argument("--models", default=None, help="comma list of models/ file stems (default: all)")
    ap.add_argument("--preset", default="tiny", help="tiny, large (each model's bigger preset) or a preset name")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (site variants and whole model)")
    ap.add_argument("--dtype", default=None, help="move the models and inputs to this dtype (e.g. bfloat16)")
    ap.add_argument("--json", default=None, help="write the per-model results here")
    ap.add_argument("--repeat", type=int, default=1, help="plan and verify each model this many times (errors summarised)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    names = args.models.split(",") if args.models else sorted(p.stem for p in (ROOT / "models").glob("*.py")
                                                              if not p.stem.startswith("_"))
    profile = Profile.load(args.profile) if args.profile else None
    # Sites are measured with the default-mode compile only: reduce-overhead doubles the compile time of a live plan.
    modes = () if args.no_compile else ("compile",)
    rows, results = [], {}
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"preset {args.preset}, dtype {args.dtype or 'as the model'}, decisions from {'profile ' + args.profile if profile else 'live site measurement'}")
    for name in names:
        loaded = load(name, args.preset, args.device, getattr(torch, args.dtype) if args.dtype else None)
        if loaded is None:
            print(f"{name}: no preset {args.preset!r}, skipped")
            continue
        model, inputs = loaded
        for rep in range(args.repeat):
            start = time.perf_counter()
            p = plan(model, profile, inputs, device=args.device, spec=QUICK_SPEC, compile_modes=modes)
            plan_s = time.perf_counter() - start
            r = verify_plan(model, inputs, p, device=args.device, spec=VERIFY_SPEC, include_compile=not args.no_compile)
            wall = time.perf_counter() - start
            groups = ", ".join(f"{g.id}:{g.pattern}->{g.variant}" for g in p.groups) or "none"
            refused = ", ".join(f"{x.site_id}:{x.why}" for x in p.refused) or "none"
            t = r.timings
            slower = r.planned_verdict == "avoid"
            pred = f"{r.predicted_saving_ms:+.4f}" if r.predicted_saving_ms is not None else "?"
            err = f"{r.prediction_error_pct:+.0f}%" if r.prediction_error_pct is not None else "-"
            lo, hi = r.measured_saving_ci_ms or (float("nan"), float("nan"))
            label = name if args.repeat == 1 else f"{name}#{rep + 1}"
            print(f"\n{label}  ({plan_s:.1f}s plan, {wall:.1f}s total)  verified={'yes' if r.ok else 'NO: ' + r.reason}")
            print(f"  groups: {groups}\n  refused: {refused}")
            print(f"  eager   {fmt_ci(t.get('eager'))}\n  planned {fmt_ci(t.get('planned'))}  verdict "
                  f"{r.planned_verdict}{'  SLOWER THAN EAGER' if slower else ''}\n  compile {fmt_ci(t.get('compile'))}"
                  f"\n  captured graph (no rewrite) {fmt_ci(t.get('captured'))}; plan's overhead estimate "
                  f"{p.overhead_ms if p.overhead_ms is None else round(p.overhead_ms, 4)} ms")
            print(f"  saving/forward: predicted {pred} ms, measured {r.measured_saving_ms:+.4f} ms "
                  f"[{lo:+.4f}, {hi:+.4f}]{' (within noise)' if r.saving_within_noise else ''}; error {err}"
                  f" ({r.prediction_error_pct_of_eager:+.1f}% of eager)" if r.prediction_error_pct_of_eager is not None
                  else f"  saving/forward: predicted {pred} ms, measured {r.measured_saving_ms:+.4f} ms")
            for g in p.groups:
                im = g.in_model or {}
                print(f"    {g.id} {g.variant}: in-model {im.get('saving_ms', float('nan')):+.4f} ms "
                      f"[{im.get('ci_low_ms', float('nan')):+.4f}, {im.get('ci_high_ms', float('nan')):+.4f}]"
                      f"{' (also frees ' + ', '.join(im['released']) + ')' if im.get('released') else ''}; "
                      f"library {g.library_saving_ms if g.library_saving_ms is None else round(g.library_saving_ms, 4)}")
            if r.predicted_fraction is not None:
                ferr = r.fraction_error_pct
                print(f"  as fractions of eager, paired per round: predicted {r.predicted_fraction:+.1%}, measured "
                      f"{r.measured_fraction:+.1%} [{r.measured_fraction_ci[0]:+.1%}, {r.measured_fraction_ci[1]:+.1%}]; "
                      f"error {'-' if ferr is None else f'{ferr:+.0f}%'}")
            if r.library_predicted_saving_ms is not None:
                lerr = r.library_prediction_error_pct
                print(f"  the pattern library alone would have predicted {r.library_predicted_saving_ms:+.4f} ms"
                      f" (error {'-' if lerr is None else f'{lerr:+.0f}%'})")
            rows.append((label, r.ok, slower, r.prediction_error_pct, r.saving_within_noise,
                         r.library_prediction_error_pct, r.fraction_error_pct))
            results[label] = {"plan": p.to_dict(), "verification": r.to_dict(), "plan_s": plan_s, "wall_s": wall}
    print("\nsummary")
    for name, ok, slower, err, noise, lerr, serr in rows:
        if err is None:
            verdict = "no group applied: the planned model is a copy of the original"
        else:
            verdict = (f"prediction error {err:+.0f}% ({'within' if abs(err) <= ERROR_TARGET_PCT else 'outside'} "
                       f"+-{ERROR_TARGET_PCT:.0f}%{'; measured saving within noise' if noise else ''})"
                       + (f"; as paired fractions {serr:+.0f}%" if serr is not None else "")
                       + (f"; library alone {lerr:+.0f}%" if lerr is not None else ""))
        print(f"  {name:20s} verified={'yes' if ok else 'NO'}  slower-than-eager={'YES' if slower else 'no'}  {verdict}")
    print(f"(slower = the planned/eager speedup interval lies wholly below {1 - MIN_EFFECT:.2f})")
    if args.repeat > 1:
        print(f"\nprediction errors over {args.repeat} plans per model (ms / paired fraction): median, worst")
        for name in names:
            runs = [row for row in rows if row[0].split("#")[0] == name and row[3] is not None]
            if not runs:
                continue
            ms = sorted(row[3] for row in runs)
            fr = sorted(row[6] for row in runs if row[6] is not None)
            worst = (lambda xs: max(xs, key=abs) if xs else float("nan"))
            print(f"  {name:20s} ms {' '.join(f'{x:+.0f}%' for x in ms)} (median {ms[len(ms) // 2]:+.0f}%, worst "
                  f"{worst(ms):+.0f}%); fraction {' '.join(f'{x:+.0f}%' for x in fr)}"
                  + (f" (median {fr[len(fr) // 2]:+.0f}%, worst {worst(fr):+.0f}%)" if fr else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
