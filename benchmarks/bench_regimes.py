"""The pipelined regime against an independent probe, and for every disagreement which definition differs: a
calibration (or, with --profile, a shipped profile as it is) against a plain do_bench-style loop.

    python3 benchmarks/bench_regimes.py --out DIR [--device cuda] [--patterns P,..] [--sizes 3|all|quick|full|gpu]
        [--dtypes bfloat16] [--no-compile | --compile-modes M,..] [--resume] [--profile profiles/h200.json]
        [--definitions disagreeing|all|none]
    python3 benchmarks/bench_regimes.py --from-json DIR/cells.json      # attribute again, time nothing

What it runs, prints and writes: :mod:`fxfusion.reports.regimes_check` (the check, with its tests) and
benchmarks/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fxfusion.errors import FxFusionError  # noqa: E402
from fxfusion.reports.regimes_check import run  # noqa: E402

if __name__ == "__main__":
    try:
        raise SystemExit(run())
    except FxFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1)
