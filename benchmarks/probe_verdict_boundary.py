"""Why two idle runs of bench_noise disagree: one entry measured again and again in one process, its verdict each time.

An entry whose effect lies near the edge of the neutral zone (MIN_EFFECT, 2%) gets ``fuse`` when its interval's low
end happens to clear 1.02 and ``neutral`` when it does not, run after run on an idle machine; no noise rule can make
such a verdict reproducible, only a wider zone (which moves the edge) can.  This probe shows how often it happens for
the bench_noise entries that changed between idle runs (runs 17-21 in docs/results/cpu-noise/history/).

    python3 benchmarks/probe_verdict_boundary.py [--repeats 8]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxfusion.calibration.calibrate import measure_entry  # noqa: E402
from fxfusion.fusions.registry import REGISTRY  # noqa: E402
from fxfusion.measure.hardware import resolve  # noqa: E402
from fxfusion.measure.timing import QUICK_SPEC, clock_for  # noqa: E402

CASES = [("conv2d_bn_relu", {"B": 4, "Cin": 128, "Cout": 128, "H": 28, "W": 28, "k": 3, "G": 1}, "bn_folded"),
         ("linear_bias_relu", {"M": 64, "K": 256, "N": 256}, "addmm")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    spec = dataclasses.replace(QUICK_SPEC, rounds=30)  # bench_noise's timing
    hw, clock = resolve("generic-cpu"), clock_for("cpu")
    for pattern, shape, variant in CASES:
        print(f"{pattern} {shape} {variant}, pipelined regime, {args.repeats} measurements (fresh inputs each):")
        verdicts = collections.Counter()
        for i in range(args.repeats):
            e = measure_entry(REGISTRY[pattern], dict(shape), "float32", "cpu", hw, spec, clock, compile_modes=(),
                              seed=i)
            v = next(v for v in e.variants if v.name == variant)
            s = v.pipelined.speedup
            verdicts[v.pipelined.verdict] += 1
            print(f"  {s.median:.3f}x [{s.ci_low:.3f}, {s.ci_high:.3f}] {v.pipelined.verdict}")
        print(f"  verdicts: {dict(verdicts)}")


if __name__ == "__main__":
    main()
