"""How the noise guard's reference kernel behaves on an idle device, at the old and the new size.

    python3 benchmarks/probe_reference_kernel.py [--device cuda] [--measurements 20] [--rounds 40]

The calibration times a reference matmul once per round, between the variants (fxfusion.measure.noise), and counts a
measurement contended when the reference's spread (IQR / median) exceeds REFERENCE_SPREAD_LIMIT or its median exceeds
REFERENCE_SLOWDOWN_LIMIT x the quietest median so far.  On an idle H200 the 256 x 256 reference (one ~35 us launch)
tripped those limits in 78 of 209 entries (docs/decisions.md, "Noise").  This takes measurements as the calibration
does -- rounds of: other GPU work of varying size (as the variants are), one untimed reference call, one timed
isolated call (fxfusion's clock, as the calibration's reference) -- for each size in turn, interleaved, and prints the
spread and slowdown percentiles and how many measurements each limit would call contended.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from fxfusion.measure import noise
from fxfusion.measure.stats import summarize
from fxfusion.measure.timing import clock_for


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--measurements", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    sizes = sorted({noise.REFERENCE_N, noise.reference_size(args.device)})
    clock = clock_for(args.device, "isolated")
    refs = {n: noise.reference_kernel(args.device, n) for n in sizes}
    # other work between rounds, as variants run
    fillers = [noise.reference_kernel(args.device, n) for n in (64, 512, 1024)]
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"# probe_reference_kernel: {args.device} ({name}), torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.measurements} measurements x {args.rounds} "
          f"rounds per size, load average {os.getloadavg()[0]:.2f}")
    spreads: dict[int, list[float]] = {n: [] for n in sizes}
    medians: dict[int, list[float]] = {n: [] for n in sizes}
    for m in range(args.measurements):
        for n in (sizes if m % 2 == 0 else sizes[::-1]):
            ref, times = refs[n], []
            for r in range(args.rounds):
                fillers[r % len(fillers)]()
                ref()  # untimed, as the calibration does: the timed call finds its data in cache
                times.append(clock.sample(ref, 1))
            s = summarize(times)
            spreads[n].append(s.iqr / s.median)
            medians[n].append(s.median)
    print("| reference | median us | spread p10 / p50 / p90 / max | slowdown p50 / p90 / max | over spread limit "
          f"({noise.REFERENCE_SPREAD_LIMIT:.0%}) | over slowdown limit ({noise.REFERENCE_SLOWDOWN_LIMIT}x) | "
          "contended by either |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        quiet, slow = float("inf"), []
        for med in medians[n]:  # as NoiseGuard.assess: against the quietest median *so far*
            quiet = min(quiet, med)
            slow.append(med / quiet)
        over_spread = [x > noise.REFERENCE_SPREAD_LIMIT for x in spreads[n]]
        over_slow = [x > noise.REFERENCE_SLOWDOWN_LIMIT for x in slow]
        print(f"| {n}x{n} float32 | {summarize(medians[n]).median * 1e6:.1f} | "
              f"{pct(spreads[n], .1):.1%} / {pct(spreads[n], .5):.1%} / {pct(spreads[n], .9):.1%} / "
              f"{max(spreads[n]):.1%} | {pct(slow, .5):.2f} / {pct(slow, .9):.2f} / {max(slow):.2f} | "
              f"{sum(over_spread)} of {len(over_spread)} | {sum(over_slow)} of {len(over_slow)} | "
              f"{sum(a or b for a, b in zip(over_spread, over_slow))} of {len(over_spread)} |")


if __name__ == "__main__":
    main()
