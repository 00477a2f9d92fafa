"""Repeatability: run the quick calibration twice and print the share of entries whose verdict agrees.

Target (issue 2): at least 90% agreement.  A disagreement between `fuse` and `avoid` would be a real failure; one
between a decisive verdict and `neutral` is the interval doing its job near the boundary, and is listed.
    python benchmarks/bench_repeatability.py [--device cpu] [--patterns all]
"""

from __future__ import annotations

from _args import calibration_args

from fxfusion.calibration.calibrate import calibrate

TARGET = 0.90


def main() -> None:
    args = calibration_args(__doc__.splitlines()[0])
    runs = [calibrate(args.hardware, device=args.device, patterns=args.patterns, quick=True, skip_ceilings=True,
                      seed=seed, command="benchmarks/bench_repeatability.py") for seed in (0, 1)]
    first = {e.key(): e.decision for e in runs[0].entries}
    agree, opposite = 0, 0
    for e in runs[1].entries:
        a, b = first[e.key()], e.decision
        if a.verdict == b.verdict:
            agree += 1
            continue
        opposite += {a.verdict, b.verdict} == {"fuse", "avoid"}
        print(f"  differs: {e.key()}: {a.verdict} ({a.reason}) vs {b.verdict} ({b.reason})")
    share = agree / len(runs[1].entries)
    print(f"device={args.device} entries={len(runs[1].entries)} agree={agree} share={share:.0%} "
          f"fuse<->avoid flips={opposite} target>={TARGET:.0%} {'OK' if share >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
