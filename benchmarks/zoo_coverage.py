"""Coverage over the zoo: per model, the share of FLOPs and of time inside matched sites and the unmatched op kinds
that take the most time -- what the tool leaves on the table.  Match only (no decisions, no apply).

    python benchmarks/zoo_coverage.py                                   # tiny presets, this CPU
    python benchmarks/zoo_coverage.py --device cuda --dtype bfloat16 --preset realistic
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_zoo  # noqa: E402

if __name__ == "__main__":
    sys.argv.append("--no-apply")
    bench_zoo.main()
