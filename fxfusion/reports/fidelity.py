"""The tables of the baseline-fidelity check (``benchmarks/bench_baseline.py``): per model, fxfusion's eager figure
and each whole-model compile configuration's against a fresh process's plain loop, and each configuration's gain
over eager per source.  The
statistics are :mod:`fxfusion.measure.fidelity`'s."""

from __future__ import annotations

import statistics

from fxfusion.measure.fidelity import SOURCES, TARGET, by_source, paired_ratio
from fxfusion.measure.stats import Speedup

HEADER = ("| model | candidate | verification ms (earlier) | fxfusion timing ms | fxfusion clock, plain blocks ms | "
          "plain loop here ms | fresh process ms | fxfusion / fresh, medians | fxfusion / fresh, paired per round "
          "[95% CI] | within 5% (paired) | fresh process, first half / second half |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")
SPEEDUP_HEADER = ("| model (configuration) | compile over eager: fxfusion timing | plain loop here | fresh process | fxfusion / fresh, "
                  "medians | fxfusion / fresh, paired per round [95% CI] | within 5% (paired) |"
                  "\n|---|---|---|---|---|---|---|")


def rows(spec: str, verification_ms: dict, blocks: list[dict]) -> tuple[list[str], str]:
    """The main table's rows for ``spec`` (one per compile configuration timed, then eager) and its rows of the
    speedup table (one per configuration).  The second asks the question a speedup claim rests on: is a whole-model
    configuration's gain over eager the same in fxfusion's timing as in a fresh process -- whether or not the fresh
    process runs at the same absolute speed."""
    samples = by_source(blocks)
    med = {src: {k: statistics.median(v) for k, v in samples[src].items() if v} for src in SOURCES}
    compiled = [k for k in dict.fromkeys(k for b in blocks for k in b["samples_ms"]) if k != "eager"]
    out = []
    for kind in compiled + ["eager"]:
        fresh = samples["fresh process"][kind]
        half = len(fresh) // 2
        ratio = med["fxfusion timing"][kind] / med["fresh process"][kind]
        paired = paired_ratio(blocks, kind)
        verify_ms = verification_ms.get(kind)
        out.append(f"| {spec} | {kind} | {'-' if verify_ms is None else f'{verify_ms:.4f}'} | "
                   f"{med['fxfusion timing'][kind]:.4f} | {med['fxfusion clock, plain blocks'][kind]:.4f} | "
                   f"{med['plain loop here'][kind]:.4f} | {med['fresh process'][kind]:.4f} | "
                   f"{ratio:.3f} | {paired_text(paired)} | "
                   f"{'-' if paired is None else 'yes' if abs(paired.median - 1) <= TARGET else 'NO'} | "
                   f"{statistics.median(fresh[:half]):.4f} / {statistics.median(fresh[half:]):.4f} |")
    speedups = []
    for kind in compiled:
        gain = {src: med[src]["eager"] / med[src][kind] for src in ("fxfusion timing", "plain loop here",
                                                                   "fresh process")}
        q, pq = gain["fxfusion timing"] / gain["fresh process"], paired_ratio(blocks, None, kind)
        label = spec if kind == "compile" else f"{spec} ({kind})"
        speedups.append(f"| {label} | {gain['fxfusion timing']:.3f} | {gain['plain loop here']:.3f} | "
                        f"{gain['fresh process']:.3f} | {q:.3f} | {paired_text(pq)} | "
                        f"{'-' if pq is None else 'yes' if abs(pq.median - 1) <= TARGET else 'NO'} |")
    return out, "\n".join(speedups)


def paired_text(p: Speedup | None) -> str:
    return "-" if p is None else f"{p.median:.3f} [{p.ci_low:.3f}, {p.ci_high:.3f}]"
