"""The zoo (models/zoo/) through the real CLI: per model, the sites found / legal / applied and what is unmatched.

For every zoo entry it runs, each in its own process and timed by the wall clock,
    python3 -m fxfusion analyze models/zoo/FILE.py[:NAME] --apply --no-compile --threads T --format json -o OUT
(and, with --match-only-too, the same with --match-only), and prints one markdown row per entry: sites, legal
(status "fusible"), illegal, already fused, 'fuse' verdicts, rewrites applied, whether the plan verified against
float64, the analyze wall time and CPU time (--match-only's wall time in brackets), and the unmatched op kinds with
their counts.  The CPU time is the one to compare on a shared machine, whose other work stretches the wall time.  Entries whose library is missing are
listed as skipped.  --threads 1 is the default: on a shared 2-core machine a second OpenMP thread that has to wait
for a busy core makes a tiny model's forward pass 10-100x slower (EfficientNet-B0 at 32x32: 1.5 s vs 11 ms).

    python3 benchmarks/zoo_table.py [--entries tv_resnet50.py,hf_llama.py:decode] [--out DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
sys.path.insert(0, str(ROOT))

from tests.zoo_entries import ENTRIES  # noqa: E402


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(spec: str, out: Path, threads: int, match_only: bool) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, exit code, last stderr line) of one analyze run in its own process."""
    mode = ["--match-only"] if match_only else ["--apply", "--no-compile"]
    cmd = [sys.executable, "-m", "fxfusion", "analyze", str(ZOO / spec), *mode, "--threads", str(threads),
           "--format", "json", "-o", str(out)]
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last_line = (done.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - t0, _children_cpu_s() - cpu0, done.returncode, last_line


def row(spec: str, report: dict, seconds: float, cpu: float, match_seconds: float | None) -> str:
    s, v = report["summary"], report.get("verification") or {}
    legal = sum(1 for x in report["sites"] if x["status"] == "fusible")
    applied = [r for r in v.get("rewrites", []) if r["applied"]]
    variants = sorted({r["variant"] for r in applied})
    unmatched = ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in report["unmatched"].items())
    timing = f"{seconds:.0f} / {cpu:.0f}" + (f" ({match_seconds:.0f})" if match_seconds is not None else "")
    return (f"| `{spec}` | {report['capture']['nodes']} | {s['sites']} | {legal} | {s['illegal']} | "
            f"{s['already_fused']} | {s['fuse']} | {len(applied)} {'/'.join(variants)} | "
            f"{'yes' if v.get('ok') else 'NO'} | {timing} | {unmatched} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", default=None, help="comma list of zoo entries (default: every tiny entry)")
    ap.add_argument("--out", default=None, help="keep the JSON reports in this folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--match-only-too", action="store_true", help="also time --match-only (shown in brackets)")
    args = ap.parse_args()
    entries = {e.spec: e for e in ENTRIES}
    chosen = args.entries.split(",") if args.entries else list(entries)
    out = Path(args.out or tempfile.mkdtemp(prefix="zoo-"))
    out.mkdir(parents=True, exist_ok=True)
    print("| entry | nodes | sites | legal | illegal | already fused | fuse | applied | verified "
          "| analyze wall / CPU s | unmatched ops |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |")
    for spec in chosen:
        lib = entries[spec].library if spec in entries else None
        if lib and importlib.util.find_spec(lib) is None:
            print(f"| `{spec}` | skipped: {lib} is not installed |")
            continue
        name = spec.replace(".py", "").replace(":", "-")
        match_seconds = None
        if args.match_only_too:
            match_seconds, _, _, _ = run(spec, out / f"{name}.match.json", args.threads, True)
        seconds, cpu, code, last = run(spec, out / f"{name}.json", args.threads, False)
        path = out / f"{name}.json"
        if not path.exists():
            print(f"| `{spec}` | FAILED (exit {code}): {last} |")
            continue
        print(row(spec, json.loads(path.read_text()), seconds, cpu, match_seconds), flush=True)
    print(f"\nreports in {out}; threads {args.threads}", file=sys.stderr)


if __name__ == "__main__":
    main()
