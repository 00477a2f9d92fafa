"""Is fxfusion's figure what a user's own loop gets?  The statistics of that check (``benchmarks/bench_baseline.py``).

Several sources time the same two callables (a model and its ``torch.compile``) in interleaved rounds, one block per
source per round (``SOURCES``).  A shared host's speed moves by tens of percent over minutes, and the lent H200's host
switches between two speeds (about 1.8x apart) every few seconds, so pooled medians of two sources wander with the
share of slow blocks each happened to draw.  What holds is a ratio *paired per round* between two blocks taken next
to each other (``PAIR``, :func:`adjacent_pair_order`): :func:`paired_ratio`.  The tables are
:mod:`fxfusion.reports.fidelity`'s.
"""

from __future__ import annotations

import random
import statistics

from fxfusion.measure.stats import Speedup, median_interval

TARGET = 0.05  # fxfusion's figure within +-5% of the fresh process's (issue 12), paired per round
# "fxfusion clock, plain blocks" is fxfusion's pipelined clock (CudaClock.sample) around the plain loop's blocks of
# CALLS calls, three per callable, alternating: where fxfusion's timing and the plain loop disagree, it tells the
# clock from measure()'s schedule (batch size, warm-up, shuffled order).
SOURCES = ("fresh process", "fxfusion timing", "fxfusion clock, plain blocks", "plain loop here")
PAIR = ("fresh process", "fxfusion timing")  # taken next to each other in every round (adjacent_pair_order)


def cpulist(text: str) -> set[int]:
    """'3' or '2-5,8' -> the CPUs it names."""
    out = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def adjacent_pair_order(rng: random.Random) -> list[str]:
    """One round's order of the sources: shuffled, with the two a ratio compares (fresh process, fxfusion timing)
    next to each other, in a shuffled order, so a per-round ratio compares blocks taken within a second."""
    pair, rest = list(PAIR), [s for s in SOURCES if s not in PAIR]
    rng.shuffle(pair)
    rng.shuffle(rest)
    at = rng.randrange(len(rest) + 1)
    return rest[:at] + pair + rest[at:]


def paired_ratio(blocks: list[dict], kind: str | None, compiled: str = "compile") -> Speedup | None:
    """Per round, fxfusion timing's block median over the fresh process's (taken next to each other); their median
    with a bootstrap interval.  ``kind`` None: the same for a compile configuration's gain over eager (eager's block
    median over ``compiled``'s, each block's eager and compiled samples alternating).  A host that switches speed every few seconds
    (the lent H200) moves both blocks of a round alike, where it makes each source's pooled samples bimodal and their
    medians' ratio wander."""
    per_round: dict[int, dict[str, float]] = {}
    for b in blocks:
        got = b["samples_ms"]
        if b["source"] in PAIR and (got.get(kind) if kind else got.get("eager") and got.get(compiled)):
            per_round.setdefault(b["round"], {})[b["source"]] = (
                statistics.median(got[kind]) if kind
                else statistics.median(got["eager"]) / statistics.median(got[compiled]))
    ratios = [r[PAIR[1]] / r[PAIR[0]] for r in per_round.values() if len(r) == 2]
    return median_interval(ratios) if ratios else None


def by_source(blocks: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Source -> callable -> every ms sample of ``blocks`` (the raw blocks, as ``--json`` keeps them)."""
    out: dict[str, dict[str, list[float]]] = {src: {} for src in SOURCES}
    for b in blocks:
        for k, v in b["samples_ms"].items():
            out.setdefault(b["source"], {}).setdefault(k, []).extend(v)
    return out
