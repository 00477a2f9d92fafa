"""The pipelined regime against an independent probe: a CUDA recalibration in both regimes, and the same callables
timed by a plain do_bench-style loop.

    python3 benchmarks/bench_regimes.py --out DIR [--device cuda] [--patterns P,..] [--sizes 3|all]
                                        [--dtypes bfloat16] [--no-compile | --compile-modes M,..] [--resume]

1. Calibrate a chosen subset of the pattern library on the GPU (``fxfusion.calibrate``: both regimes, noise guard
   on); the choice -- patterns, the first ``--sizes`` shapes of each one's ``gpu`` size set, dtypes, compile mode --
   is printed first.  The default subset took 61 s on one H200 (2026-12-01).  With ``--patterns all --sizes all
   --dtypes float32,bfloat16 --compile-modes compile,compile_reduce_overhead`` it is the calibration
   ``fxfusion calibrate --sizes gpu`` makes, probed: the run that wrote the shipped ``profiles/h200.json``.  That takes
   longer than one device call allows; cut short (SIGINT, e.g. ``timeout -s INT``), the entries finished so far stay
   in the journal, and ``--resume`` continues with them and their probes.
2. While each entry's variants are still alive (``calibrate(on_thunks=...)``), time each of them with the probe
   (:func:`fxfusion.measure.probe.probe`): a plain loop of back-to-back calls between two CUDA events around a
   batch, batches sized to about ``PROBE_BATCH_S``, the median of ``PROBE_REPS`` batches per call (what
   ``triton.testing.do_bench`` does without its L2 flush; Triton is not needed).
3. Per cell (entry, variant): the pipelined median against the probe, and for each fused variant the pipelined
   verdict against the probe's direction (fuse above 1.1x, avoid below 0.9x).  Summary: the share of pipelined
   medians within +-20% of the probe (target >= 90%) and the direction agreement in cells whose probe speedup lies
   outside 0.9-1.1 (target >= 90%); the isolated medians against the probe are printed for contrast.
DIR receives ``profile_regimes.json`` (the profile), ``probes.json`` and ``bench_regimes.txt`` (this log).

The check lives here, so the tests import it; ``benchmarks/bench_regimes.py`` is its command line (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from fxfusion.measure.probe import PROBE_BATCH_S, PROBE_REPS, CpuBatchTimer, CudaBatchTimer, probe

PATTERNS = ("linear_bias_gelu,linear_bias_relu,add_layernorm,rmsnorm,full_attention,causal_attention,"
            "conv2d_bn_relu,qk_softmax")
SIZES = 3  # the first three of each pattern's gpu size set: launch-bound, middling, device-bound
DTYPES = "bfloat16"
WITHIN = 0.20  # a pipelined median within +-20% of the probe agrees
DIRECTION_BAND = (0.9, 1.1)  # probe speedups inside it are too close to 1 to have a direction
TARGET = 0.90


@dataclass
class Cell:
    key: str
    variant: str
    pipelined_ms: float
    isolated_ms: float
    probe_ms: float
    within: bool  # pipelined median within +-WITHIN of the probe
    isolated_within: bool
    pipelined_speedup: float | None = None  # fused variants: the calibration's pipelined speedup over eager
    pipelined_verdict: str | None = None
    probe_speedup: float | None = None  # probe(eager) / probe(variant)
    direction: str | None = None  # "agree" / "disagree" outside DIRECTION_BAND, None inside it (or eager)


def _within(a: float, b: float) -> bool:
    return b > 0 and abs(a / b - 1.0) <= WITHIN


def _direction(cell: Cell) -> str | None:
    low, high = DIRECTION_BAND
    if cell.probe_speedup is None or low <= cell.probe_speedup <= high:
        return None
    faster = cell.probe_speedup > high
    same_side = (cell.pipelined_speedup > 1.0) == faster
    opposite = cell.pipelined_verdict == ("avoid" if faster else "fuse")
    return "agree" if same_side and not opposite else "disagree"


def compare_cells(profile, probes: dict[str, dict[str, float]]) -> list[Cell]:
    """One cell per (entry, variant) timed in both regimes and probed; ``probes``: entry key -> variant -> ms."""
    cells = []
    for e in profile.entries:
        got = probes.get(e.key(), {})
        for v in e.variants:
            if v.status != "ok" or v.pipelined is None or v.name not in got:
                continue
            c = Cell(e.key(), v.name, v.pipelined.median_ms, v.median_ms, got[v.name],
                     _within(v.pipelined.median_ms, got[v.name]), _within(v.median_ms, got[v.name]))
            if v.kind != "eager" and "eager" in got and v.pipelined.speedup is not None:
                c.pipelined_speedup, c.pipelined_verdict = v.pipelined.speedup.median, v.pipelined.verdict
                c.probe_speedup = got["eager"] / got[v.name]
                c.direction = _direction(c)
            cells.append(c)
    return cells


def summary(cells: list[Cell]) -> dict:
    directed = [c for c in cells if c.direction is not None]
    n = len(cells)
    within = sum(c.within for c in cells) / n if n else 0.0
    agree = sum(c.direction == "agree" for c in directed) / len(directed) if directed else 0.0
    return {"cells": n, "within_share": within, "isolated_within_share": sum(c.isolated_within for c in cells) / n
            if n else 0.0, "directed_cells": len(directed), "direction_agreement": agree,
            "ok": n > 0 and within >= TARGET and (not directed or agree >= TARGET)}


def rows(cells: list[Cell]) -> list[str]:
    width = max((len(c.key) for c in cells), default=10)
    out = [f"{'entry':<{width}}  {'variant':<24} {'pipelined ms':>12} {'probe ms':>10} {'pipe/probe':>10} "
           f"{'isolated ms':>11}  pipelined verdict (x)     probe x  direction"]
    for c in cells:
        verdict = f"{c.pipelined_verdict} ({c.pipelined_speedup:.2f})" if c.pipelined_verdict else "-"
        out.append(f"{c.key:<{width}}  {c.variant:<24} {c.pipelined_ms:>12.4f} {c.probe_ms:>10.4f} "
                   f"{c.pipelined_ms / c.probe_ms:>9.2f}{' ' if c.within else '!'} {c.isolated_ms:>11.4f}  "
                   f"{verdict:<24} {c.probe_speedup if c.probe_speedup is not None else float('nan'):>8.2f}  "
                   f"{c.direction or '-'}")
    return out


def summary_lines(s: dict) -> list[str]:
    return [f"pipelined medians within +-{WITHIN:.0%} of the probe: {s['within_share']:.0%} of {s['cells']} cells "
            f"(target >= {TARGET:.0%}); isolated medians, for contrast: {s['isolated_within_share']:.0%}",
            f"verdict direction agreement where the probe is outside {DIRECTION_BAND[0]}-{DIRECTION_BAND[1]}x: "
            f"{s['direction_agreement']:.0%} of {s['directed_cells']} cells (target >= {TARGET:.0%})",
            "OK" if s["ok"] else "MISSED"]


def main() -> int:
    from fxfusion.errors import FxFusionError

    try:
        return run()
    except FxFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the profile, the probes and the log")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--hardware", default="h200")
    ap.add_argument("--patterns", default=PATTERNS)
    ap.add_argument("--sizes", default=str(SIZES),
                    help="the first N shapes of each pattern's gpu size set, or 'all' (the whole set)")
    ap.add_argument("--dtypes", default=DTYPES)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--compile-modes", default="compile",
                    help="torch.compile variants to calibrate: compile, or compile,compile_reduce_overhead (what "
                         "`fxfusion calibrate` measures)")
    ap.add_argument("--resume", action="store_true",
                    help="continue a run cut short: the journal in --out and the probes.json beside it are kept")
    args = ap.parse_args()
    max_shapes = None if args.sizes == "all" else int(args.sizes)
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from fxfusion.calibration.calibrate import calibrate, check_device
    from fxfusion.fusions.registry import select_patterns
    from fxfusion.measure.hardware import device_name

    device = check_device(args.device)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    chosen = select_patterns(args.patterns)
    modes = () if args.no_compile else tuple(m.strip() for m in args.compile_modes.split(",") if m.strip())
    say(f"bench_regimes: {datetime.now(timezone.utc).isoformat(timespec='seconds')}, {device_name(device)} "
        f"({device}), torch {torch.__version__}")
    say(f"command: python3 {' '.join(sys.argv)}")
    say(f"chose: patterns {', '.join(p.name for p in chosen)}; "
        f"{'all' if max_shapes is None else f'the first {max_shapes}'} shapes of each one's gpu size set; dtypes "
        f"{args.dtypes}; variants eager, manual{', ' + ', '.join(modes) if modes else ''}"
        f"{'; resumed from the journal in ' + str(args.out) if args.resume else ''}")
    for p in chosen:
        say(f"  {p.name}: " + "; ".join(",".join(f"{k}={v}" for k, v in s.items()) for s in p.shapes["gpu"][:max_shapes]))
    say(f"probe: back-to-back calls between two {'CUDA events' if device.type == 'cuda' else 'perf_counter reads'}, batches of ~{PROBE_BATCH_S * 1e3:g} ms, median of "
        f"{PROBE_REPS} batches")
    timer = CudaBatchTimer(device) if device.type == "cuda" else CpuBatchTimer()
    probes: dict[str, dict[str, float]] = {}
    if args.resume and (args.out / "probes.json").exists():  # the probes of the entries the journal holds
        probes = json.loads((args.out / "probes.json").read_text())

    def on_thunks(key, thunks):
        probes[key] = {name: probe(fn, timer) * 1e3 for name, fn in thunks.items()}
        (args.out / "probes.json").write_text(json.dumps(probes, indent=1) + "\n")  # kept if the run is cut short

    def on_entry(done, total, entry, message):
        if entry is not None:  # progress on stdout, so a cut-short run shows how far it got
            print(f"[{done}/{total}, {time.perf_counter() - start:.0f} s] {entry.key()}: isolated "
                  f"{entry.decision.verdict}, pipelined {entry.pipelined_decision.verdict}", flush=True)

    start = time.perf_counter()
    try:
        profile = calibrate(hardware=args.hardware, device=str(device), patterns=args.patterns, dtypes=args.dtypes,
                            sizes="gpu", compile_modes=modes, output=args.out / "profile_regimes.json",
                            command="fxfusion calibrate (benchmarks/bench_regimes.py " + " ".join(sys.argv[1:]) + ")",
                            on_thunks=on_thunks, on_entry=on_entry, max_shapes=max_shapes, resume=args.resume)
    except KeyboardInterrupt:
        say(f"interrupted after {time.perf_counter() - start:.0f} s: the finished entries are in the journal in "
            f"{args.out}; run again with --resume")
        (args.out / "bench_regimes.interrupted.txt").write_text("\n".join(lines) + "\n")
        return 3
    say(f"calibrated {len(profile.entries)} entries and probed them in {time.perf_counter() - start:.0f} s; "
        f"noise: {profile.metadata['noise']['contended_entries']} contended, "
        f"{profile.metadata['noise']['remeasured_entries']} measured again, "
        f"{len(profile.metadata['noise']['noisy'])} regime verdicts noisy")
    (args.out / "probes.json").write_text(json.dumps(probes, indent=1) + "\n")
    cells = compare_cells(profile, probes)
    say()
    for line in rows(cells):
        say(line)
    say()
    s = summary(cells)
    for line in summary_lines(s):
        say(line)
    (args.out / "bench_regimes.txt").write_text("\n".join(lines) + "\n")
    (args.out / "cells.json").write_text(json.dumps({"summary": s, "cells": [asdict(c) for c in cells]}, indent=1)
                                         + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
