"""Markdown tables of a profile's decisions, with the host/device split and kernel counts that explain them.

    python benchmarks/profile_tables.py profiles/h200.json > /tmp/tables.md
Used to write docs/results.md and docs/results/h200-profile-tables.md (the columns before "pipelined" are the
isolated regime's: one synchronised call; the last is the back-to-back regime's own decision, schema 1.1); every number printed comes from the profile file named on the command line.
"""

from __future__ import annotations

import sys

from fxfusion.profiles.profile import Profile


def _us(ms):
    return f"{ms * 1e3:.0f}" if ms is not None else "-"


def _speedup(d) -> str:
    return f"{d.speedup.median:.2f}× [{d.speedup.ci_low:.2f}, {d.speedup.ci_high:.2f}]" if d.speedup else "-"


def tables(profile: Profile) -> str:
    meta = profile.metadata
    lines = [f"Profile: {meta['hardware']} ({meta['device_name']}), torch {meta['torch_version']}, triton "
             f"{meta['triton_version']}, TF32 matmul={meta['tf32']['matmul']} cudnn={meta['tf32']['cudnn']}, "
             f"measured {meta['date']} by `{meta['command']}`.", ""]
    current = None
    for e in profile.entries:
        if e.pattern != current:
            current = e.pattern
            lines += ["", f"### {e.title} (`{e.pattern}`)", "",
                      "| shape | dtype | verdict | best | speedup [95% CI] | eager µs (device) | best µs (device) "
                      "| kernels eager→best | compile ×eager | reduce-overhead ×eager | pipelined: verdict, best, "
                      "speedup [95% CI] |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
        d, eager = e.decision, e.variant("eager")
        best = e.variant(d.best_variant)
        sp = _speedup(d)
        p = e.pipelined_decision  # schema 1.1: the back-to-back regime's own decision
        piped = f"{p.verdict}, {p.best_variant}, {_speedup(p)}" if p else "-"

        def vs(name):
            v = e.variant(name)
            if v is None or v.status != "ok":
                return v.status if v else "-"
            return f"{v.speedup.median:.2f}×"

        lines.append(
            f"| {'×'.join(map(str, e.shape.values()))} | {e.dtype} | {d.verdict} | {d.best_variant} | {sp} "
            f"| {_us(eager.median_ms)} ({_us(eager.device_ms)}) | {_us(best.median_ms)} ({_us(best.device_ms)}) "
            f"| {eager.kernels_per_call:g}→{best.kernels_per_call:g} | {vs('compile')} | {vs('compile_reduce_overhead')} | {piped} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(tables(Profile.load(sys.argv[1])), end="")
