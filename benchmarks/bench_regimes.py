"""The pipelined regime against an independent probe: a CUDA recalibration in both regimes, and the same callables
timed by a plain do_bench-style loop.

    python3 benchmarks/bench_regimes.py --out DIR [--device cuda] [--patterns P,..] [--sizes 3|all]
                                        [--dtypes bfloat16] [--no-compile | --compile-modes M,..] [--resume]

What it runs, prints and writes: :mod:`fxfusion.reports.regimes_check` (the check, with its tests) and
benchmarks/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fxfusion.reports.regimes_check import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
