"""Wall time of `fxfusion calibrate --quick` on this machine, and the share of it spent compiling.

Target (issue 2): under 3 minutes on a 2-core CPU.  Prints one line per run; run it on an otherwise idle machine.
Inductor caches compiled graphs on disk; for a first-run (cold cache) time, point it at an empty folder:
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/bench_calibrate_quick.py
    python benchmarks/bench_calibrate_quick.py [--device cpu] [--hardware generic-cpu]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _args import calibration_args

from fxfusion.calibration.calibrate import calibrate

TARGET_S = 180.0


def main() -> None:
    args = calibration_args(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        profile = calibrate(args.hardware, device=args.device, patterns=args.patterns, quick=True,
                            output=Path(tmp) / "quick.json", command="benchmarks/bench_calibrate_quick.py")
        wall = time.perf_counter() - start
    compile_s = sum(v.compile_s or 0.0 for e in profile.entries for v in e.variants)
    print(f"device={args.device} threads={profile.metadata['threads']} entries={len(profile.entries)} "
          f"wall={wall:.1f}s compile={compile_s:.1f}s ({compile_s / wall:.0%} of wall) "
          f"target<{TARGET_S:.0f}s ratio={wall / TARGET_S:.2f} {'OK' if wall < TARGET_S else 'MISSED'}")


if __name__ == "__main__":
    main()
